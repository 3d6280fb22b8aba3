"""Decoders of legacy values, without a database: every format, every way a value can be bad."""

from __future__ import annotations

import numpy as np
import pytest

from pgcutover.fallback import formats
from pgcutover.fallback.formats import VectorFormatError, decode_many, decode_one

ROW = np.array([0.1, -2.5, 3.0, 1e-40], dtype=np.float32)


def pgvector_binary(values: np.ndarray) -> bytes:
    return len(values).to_bytes(2, "big") + b"\0\0" + np.asarray(values, dtype=">f4").tobytes()


@pytest.mark.parametrize("value", ["[0.1,-2.5,3,1e-40]", "[0.1, -2.5, 3.0, 1E-40]", " [ 0.1 ,-2.5,3,1e-40 ] ",
                                   b"[0.1,-2.5,3,1e-40]"])
def test_json_spellings(value: str | bytes) -> None:
    assert np.array_equal(decode_one("json", value, 4), ROW)


@pytest.mark.parametrize(("value", "reason"), [
    ("[1,2,3]", formats.DIMS),
    ("[]", formats.DIMS),
    ("hello", formats.SYNTAX),
    ("[1,2,3,", formats.SYNTAX),
    ("[true,1,2,3]", formats.SYNTAX),  # numpy would read true as 1.0
    ('["1",2,3,4]', formats.SYNTAX),  # and "1" as 1.0
    ("[null,1,2,3]", formats.NULL),
    ("[NaN,1,2,3]", formats.NON_FINITE),
    ("[1,-Infinity,2,3]", formats.NON_FINITE),
    ("[[1,2],[3,4]]", formats.NOT_1D),
    ("[1e39,1,2,3]", formats.NON_FINITE),  # beyond float32: pgvector says "out of range"
    ('{"a": 1}', formats.SYNTAX),
    ("[.5,1,2,3]", formats.SYNTAX),  # not JSON; pgvector reads it: the loader asks the server
])
def test_json_bad(value: str, reason: str) -> None:
    with pytest.raises(VectorFormatError) as info:
        decode_one("json", value, 4)
    assert info.value.reason == reason


def test_json_rounds_once_to_float32() -> None:
    text = "[0.1, 0.2, 0.30000000000000004, 16777217]"
    assert np.array_equal(decode_one("json", text, 4), np.array([0.1, 0.2, 0.30000000000000004, 16777217],
                                                                dtype=np.float32))


def test_bytea() -> None:
    assert np.array_equal(decode_one("bytea_f32", ROW.astype("<f4").tobytes(), 4), ROW)
    wide = np.array([0.1, -2.5, 3.0, 1e-40])
    assert np.array_equal(decode_one("bytea_f64", wide.astype("<f8").tobytes(), 4), wide.astype(np.float32))
    with pytest.raises(VectorFormatError, match="length"):
        decode_one("bytea_f32", ROW.tobytes()[:-1], 4)
    with pytest.raises(VectorFormatError, match="non_finite"):
        decode_one("bytea_f32", np.array([1, np.nan, 2, 3], dtype="<f4").tobytes(), 4)
    with pytest.raises(VectorFormatError, match="non_finite"):
        decode_one("bytea_f64", np.array([1, 1e300, 2, 3], dtype="<f8").tobytes(), 4)


def test_array() -> None:
    assert np.array_equal(decode_one("array", [0.1, -2.5, 3.0, 1e-40], 4), ROW)
    for value, reason in (([1.0, None, 2.0, 3.0], formats.NULL), ([[1.0, 2.0], [3.0, 4.0]], formats.NOT_1D),
                          ([1.0, 2.0], formats.DIMS), ([1.0, float("inf"), 2.0, 3.0], formats.NON_FINITE)):
        with pytest.raises(VectorFormatError) as info:
            decode_one("array", value, 4)
        assert info.value.reason == reason


def test_pgvector_binary() -> None:
    assert np.array_equal(decode_one(formats.PGVECTOR_BINARY, pgvector_binary(ROW), 4), ROW)
    with pytest.raises(VectorFormatError, match="dims"):
        decode_one(formats.PGVECTOR_BINARY, pgvector_binary(ROW[:3]), 4)


def test_none_is_null() -> None:
    with pytest.raises(VectorFormatError, match="null"):
        decode_one("json", None, 4)


@pytest.mark.parametrize("fmt", ["bytea_f32", "bytea_f64", formats.PGVECTOR_BINARY, "json", "array"])
def test_decode_many_keeps_positions(fmt: str) -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((6, 4)).astype(np.float32)

    def enc(row: np.ndarray) -> object:
        return {"bytea_f32": lambda r: r.astype("<f4").tobytes(), "bytea_f64": lambda r: r.astype("<f8").tobytes(),
                formats.PGVECTOR_BINARY: pgvector_binary, "json": formats.encode_json,
                "array": lambda r: r.tolist()}[fmt](row)

    values = [enc(r) for r in rows]
    values[1] = enc(rows[1][:3])  # wrong size
    values[4] = None
    bad_nan = rows[3].copy()
    bad_nan[0] = np.nan
    values[3] = enc(bad_nan) if fmt != "json" else "[NaN,1,2,3]"
    chunk = decode_many(fmt, values, 4)
    assert chunk.positions.tolist() == [0, 2, 5]
    assert np.array_equal(chunk.vectors, rows[[0, 2, 5]])
    assert [pos for pos, _ in chunk.bad] == [1, 3, 4]
    assert chunk.bad[2][1].reason == formats.NULL


def test_float16_storage_range() -> None:
    rows = np.array([[1.0, 2.0], [70000.0, 1.0]], dtype=np.float32)
    stored, fits = formats.to_storage(rows, np.dtype(np.float16))
    assert fits.tolist() == [True, False]
    assert stored.dtype == np.float16 and stored.shape == (1, 2)
