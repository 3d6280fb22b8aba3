"""Decoders of legacy values, without a database: every format, every way a value can be bad."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- exact rounding: what strtof (pgvector's reader) gives, not float64 rounded again -------------------------
F32_MAX = np.finfo(np.float32).max
EXACT = [
    ("1.000000059604644775390625", np.float32(1.0)),  # exactly the midpoint of 1 and 1 + 2^-23: ties to even
    ("1.000000059604644775390625000001", np.nextafter(np.float32(1), np.float32(2))),  # float64 says midpoint
    ("1.000000059604644775390624999999", np.float32(1.0)),
    ("16777217", np.float32(16777216.0)),  # an integer midpoint: to even
    ("16777217.000000000000000001", np.float32(16777218.0)),
    ("-0", np.float32(-0.0)),  # JSON parsers read the integer -0 as +0
    ("-0.0", np.float32(-0.0)),
    ("0", np.float32(0.0)),
    ("-0e5", np.float32(-0.0)),
    ("1e-50", np.float32(0.0)),  # underflow: strtof gives 0 (pgvector accepts it)
    ("-1e-50", np.float32(-0.0)),
    ("7.00649232162408535461864791644958065640130970938257885878534141944895541342930300743319094181060791015625e-46",
     np.float32(0.0)),  # 2^-150, half the smallest subnormal: ties to even (0)
    ("7.0064923216240854e-46", np.float32(1e-45)),  # just above it
    ("1e-45", np.float32(1e-45)),
    ("1.1754942e-38", np.float32(1.1754942e-38)),  # the largest subnormal
    # float64 reads both as the midpoint of -2^-126 and the largest negative subnormal
    ("-1.1754942807573642917278829910357565133229e-38", -np.nextafter(np.float32(2 ** -126), np.float32(0))),
    ("-1.1754942807573642917278829910357765133229e-38", np.float32(-(2 ** -126))),
    ("3.4028235677973366e38", F32_MAX),  # below the overflow threshold: FLT_MAX
    ("340282356779733661637539395458142568447", F32_MAX),
    ("340282356779733661637539395458142568448", np.float32(np.inf)),  # 2^128 - 2^103: ties to "2^128"
    ("1e39", np.float32(np.inf)),
]


@pytest.mark.parametrize(("text", "expected"), EXACT)
def test_exact_float32(text: str, expected: np.float32) -> None:
    got = formats.exact_float32(text)
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes(), (text, got, expected)


def _bits(row: np.ndarray) -> list[int]:
    return np.asarray(row, dtype=np.float32).view(np.uint32).tolist()


def _reference(texts: list[str], dims: int) -> tuple[dict[int, list[int]], dict[int, str]]:
    """Element by element with exact_float32: what pgvector's strtof makes of each row."""
    good, bad = {}, {}
    for i, text in enumerate(texts):
        row = np.array([formats.exact_float32(n) for n in text.strip()[1:-1].split(",")], dtype=np.float32)
        if np.isfinite(row).all() and len(row) == dims:
            good[i] = _bits(row)
        else:
            bad[i] = formats.NON_FINITE
    return good, bad


@pytest.mark.parametrize("fast", [True, False])
def test_json_rows_round_once(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every decoder agrees bit for bit with exact rounding on the strings double rounding gets wrong."""
    if not fast:
        monkeypatch.setattr(formats, "simdjson", None)
    texts = [", ".join(t for t, _ in EXACT[i:i + 4]) for i in range(0, len(EXACT) - 3)]
    texts = [f"[{t}]" for t in texts] + ["[-0, 0, -0.0, 1]", "[1, -0 , 2, 3]", "[1,2,3,-0]"]
    good, bad = _reference(texts, 4)
    chunk = decode_many("json", texts, 4)
    assert {int(p): _bits(v) for p, v in zip(chunk.positions, chunk.vectors, strict=True)} == good
    assert {p: e.reason for p, e in chunk.bad} == bad
    for i, text in enumerate(texts):
        if i in good:
            assert _bits(decode_one("json", text, 4)) == good[i]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.floats(width=32, allow_nan=False, allow_infinity=False),
                          st.integers(-2, 2), st.integers(1, 40)), min_size=6, max_size=6))
def test_json_near_midpoints_property(parts: list[tuple[float, int, int]]) -> None:
    """Decimals at, just above and just below float32 rounding midpoints (and subnormals, zeros, signs)."""
    numbers = []
    for value, side, digits in parts:
        a = np.float32(value)
        with np.errstate(over="ignore"):
            b = np.nextafter(a, np.float32(np.inf))
        if not np.isfinite(b):
            numbers.append(repr(float(a)))
            continue
        mid = (Fraction(float(a)) + Fraction(float(b))) / 2
        mid += side * Fraction(1, 10 ** (digits + 45)) * max(abs(mid), Fraction(1, 10 ** 40))
        numbers.append(_decimal(mid, 60))
    text = "[" + ",".join(numbers) + "]"
    expected = _bits(np.array([formats.exact_float32(n) for n in numbers], dtype=np.float32))
    chunk = decode_many("json", [text], 6)
    if np.isfinite(np.array(expected, dtype=np.uint32).view(np.float32)).all():
        assert _bits(chunk.vectors[0]) == expected
        assert _bits(decode_one("json", text, 6)) == expected
    else:
        assert chunk.bad and chunk.bad[0][1].reason == formats.NON_FINITE


def _decimal(value: Fraction, digits: int) -> str:
    """`value` in scientific notation with `digits` significant digits (truncated)."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return sign + "0.0"
    exp = len(str(value.numerator)) - len(str(value.denominator))
    while value >= Fraction(10) ** (exp + 1):
        exp += 1
    while value < Fraction(10) ** exp:
        exp -= 1
    mantissa = int(value * Fraction(10) ** (digits - 1 - exp))
    text = str(mantissa)
    return f"{sign}{text[0]}.{text[1:]}e{exp}"


@pytest.mark.parametrize("value", ["[[1,2],[3,4]]", "[[1],[2],[3],[4]]", "[1,[2],3,4]", "[1,2,3,4] x", "[1,2,3,4,]",
                                   "[1, 2, 3, true]", "[1e400,1,2,3]", "[18446744073709551616,1,2,3]", "[1,2,3]",
                                   "[null,1,2,3]", "[.5,1,2,3]", "", " [1,2,3,4]", "[1,2,3,4]\n"])
def test_fast_json_path_agrees_with_the_reference(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """simdjson's reader (it flattens nested arrays into its buffer) gives the verdict and reason orjson gives."""
    fast = decode_many("json", [value], 4)
    monkeypatch.setattr(formats, "simdjson", None)
    slow = decode_many("json", [value], 4)
    assert fast.positions.tolist() == slow.positions.tolist()
    assert [_bits(v) for v in fast.vectors] == [_bits(v) for v in slow.vectors]
    assert [(p, e.reason) for p, e in fast.bad] == [(p, e.reason) for p, e in slow.bad]


def test_fast_json_path_on_bytes_and_many_blocks() -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((300, 16)).astype(np.float32)
    values: list[object] = [formats.encode_json(r) for r in rows]
    values[5] = values[5].encode()  # type: ignore[union-attr]
    values[70] = None
    values[130] = "[1,2]"
    chunk = decode_many("json", values, 16)
    assert chunk.positions.tolist() == [i for i in range(300) if i not in (70, 130)]
    assert np.array_equal(chunk.vectors, rows[chunk.positions])
    assert [(p, e.reason) for p, e in chunk.bad] == [(70, formats.NULL), (130, formats.DIMS)]
