"""Decoders for legacy vector values: JSON text, little-endian float32/float64 bytea, float arrays, and
pgvector's own binary format (what the server sends for `legacy_column::vector`).

Every decoder returns a float32 row or raises `VectorFormatError` with a short machine-readable `reason`, so the
loader can skip the row, count it and log it with its key. The rules mirror pgvector's `vector_in` and
`array_to_vector` so that a row accepted here is also accepted by the server; the one deliberate exception is
JSON text that orjson rejects (`reason == "syntax"`): pgvector reads a few non-JSON spellings (`.5`, `0x10`), so
those rows are handed to the server for the final verdict instead of being skipped here.

`decode_many` is the bulk path used by the loader: whole chunks of bytea or pgvector-binary values are joined and
read with one `np.frombuffer`, never one Python object per float; JSON text is read by simdjson (pysimdjson) straight
into a float64 buffer, again without one Python object per float (~4x faster than orjson + `np.array`, which builds
and then converts a list of Python floats: see bench/fallback_load.py).

Rounding. pgvector reads text with `strtof`, which rounds the decimal once to float32. Parsing to float64 first and
then rounding to float32 rounds twice; the two agree except when the float64 value lies exactly on a float32 rounding
midpoint (then the decimal may have been just above or below it) or in the float32 subnormal range. Those elements,
and zeros that may have been written `-0` (an integer, which JSON parsers read as +0), are re-read exactly from their
decimal text (`exact_float32`), so every decoded row is bit-identical to `legacy::vector`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import orjson

try:  # the fast JSON reader; without it JSON is read with orjson, as exactly but ~4x slower
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency
    simdjson = None


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
    sq: np.ndarray | None = None  # float64 squared norms of `vectors`, when asked for (decode_with_norms)
    quant: Int8Rows | None = None  # `vectors` quantized for an int8 store, when asked for (decode_with_norms)


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
        # float64 first (NULL elements raise TypeError here), then rounded to float32 as strtof would round.
        row = np.array(parsed, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VectorFormatError(SYNTAX, str(exc)) from None
    if row.dtype != np.float64 or row.ndim != 1:
        raise VectorFormatError(NOT_1D if row.ndim != 1 else SYNTAX, "not a flat array of numbers")
    with np.errstate(over="ignore"):
        single = row.astype(np.float32)
    doubtful = _doubtful(row[None, :], single[None, :])[0]
    if doubtful.any() or (_has_zero(single) and _NEGATIVE_ZERO_INT.search(text)):
        single = _exact_row(text, single, doubtful)
    return check_row(single, dims)


# -- exact float32 rounding of decimal text ------------------------------------------------------------------
_LOW29 = np.uint64((1 << 29) - 1)  # the float64 mantissa bits a float32 drops
_HALF29 = np.uint64(1 << 28)  # ... exactly half a float32 unit: a rounding midpoint (or the overflow threshold)
_F32_TINY = 2.0 ** -126  # the smallest normal float32
_F32_MAX = Fraction(float(np.finfo(np.float32).max))
_F32_OVERFLOW = Fraction(2 ** 128 - 2 ** 103)  # strtof returns infinity from here on (round to nearest even)
_NEGATIVE_ZERO_INT = re.compile(r"-0(?![0-9.eE])")  # `-0`: an integer, read as +0 by JSON parsers; strtof: -0.0


def _doubtful(wide: np.ndarray, single: np.ndarray) -> np.ndarray:
    """Elements whose float64 -> float32 rounding may differ from rounding their decimal text once.

    Rounding twice goes wrong only when the float64 value is exactly a float32 midpoint (the low 29 mantissa bits
    are 1000...0; the overflow threshold 2^128 - 2^103 has that form too) or where float32 is subnormal (fewer
    mantissa bits there, so the midpoint test above does not apply; non-zero inputs below the smallest normal float32,
    including those that round up to it).
    """
    midpoint = (wide.view(np.uint64) & _LOW29) == _HALF29
    tiny = np.abs(wide) < _F32_TINY  # the float32 subnormal range (a value there may also round up to 2^-126)
    tiny &= wide != 0
    return midpoint | tiny


def _has_zero(single: np.ndarray) -> bool:
    return bool((single == 0).any())


def exact_float32(number: str) -> np.float32:
    """The float32 nearest the decimal `number` (ties to even; infinity past the float32 range), as strtof."""
    value = Fraction(number)
    negative = number.lstrip().startswith("-")
    size = abs(value)
    if size >= _F32_OVERFLOW:
        best = np.float32(np.inf)
    elif size >= _F32_MAX:
        best = np.float32(np.finfo(np.float32).max)
    else:
        guess = np.float32(float(size))  # within one float32 unit of the answer (float() rounds correctly)
        with np.errstate(over="ignore"):
            candidates = [c for c in (np.nextafter(guess, np.float32(0)), guess,
                                      np.nextafter(guess, np.float32(np.inf))) if np.isfinite(c)]
        best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - size),
                                              int(np.asarray(c).view(np.uint32)) & 1))
    return np.float32(-best) if negative else best


def _exact_row(text: str, single: np.ndarray, doubtful: np.ndarray) -> np.ndarray:
    """Re-read the doubtful elements (and zeros, for their sign) from their decimal text."""
    numbers = json.loads(text, parse_float=str, parse_int=str)
    if len(numbers) != len(single):  # cannot happen: the same text parsed the same way
        raise VectorFormatError(SYNTAX, "inconsistent parse")
    fixed = single.copy()
    for i in np.flatnonzero(doubtful | (single == 0)):
        fixed[i] = exact_float32(numbers[i])
    return fixed


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
    if fmt == _JSON and simdjson is not None:
        return _decode_json_bulk(values, dims)
    return _decode_rows(fmt, values, dims, range(len(values)))


def squared_norms(rows: np.ndarray) -> np.ndarray:
    """float64 squared norms of float32 (or float16) rows, exact to float64 rounding, in blocks that stay in
    cache (einsum with dtype=float64 casts its whole input first)."""
    out = np.empty(len(rows))
    for start in range(0, len(rows), 256):
        block = rows[start:start + 256].astype(np.float64)
        out[start:start + 256] = np.einsum("ij,ij->i", block, block)
    return out


def decode_with_norms(fmt: str, values: Sequence[Any], dims: int, quantize: bool = False) -> DecodedChunk:
    """`decode_many`, plus the rows' squared norms and, for an int8 store, their codes: on the decode thread, off
    the loader's event loop (quantizing there cost a 203,727 x 1536 int8 load 3-4 s: 14-15 s against float32's
    11 s)."""
    chunk = decode_many(fmt, values, dims)
    chunk.sq = squared_norms(chunk.vectors)
    if quantize:
        chunk.quant = quantize_int8(chunk.vectors)
    return chunk


def _decode_rows(fmt: str, values: Sequence[Any], dims: int, which: Iterable[int]) -> DecodedChunk:
    """Row by row with `decode_one`: the reference path (and the one that names a bad row's reason)."""
    which = list(which)
    vectors = np.empty((len(which), dims), dtype=np.float32)
    positions: list[int] = []
    bad: list[tuple[int, VectorFormatError]] = []
    for i in which:
        try:
            vectors[len(positions)] = decode_one(fmt, values[i], dims)
        except VectorFormatError as exc:
            bad.append((i, exc))
        else:
            positions.append(i)
    return DecodedChunk(np.asarray(positions, dtype=np.int64), vectors[: len(positions)], bad)


JSON_BLOCK_ROWS = 64  # rows parsed into one float64 scratch block, then checked together (stays in L2)
_local = threading.local()  # per thread: a simdjson parser (not thread-safe) and the scratch block


def _json_parser() -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def _scratch(dims: int) -> np.ndarray:
    block = getattr(_local, "block", None)
    if block is None or block.shape[1] != dims:
        block = _local.block = np.empty((JSON_BLOCK_ROWS, dims), dtype=np.float64)
    return block


def _decode_json_bulk(values: Sequence[Any], dims: int) -> DecodedChunk:
    """JSON rows through simdjson into float64, checked block-wise; anything unusual goes to `decode_json`.

    The fast path keeps a row only when it is one flat array (simdjson's buffer flattens nesting, so a second `[`
    sends the row to the reference path) of exactly `dims` numbers that are finite as float32, with no doubtful
    rounding (`_doubtful`) and no `-0` integer. Every other row (NULL, bad syntax, non-JSON spellings, wrong size,
    NaN, ...) is decoded by `decode_json`, which gives today's verdict and reason. One float64 scratch block is
    reused: fresh temporaries of a chunk's size cost page faults on every chunk."""
    n = len(values)
    vectors = np.empty((n, dims), dtype=np.float32)
    good = np.zeros(n, dtype=bool)
    wide = _scratch(dims)
    parser = _json_parser()
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, JSON_BLOCK_ROWS):
            rows: list[int] = []
            for i in range(start, min(n, start + JSON_BLOCK_ROWS)):
                value = values[i]
                if value is None:
                    continue
                try:
                    row = np.frombuffer(parser.parse(value).as_buffer(of_type="d"), dtype=np.float64)
                except Exception:  # ValueError, TypeError, RuntimeError (big integers): decode_json says why
                    _local.parser = parser = simdjson.Parser()  # never reuse a parser an error may reference
                    continue
                bracket = "[" if isinstance(value, str) else b"["
                if row.size != dims or value.find(bracket, value.find(bracket) + 1) != -1:  # memchr: no count()
                    continue
                wide[len(rows)] = row
                rows.append(i)
            if not rows:
                continue
            block = wide[:len(rows)]
            single = block.astype(np.float32)
            ok = np.isfinite(single).all(axis=1) & ~_doubtful(block, single).any(axis=1)
            for j in np.flatnonzero(ok & (single == 0).any(axis=1)):  # rare: a zero, perhaps written `-0`
                value = values[rows[j]]
                text = value if isinstance(value, str) else value.decode("utf-8", "replace")
                ok[j] = _NEGATIVE_ZERO_INT.search(text) is None
            if rows[-1] - rows[0] == len(rows) - 1:  # the usual case: consecutive rows
                vectors[rows[0]:rows[-1] + 1] = single
                good[rows[0]:rows[-1] + 1] = ok
            else:
                vectors[rows] = single
                good[rows] = ok
    if good.all():
        return DecodedChunk(np.arange(n, dtype=np.int64), vectors, [])
    rest = _decode_rows(_JSON, values, dims, np.flatnonzero(~good).tolist())
    vectors[rest.positions] = rest.vectors
    good[rest.positions] = True
    positions = np.flatnonzero(good)
    return DecodedChunk(positions.astype(np.int64), vectors[positions], rest.bad)


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

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.codes, self.offset, self.scale, self.resid_l2, self.resid_l1, self.codes_l2

    def __len__(self) -> int:
        return len(self.offset)

    def __getitem__(self, rows: slice | np.ndarray) -> Int8Rows:
        """These rows (a slice is a view, an index array a copy), as numpy indexes a matrix."""
        return Int8Rows(*(column[rows] for column in self.columns()))

    @staticmethod
    def concat(parts: Sequence[Int8Rows]) -> Int8Rows:
        if len(parts) == 1:
            return parts[0]
        return Int8Rows(*(np.concatenate(columns) for columns in zip(*(p.columns() for p in parts), strict=True)))


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


# Int8Terms.caps: running maxima over a segment's rows (indices into the array)
CAP_COS_RESID, CAP_COS_SPREAD, CAP_COS_SIZE, CAP_COS_SCALE, CAP_COS_OFFSET = range(5)  # over |x| (rows |x| > 0)
CAP_RESID, CAP_SPREAD, CAP_SIZE, CAP_SCALE, CAP_OFFSET, CAP_SQ = range(5, 11)


@dataclass(slots=True)
class Int8Terms:
    """What the int8 screening's pre-test (fallback.screening._pretest) reads besides the codes.

    Per row, for cosine: scale / |x| and offset / |x| (both 0 for a zero row). Per segment, `caps`: maxima over its
    rows of the error terms the coarse bounds add per row (the residual norm, scale |codes|, |offset| + 127 scale,
    each also over |x|), of scale, |offset| and |x|^2. Rows are only ever appended, so the maxima only grow; a killed
    row keeps counting, which only loosens them. They are rounded up (1e-12), so each is >= the float64 value the
    coarse bounds compute per row."""

    scale_by_norm: np.ndarray  # float64 (n,)
    offset_by_norm: np.ndarray  # float64 (n,)
    caps: np.ndarray  # float64 (11,), see CAP_*

    @classmethod
    def empty(cls, capacity: int) -> Int8Terms:
        return cls(np.empty(capacity), np.empty(capacity), np.zeros(CAP_SQ + 1))

    @property
    def nbytes(self) -> int:
        return self.scale_by_norm.nbytes + self.offset_by_norm.nbytes + self.caps.nbytes

    def fill(self, start: int, quant: Int8Rows, sq: np.ndarray) -> None:
        stop = start + len(sq)
        live = sq > 0
        with np.errstate(divide="ignore"):
            inv = np.where(live, 1 / np.sqrt(sq), 0.0)  # 1/|x|, 0 for a zero row
        self.scale_by_norm[start:stop] = quant.scale * inv
        self.offset_by_norm[start:stop] = quant.offset * inv
        magnitude = np.abs(quant.offset)
        terms = ((CAP_RESID, quant.resid_l2), (CAP_SPREAD, quant.scale * quant.codes_l2),
                 (CAP_SIZE, magnitude + 127 * quant.scale), (CAP_SCALE, quant.scale), (CAP_OFFSET, magnitude))
        new = np.zeros_like(self.caps)
        if live.any():  # the cosine caps: the same terms over |x|, zero rows left out
            for at, values in terms:
                new[at - CAP_RESID + CAP_COS_RESID] = float(np.max((values * inv)[live]))
        if len(sq):
            for at, values in (*terms, (CAP_SQ, sq)):
                new[at] = float(np.max(values))
        np.maximum(self.caps, new * (1 + 1e-12), out=self.caps)

    def view(self, n: int) -> Int8Terms:
        """Rows [0, n) and a copy of the caps (a later fill must not change what a published snapshot reads)."""
        return Int8Terms(self.scale_by_norm[:n], self.offset_by_norm[:n], self.caps.copy())
