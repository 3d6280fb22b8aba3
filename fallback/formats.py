"""Decoders for legacy vector values: JSON text, little-endian float32/float64 bytea, float arrays, and
pgvector's own binary format (what the server sends for `legacy_column::vector`).

Every decoder returns a float32 row or raises `VectorFormatError` with a short machine-readable `reason`, so the
loader can skip the row, count it and log it with its key. The rules mirror pgvector's `vector_in` and
`array_to_vector` so that a row accepted here is also accepted by the server; the one deliberate exception is
JSON text that orjson rejects (`reason == "syntax"`): pgvector reads a few non-JSON spellings (`.5`, `0x10`), so
those rows are handed to the server for the final verdict instead of being skipped here.

`decode_many` is the bulk path used by the loader: whole chunks of bytea or pgvector-binary values are joined and
read with one `np.frombuffer`, never one Python object per float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pgcutover.core.enums import LegacyFormat, values

FORMATS = values(LegacyFormat)
# plain strings for the per-value comparisons (decode_one runs per row; an enum attribute costs ~6x a str)
_JSON, _BYTEA_F32, _BYTEA_F64, _ARRAY = (LegacyFormat.JSON.value, LegacyFormat.BYTEA_F32.value,
                                        LegacyFormat.BYTEA_F64.value, LegacyFormat.ARRAY.value)
# Formats whose text/array value the server can cast with `::vector`; bytea has no such cast.
SERVER_CAST_FORMATS = frozenset({_JSON, _ARRAY})
PGVECTOR_BINARY = "pgvector"  # pseudo-format: the result of `legacy::vector` fetched in binary
FLOAT16_MAX = float(np.finfo(np.float16).max)

# Reasons a row is skipped (also the `reason` label of the skipped-rows metric).
DIMS = "dims"
SYNTAX = "syntax"
NON_FINITE = "non_finite"
NULL = "null"
NOT_1D = "not_1d"
LENGTH = "length"
SERVER = "server"  # the server refused `legacy::vector`; the detail holds its message
FP16_RANGE = "fp16_range"


class VectorFormatError(ValueError):
    """A legacy value that cannot become a vector of the route's dimensions."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class DecodedChunk:
    """Result of decoding a sequence of values: the good rows (by input position) and the bad ones."""

    positions: np.ndarray  # int64 indices into the input sequence, one per row of `vectors`
    vectors: np.ndarray  # float32, shape (len(positions), dims)
    bad: list[tuple[int, VectorFormatError]] = field(default_factory=list)


def check_row(row: np.ndarray, dims: int) -> np.ndarray:
    if row.ndim != 1:
        raise VectorFormatError(NOT_1D, f"{row.ndim}-D value")
    if row.shape[0] != dims:
        raise VectorFormatError(DIMS, f"expected {dims} dimensions, not {row.shape[0]}")
    if not np.isfinite(row).all():
        # pgvector refuses NaN and infinity, and float32 overflow becomes infinity.
        raise VectorFormatError(NON_FINITE, "NaN or infinite element (or out of float32 range)")
    return row


def decode_json(value: str | bytes, dims: int) -> np.ndarray:
    """`'[0.1, -0.2, ...]'` -> float32 row. Booleans and strings are refused before numpy could coerce them."""
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    if "n" in text or "N" in text:  # null, NaN, inf(inity): pgvector refuses every spelling with an n
        raise VectorFormatError(NULL if "null" in text else NON_FINITE, "null, NaN or infinite element")
    if "t" in text or "f" in text or "T" in text or "F" in text or '"' in text:  # true, "1.5": not numbers
        raise VectorFormatError(SYNTAX, "not an array of numbers")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise VectorFormatError(SYNTAX, str(exc)) from None
    if not isinstance(parsed, list):
        raise VectorFormatError(SYNTAX, "not an array")
    try:
        # float64 first, then one round-to-nearest to float32; NULL elements raise TypeError here.
        row = np.array(parsed, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VectorFormatError(SYNTAX, str(exc)) from None
    if row.dtype != np.float64 or row.ndim != 1:
        raise VectorFormatError(NOT_1D if row.ndim != 1 else SYNTAX, "not a flat array of numbers")
    with np.errstate(over="ignore"):
        return check_row(row.astype(np.float32), dims)


def decode_bytea(value: bytes, dims: int, width: int) -> np.ndarray:
    """Little-endian float32 (width 4) or float64 (width 8) bytes -> float32 row."""
    if len(value) != dims * width:
        raise VectorFormatError(LENGTH, f"{len(value)} bytes, expected {dims * width} ({dims} x float{width * 8})")
    dtype = "<f4" if width == 4 else "<f8"
    with np.errstate(over="ignore"):
        return check_row(np.frombuffer(value, dtype=dtype).astype(np.float32), dims)


def decode_array(value: Sequence[Any], dims: int) -> np.ndarray:
    """A real[] / double precision[] value as the driver returns it (a list, nested for multi-D arrays)."""
    if any(item is None for item in value):
        raise VectorFormatError(NULL, "array must not contain nulls")
    try:
        row = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise VectorFormatError(NOT_1D, str(exc)) from None
    with np.errstate(over="ignore"):
        return check_row(row.astype(np.float32), dims)


_PG_HEADER = np.dtype([("dim", ">u2"), ("unused", ">u2")])


def decode_pgvector_binary(value: bytes, dims: int) -> np.ndarray:
    """pgvector's binary send format: `>HH` (dimensions, unused) then big-endian float32 elements."""
    if len(value) < 4:
        raise VectorFormatError(LENGTH, "truncated pgvector value")
    got = int.from_bytes(value[:2], "big")
    if got != dims or len(value) != 4 + 4 * dims:
        raise VectorFormatError(DIMS, f"expected {dims} dimensions, not {got}")
    return np.frombuffer(value, dtype=">f4", offset=4).astype(np.float32)


def decode_one(fmt: str, value: Any, dims: int) -> np.ndarray:
    """Decode one value of `fmt` (a legacy format or PGVECTOR_BINARY)."""
    if value is None:
        raise VectorFormatError(NULL, "NULL value")
    if fmt == _JSON:
        return decode_json(value, dims)
    if fmt == _BYTEA_F32:
        return decode_bytea(value, dims, 4)
    if fmt == _BYTEA_F64:
        return decode_bytea(value, dims, 8)
    if fmt == _ARRAY:
        return decode_array(value, dims)
    if fmt == PGVECTOR_BINARY:
        return decode_pgvector_binary(value, dims)
    raise ValueError(f"unknown legacy format {fmt!r}")


def _fixed_width(fmt: str, dims: int) -> tuple[int, np.dtype] | None:
    """Byte length and numpy dtype of one value for the formats that can be read in bulk."""
    if fmt == _BYTEA_F32:
        return dims * 4, np.dtype(("<f4", (dims,)))
    if fmt == _BYTEA_F64:
        return dims * 8, np.dtype(("<f8", (dims,)))
    if fmt == PGVECTOR_BINARY:
        return 4 + dims * 4, np.dtype([("dim", ">u2"), ("unused", ">u2"), ("v", ">f4", (dims,))])
    return None


def _length_error(fmt: str, value: bytes, dims: int) -> VectorFormatError:
    if fmt == PGVECTOR_BINARY and len(value) >= 2:
        return VectorFormatError(DIMS, f"expected {dims} dimensions, not {int.from_bytes(value[:2], 'big')}")
    width = 8 if fmt == _BYTEA_F64 else 4
    return VectorFormatError(LENGTH, f"{len(value)} bytes, expected {dims * width} ({dims} x float{width * 8})")


def _decode_bulk(values: Sequence[Any], dims: int, width: int, dtype: np.dtype, fmt: str) -> DecodedChunk:
    bad: list[tuple[int, VectorFormatError]] = []
    good: list[int] = []
    for i, value in enumerate(values):
        if value is None:
            bad.append((i, VectorFormatError(NULL, "NULL value")))
        elif len(value) != width:
            bad.append((i, _length_error(fmt, value, dims)))
        else:
            good.append(i)
    blob = b"".join(values[i] for i in good) if len(good) < len(values) else b"".join(values)
    raw = np.frombuffer(blob, dtype=dtype)
    if fmt == PGVECTOR_BINARY:
        if (raw["dim"] != dims).any():  # cannot happen when lengths match; cheap insurance
            raise ValueError("pgvector header disagrees with value length")
        raw = raw["v"]
    with np.errstate(over="ignore", invalid="ignore"):
        vectors = raw.astype(np.float32)
    positions = np.asarray(good, dtype=np.int64)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        for i in positions[~finite]:
            bad.append((int(i), VectorFormatError(NON_FINITE, "NaN or infinite element (or out of float32 range)")))
        positions, vectors = positions[finite], vectors[finite]
    bad.sort(key=lambda item: item[0])
    return DecodedChunk(positions, vectors, bad)


def decode_many(fmt: str, values: Sequence[Any], dims: int) -> DecodedChunk:
    """Decode a chunk of values; bad values end up in `bad`, never raise."""
    fixed = _fixed_width(fmt, dims)
    if fixed is not None:
        return _decode_bulk(values, dims, fixed[0], fixed[1], fmt)
    vectors = np.empty((len(values), dims), dtype=np.float32)
    positions: list[int] = []
    bad: list[tuple[int, VectorFormatError]] = []
    for i, value in enumerate(values):
        try:
            vectors[len(positions)] = decode_one(fmt, value, dims)
        except VectorFormatError as exc:
            bad.append((i, exc))
        else:
            positions.append(i)
    return DecodedChunk(np.asarray(positions, dtype=np.int64), vectors[: len(positions)], bad)


def to_storage(vectors: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows that fit the storage dtype (float16 has a range of +-65504) and the mask of those that do."""
    if dtype != np.float16:  # float32 as is; int8 quantizes any finite float32 row (store)
        return vectors, np.ones(len(vectors), dtype=bool)
    fits = (np.abs(vectors) <= FLOAT16_MAX).all(axis=1)
    return vectors[fits].astype(dtype), fits


def encode_json(row: np.ndarray) -> str:
    """Shortest round-trip text of a float32 row, as pgvector prints it (used by tests and the bench)."""
    return orjson.dumps(np.asarray(row, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY).decode()


# -- int8 screening storage ----------------------------------------------------------------------------------
QUANT_CHUNK = 256  # rows quantized at a time (float64 temporaries that stay in cache)
# Relative slack on the residual norms: they are computed in float64 from float32 rows, so their own rounding is
# below 1e-13 relative; 1e-9 makes "rounded up" certain without loosening the screening noticeably.
_RESIDUAL_SLACK = 1e-9


@dataclass(slots=True)
class Int8Rows:
    """Rows quantized per row: x ~= offset + scale * codes, with |x - (offset + scale * codes)| bounded.

    `resid_l2` >= ||x - x^||_2 and `resid_l1` >= ||x - x^||_1 (x^ in exact arithmetic from offset, scale and codes),
    `codes_l2` >= ||codes||_2: what the search needs to bound its screening error (fallback.knn)."""

    codes: np.ndarray  # int8 (n, dims), in [-127, 127]
    offset: np.ndarray  # float64 (n,)
    scale: np.ndarray  # float64 (n,), >= 0
    resid_l2: np.ndarray  # float64 (n,)
    resid_l1: np.ndarray  # float64 (n,)
    codes_l2: np.ndarray  # float64 (n,)


def quantize_int8(vectors: np.ndarray) -> Int8Rows:
    """Per-row scale/offset int8 codes of float32 rows, with rigorous residual norms (see Int8Rows).

    Offset is the midpoint of the row's range and scale its half-width over 127, so every element maps into
    [-127, 127] and the rounding residual is at most scale/2 per element. The residual is then measured, not
    assumed: whatever the codes, the bounds hold. All arithmetic is float64 (a float32 row's range cannot overflow
    it), in small chunks and in place (large temporaries page-fault on every call: measured 20x slower)."""
    n, dims = vectors.shape
    out = Int8Rows(np.empty((n, dims), dtype=np.int8), *(np.empty(n) for _ in range(5)))
    for start in range(0, n, QUANT_CHUNK):
        part = slice(start, min(n, start + QUANT_CHUNK))
        x = vectors[part].astype(np.float64)
        hi, lo = x.max(axis=1), x.min(axis=1)
        offset = (hi + lo) / 2
        scale = (hi - lo) / 254
        with np.errstate(divide="ignore"):
            inv = np.where(scale > 0, 1 / scale, 0.0)  # scale 0 (constant row): every code 0, residual measured
        t = x - offset[:, None]
        t *= inv[:, None]
        np.rint(t, out=t)
        np.clip(t, -127, 127, out=t)
        out.codes[part] = t
        out.codes_l2[part] = np.sqrt(np.einsum("ij,ij->i", t, t)) * (1 + 1e-12)
        t *= scale[:, None]
        t += offset[:, None]
        np.subtract(x, t, out=t)  # the residual x - x^
        # Rounded up: x^ above is itself rounded in float64 (at most ~1e-16 * (|offset| + 127 scale) per element,
        # so below 1e-13 of the row's norm for any dims up to pgvector's 16,000), hence 1e-9 of the norm on top.
        tiny = 1e-300 + dims * 2.0 ** -1074
        norm_x = np.sqrt(np.einsum("ij,ij->i", x, x))
        out.resid_l2[part] = np.sqrt(np.einsum("ij,ij->i", t, t)) * (1 + _RESIDUAL_SLACK) \
            + _RESIDUAL_SLACK * norm_x + tiny
        np.abs(x, out=x)
        np.abs(t, out=t)
        out.resid_l1[part] = t.sum(axis=1) * (1 + _RESIDUAL_SLACK) + _RESIDUAL_SLACK * x.sum(axis=1) + tiny
        out.offset[part] = offset
        out.scale[part] = scale
    return out
