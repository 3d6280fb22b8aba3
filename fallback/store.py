"""The in-memory store of legacy-only rows of one route: keys and vectors in float32, float16 or int8 segments.

Storage (`[[route]] fallback_storage`). float32 and float16 keep the rows, and the search ranks them exactly.
int8 keeps per-row scale/offset codes with proven error bounds (fallback.formats.quantize_int8), a quarter of the
memory: the search then returns a candidate set that provably holds the exact top-k (fallback.screening) and the
merged query ranks it on the server. No float32 row is kept: rows are quantized chunk by chunk as they are read.

A row is *legacy-only* when `vector_column IS NULL AND legacy_column IS NOT NULL`.

Layout. Vectors live in a list of segments, each one contiguous `(capacity, dims)` matrix of a few tens of MB, with
per-row key, xmin, squared norm and alive flag. Segments instead of one big matrix because growth then never
copies (peak memory during a load is the final size plus one segment, whatever the row-count estimate said) and
because the search walks the rows block by block anyway to bound its temporaries.

Concurrency. One writer (the event loop: load, notices, reconcile) and any number of readers (searches in a worker
thread). Readers take `snapshot()`: a tuple of views `data[:count]`. Writers only append beyond a published
count, tombstone rows in a copy-on-write alive mask, and compact into *new* segments, so a snapshot never changes
under a reader and no lock is held during a search.

Freshness. `follow()` LISTENs on `pgcutover_changes`; a notice only names keys, whose current state is then
re-read (`WHERE key = ANY($1)`); `resync` notices and a timer run `reconcile()`, which compares (key, xmin) of
every legacy-only row with the store and re-reads the differing keys. xmin changes with every UPDATE, so a value
changed without any notice is found too.

Loading. The key range is cut into chunks (every n-th key, from a window query); several lanes, each with its own
connection, take chunks from a shared queue; a lane reads its next chunk while the decode thread works on the
last one, so the backends keep streaming. A "server" lane asks PostgreSQL for `legacy::vector` in pgvector's
binary format (pgvector parses the text, exactly as it will when the merged query recomputes distances); a
"client" lane fetches the raw value and decodes it here (simdjson for JSON, `np.frombuffer` for bytea; JSON is a
client-lane job by default: bench/fallback_load.py says why). Either way rows are bit-identical to what the server's
cast gives (fallback/formats.py rounds decimal text to float32 exactly as pgvector's strtof). A chunk the
server cannot cast is fetched raw and triaged row by row; a row is skipped (counted, logged with its key) only when
its own value is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import mmap
import sys
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import orjson

from pgcutover.core.config import Route
from pgcutover.core.enums import LegacyFormat
from pgcutover.core.quoting import quote_ident, quote_table
from pgcutover.fallback import formats, metrics
from pgcutover.fallback.formats import PGVECTOR_BINARY, SERVER_CAST_FORMATS, VectorFormatError
from pgcutover.fallback.knn import BLOCK_ROWS
from pgcutover.fallback.notices import CHANNEL, NoticeError, WarningLimiter, parse_notice, valid_channel

log = logging.getLogger("pgcutover.fallback")

ConnFactory = Callable[[], Awaitable[asyncpg.Connection]]
Key = Any

SEGMENT_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024
REFRESH_BATCH = 2000
MAX_PENDING_NOTICES = 10_000  # notices received and not yet applied; beyond, they collapse into one resync
MAX_PENDING_BYTES = 8 * 1024 * 1024
RESYNC_INTERVAL = 2.0  # seconds between resyncs that notices ask for (anyone may NOTIFY: bounded work)
INT_RANGES = {"smallint": 2 ** 15, "integer": 2 ** 31, "bigint": 2 ** 63}
LOGGED_BAD_ROWS = 20  # per load or refresh; the rest are counted and summarised
INT_TYPES = ("smallint", "integer", "bigint")


# -- snapshots (what readers see) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SegmentView:
    """Rows [0, count) of one segment. Arrays are views: never write to them."""

    data: np.ndarray  # (count, dims) float32 or float16, or int8 codes (see `quant`)
    keys: np.ndarray  # (count,) int64 or object
    sq_norms: np.ndarray  # (count,) float64, squared norm of the stored row
    sq_norms32: np.ndarray  # (count,) float32, the same for the float32 screening pass
    inv_norms32: np.ndarray  # (count,) float32, 1/norm, 0 for a zero row
    alive: np.ndarray | None  # (count,) bool, None when every row is alive
    zero: np.ndarray | None  # (count,) bool: rows of norm 0 (cosine distance NaN), None when there are none
    quant: formats.Int8Rows | None = None  # int8 storage: per-row offset, scale and error bounds (codes = data)
    terms: formats.Int8Terms | None = None  # int8 storage: what the screening's pre-test reads (see Int8Terms)

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass(frozen=True, slots=True)
class Snapshot:
    table: str
    dims: int
    dtype: np.dtype
    segments: tuple[SegmentView, ...]
    rows: int  # alive rows
    max_sq_norm: float
    min_sq_norm: float  # smallest non-zero squared norm (float16 error bound)
    generation: int


# -- segments (what the writer owns) -----------------------------------------------------------------------
def _small_pages(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """An array in its own anonymous mapping, left to 4 KB pages.

    numpy advises transparent huge pages for arrays of 4 MB and more; where the kernel compacts memory
    synchronously for them (defrag = madvise, the default), every first touch of a 2 MB page can stall on it.
    Measured on this machine, loading 203,727 x 1536 rows: 8.4 s of system time with huge pages against 4.2 s
    without, for a search ~3% slower (11.9 ms against 11.6). Untouched pages still cost no memory.

    Private, not `mmap.mmap`'s default shared mapping: shared anonymous memory is shmem, whose first touches cost
    this machine 0.6-1.4 s per 1.25 GB against 0.37 s for private pages."""
    nbytes = max(1, shape[0] * shape[1] * dtype.itemsize)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(pages, dtype=dtype, count=shape[0] * shape[1]).reshape(shape)


MADV_POPULATE_WRITE = 23  # Linux >= 5.14; Python 3.11's mmap module does not name it


def _populate(array: np.ndarray) -> None:
    """Fault in an array's pages (zero-filled, contents untouched) from the calling thread, so that the thread
    writing rows into it later does not take the faults: ~0.4 s of a 203,727 x 1536 float32 load, off the event
    loop. Safe beside that writer (no byte is written); does nothing where the kernel lacks it.

    Through ctypes rather than `mmap.madvise`, which holds the GIL for the whole call (and so stalls the event
    loop while the kernel zeroes 32 MB); a foreign call through `ctypes.CDLL` releases it."""
    if _libc is not None and array.ctypes.data % mmap.PAGESIZE == 0:  # a `_small_pages` array starts a page
        _libc.madvise(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), MADV_POPULATE_WRITE)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):  # MADV_POPULATE_WRITE's number is Linux's
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.madvise.restype = ctypes.c_int
        return libc
    return None


_libc = _load_libc()


class _Segment:
    __slots__ = ("alive", "alive_published", "count", "data", "dead", "inv_norms32", "keys", "max_sq", "min_sq",
                 "quant", "sq_norms", "sq_norms32", "terms", "xmins", "zeros")

    def __init__(self, capacity: int, dims: int, dtype: np.dtype, key_dtype: np.dtype) -> None:
        # Pages are touched when rows are written: an unfilled tail costs address space, not memory.
        self.data = _small_pages((capacity, dims), np.dtype(dtype))
        self.keys = np.empty(capacity, dtype=key_dtype)
        self.xmins = np.empty(capacity, dtype=np.int64)
        self.sq_norms = np.empty(capacity, dtype=np.float64)
        self.sq_norms32 = np.empty(capacity, dtype=np.float32)
        self.inv_norms32 = np.empty(capacity, dtype=np.float32)
        self.alive = np.ones(capacity, dtype=bool)
        self.alive_published = False
        self.count = 0
        self.dead = 0
        self.zeros = 0
        self.max_sq = 0.0
        self.min_sq = float("inf")
        # int8: the codes are `data`; per-row offset, scale and error bounds beside them (float64, 40 bytes a row).
        self.quant = formats.Int8Rows(self.data, *(np.empty(capacity) for _ in range(5))) \
            if dtype == np.int8 else None
        self.terms = formats.Int8Terms.empty(capacity) if dtype == np.int8 else None

    @property
    def capacity(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.quant is None or self.terms is None else 5 * self.quant.offset.nbytes + self.terms.nbytes
        return extra + sum(a.nbytes for a in (self.data, self.keys, self.xmins, self.sq_norms, self.sq_norms32,
                                              self.inv_norms32, self.alive))

    def fill(self, start: int, keys: Sequence[Key], xmins: np.ndarray, rows: np.ndarray | formats.Int8Rows,
             sq: np.ndarray) -> None:
        """Rows [start, start + len(keys)): float rows (quantized here for int8), or int8 rows as they are."""
        stop = start + len(keys)
        if self.quant is not None:
            quant = rows if isinstance(rows, formats.Int8Rows) else formats.quantize_int8(rows)
            for mine, theirs in zip(self.quant.columns(), quant.columns(), strict=True):
                mine[start:stop] = theirs
            assert self.terms is not None
            self.terms.fill(start, quant, sq)
        else:
            self.data[start:stop] = rows
        self.keys[start:stop] = keys
        self.xmins[start:stop] = xmins
        self.sq_norms[start:stop] = sq
        with np.errstate(divide="ignore", over="ignore", under="ignore"):  # float32 copies: the screening's own
            self.sq_norms32[start:stop] = sq                              # bounds cover (or refuse) their range
            inv = np.where(sq > 0, 1.0 / np.sqrt(sq), 0.0)
            self.inv_norms32[start:stop] = inv
        self.alive[start:stop] = True
        nonzero = sq[sq > 0]
        self.zeros += len(sq) - len(nonzero)
        if len(nonzero):
            self.max_sq = max(self.max_sq, float(nonzero.max()))
            self.min_sq = min(self.min_sq, float(nonzero.min()))

    def kill(self, row: int) -> None:
        if self.alive_published:  # a snapshot holds this mask: copy before writing
            self.alive = self.alive.copy()
            self.alive_published = False
        self.alive[row] = False
        self.dead += 1

    def view(self) -> SegmentView:
        n = self.count
        self.alive_published = True
        zero = self.sq_norms[:n] == 0 if self.zeros else None
        quant = None if self.quant is None else self.quant[:n]
        return SegmentView(self.data[:n], self.keys[:n], self.sq_norms[:n], self.sq_norms32[:n],
                           self.inv_norms32[:n], self.alive[:n] if self.dead else None, zero, quant,
                           None if self.terms is None else self.terms.view(n))

    def rows(self, picks: np.ndarray) -> np.ndarray | formats.Int8Rows:
        """Stored rows at `picks`, in the form `fill` takes back."""
        return self.data[picks] if self.quant is None else self.quant[picks]


# -- what fetching returns ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Fetched:
    keys: list[Key] = field(default_factory=list)
    xmins: list[int] = field(default_factory=list)
    vectors: list[np.ndarray | formats.Int8Rows] = field(default_factory=list)  # float32 blocks (int8 stores:
    # quantized blocks), rows in `keys` order
    sq: list[np.ndarray] = field(default_factory=list)  # their squared norms (float64), when decoded with them
    bad: list[tuple[Key, int, VectorFormatError]] = field(default_factory=list)
    gone: list[Key] = field(default_factory=list)  # no longer legacy-only (or deleted)

    def add_chunk(self, keys: Sequence[Key], xmins: Sequence[int], chunk: formats.DecodedChunk) -> None:
        for pos, err in chunk.bad:
            self.bad.append((keys[pos], xmins[pos], err))
        if len(chunk.positions):
            self.keys.extend(keys[p] for p in chunk.positions)
            self.xmins.extend(xmins[p] for p in chunk.positions)
            self.vectors.append(chunk.vectors if chunk.quant is None else chunk.quant)
            if chunk.sq is not None:
                self.sq.append(chunk.sq)

    def merge(self, other: _Fetched) -> None:
        self.keys += other.keys
        self.xmins += other.xmins
        self.vectors += other.vectors
        self.sq += other.sq
        self.bad += other.bad
        self.gone += other.gone

    def matrix(self, dims: int) -> np.ndarray | formats.Int8Rows:
        if not self.vectors:
            return np.empty((0, dims), dtype=np.float32)
        quantized = [b for b in self.vectors if isinstance(b, formats.Int8Rows)]
        floats = [b for b in self.vectors if isinstance(b, np.ndarray)]
        assert not (quantized and floats), "one store decodes every chunk the same way"
        if quantized:
            return formats.Int8Rows.concat(quantized)
        return floats[0] if len(floats) == 1 else np.concatenate(floats)


# A lane's chunk between reading and applying: (format of the values, rows, their decode on the decode thread).
_Pending = tuple[str, list[asyncpg.Record], "asyncio.Future[formats.DecodedChunk]"]


@dataclass(slots=True)
class LoadReport:
    rows: int
    skipped: dict[str, int]
    seconds: float
    bytes: int
    lanes: tuple[str, ...]
    chunks: int


# -- SQL ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Sql:
    """The statements one route needs; identifiers quoted once, values always as parameters."""

    table: str
    key: str
    vector: str
    legacy: str
    vector_type: str | None  # qualified pgvector type, None when the extension is missing
    raw: str  # how a client lane reads the legacy value (`legacy`, or its bytes through a send function)

    @classmethod
    def for_route(cls, route: Route, vector_type: str | None, legacy_type: str = "") -> _Sql:
        assert route.legacy_column is not None
        legacy = quote_ident(route.legacy_column)
        # JSON in text or json: its bytes as bytea (pg_catalog.textsend / json_send copy them as they are), so the
        # client hands simdjson bytes instead of decoding 19 KB of UTF-8 into a str a row (~1 s of a 203,727-row
        # load). jsonb's binary form has a version byte: it stays text.
        send = {"text": "textsend", "character varying": "textsend", "json": "json_send"}.get(legacy_type) \
            if route.legacy_format == LegacyFormat.JSON else None
        return cls(quote_table(route.table), quote_ident(route.key), quote_ident(route.pg_vector_column), legacy,
                   vector_type, f"pg_catalog.{send}({legacy})" if send else legacy)

    @property
    def legacy_only(self) -> str:
        return f"{self.vector} IS NULL AND {self.legacy} IS NOT NULL"

    def value(self, server_cast: bool) -> str:
        return f"{self.legacy}::{self.vector_type}" if server_cast else self.raw

    def boundaries(self) -> str:
        # Every $1-th legacy-only key, in key order: the chunk edges of the load.
        return (f"SELECT pgcutover_k FROM (SELECT {self.key} AS pgcutover_k, row_number() OVER (ORDER BY {self.key})"
                f" AS pgcutover_rn FROM {self.table} WHERE {self.legacy_only}) AS pgcutover_s"
                " WHERE pgcutover_rn % $1 = 0 ORDER BY pgcutover_k")

    def by_range(self, server_cast: bool, lower: bool, upper: bool) -> str:
        # One statement text per bound combination, so every prepared plan is an index range scan.
        where = [self.legacy_only]
        if lower:
            where.append(f"{self.key} > $1")
        if upper:
            where.append(f"{self.key} <= ${2 if lower else 1}")
        return (f"SELECT {self.key}, xmin::text::int8, {self.value(server_cast)} FROM {self.table}"
                f" WHERE {' AND '.join(where)}")

    def by_keys(self, server_cast: bool) -> str:
        return (f"SELECT {self.key}, xmin::text::int8, CASE WHEN {self.legacy_only} THEN {self.value(server_cast)}"
                f" END FROM {self.table} WHERE {self.key} = ANY($1)")

    def key_versions(self) -> str:
        return f"SELECT {self.key}, xmin::text::int8 FROM {self.table} WHERE {self.legacy_only}"

    def first_values(self) -> str:
        return f"SELECT {self.legacy} FROM {self.table} WHERE {self.legacy_only} LIMIT 20"


def _key_converter(type_name: str) -> Callable[[Any], Key]:
    """Notice keys arrive as JSON numbers or strings; the index holds what asyncpg returns for the column."""
    if type_name in INT_TYPES:
        bound = INT_RANGES[type_name]

        def to_int(key: Any) -> int:
            value = int(key)
            if not -bound <= value < bound:  # no row can have it; the driver would raise while encoding it
                raise ValueError(f"key {str(value)[:40]} is outside {type_name}")
            return value
        return to_int
    if type_name == "uuid":
        return lambda k: k if isinstance(k, uuid.UUID) else uuid.UUID(str(k))
    if type_name in ("text", "character varying", "character"):
        return str
    return lambda k: k


def _raw_dims(fmt: str, value: Any) -> int | None:
    """Dimensions of one raw legacy value, for routes that set no `dims` (None when unreadable)."""
    try:
        if fmt == LegacyFormat.JSON:
            parsed = orjson.loads(value)
            return len(parsed) if isinstance(parsed, list) else None
        if fmt in (LegacyFormat.BYTEA_F32, LegacyFormat.BYTEA_F64):
            width = 4 if fmt == LegacyFormat.BYTEA_F32 else 8
            return len(value) // width if len(value) % width == 0 else None
        return len(value)
    except (ValueError, TypeError):
        return None


def _chunks(items: Sequence[Key], size: int) -> Iterable[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class LegacyStore:
    """Legacy-only rows of one route, shared by all sessions. See the module docstring."""

    def __init__(self, route: Route, *, dtype: str | np.dtype = "float32", lanes: Sequence[str] | None = None,
                 reconcile_interval: float = 60.0, segment_rows: int | None = None, chunk_rows: int | None = None,
                 compact_ratio: float = 0.25, channel: str = CHANNEL, max_pending: int = MAX_PENDING_NOTICES,
                 max_pending_bytes: int = MAX_PENDING_BYTES, resync_interval: float = RESYNC_INTERVAL) -> None:
        if not route.legacy_column:
            raise ValueError(f"route {route.table!r} has no legacy_column")
        self.route = route
        self.format = route.legacy_format
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16, np.int8):
            raise ValueError("dtype must be float32, float16 or int8")
        self.dims: int | None = route.dims
        self.lanes = tuple(lanes) if lanes else self._default_lanes()
        if any(lane not in ("server", "client") for lane in self.lanes):
            raise ValueError("lanes are 'server' or 'client'")
        self.reconcile_interval = reconcile_interval
        self.compact_ratio = compact_ratio
        self._segment_rows = segment_rows
        self._chunk_rows = chunk_rows
        self._segments: list[_Segment] = []
        self._index: dict[Key, tuple[_Segment, int]] = {}
        self._bad: dict[Key, tuple[int, str]] = {}  # key -> (xmin, reason) of skipped legacy-only rows
        self._generation = 0
        self._snapshot = Snapshot(route.table, self.dims or 0, self.dtype, (), 0, 0.0, float("inf"), 0)
        self._sql: _Sql | None = None
        self._key_dtype: np.dtype = np.dtype(object)
        self._to_key: Callable[[Any], Key] = lambda k: k
        self._vector_schema: str | None = None
        self.qualified_table: str | None = None  # "<schema>.<table>" as notices name it
        self.loaded = False
        self._loading = False
        self._ready = asyncio.Event()
        if not valid_channel(channel):
            raise ValueError(f"notify channel {channel!r} is not a channel name (1-63 bytes)")
        self.channel = channel
        self._pending: deque[tuple[float, str]] = deque()  # (received at, payload) of notices not yet applied
        self._pending_bytes = 0
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.resync_interval = resync_interval
        self._resync_since: float | None = None  # a resync is owed (overflow, resync or bad notice) since then
        self._last_resync = float("-inf")  # monotonic end of the last reconcile
        self.notices_dropped = 0
        self._warnings = WarningLimiter(log)
        self._notified = asyncio.Event()
        self._applying_since: float | None = None
        self._applying_keys: list[Key] = []
        self.last_reconcile: float | None = None
        self.notices_applied = 0
        self.reconciles = 0
        self._labels = {"table": route.table}
        self._configured: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
        # One thread for decoding and compaction: simdjson and orjson hold the GIL anyway, and one thread means one
        # malloc arena keeping freed chunk buffers, not one per thread of the default executor (peak RSS of the load).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcutover-fallback")
        this = weakref.ref(self)  # the metric must not keep a replaced store (and its matrix) alive
        metrics.REFRESH_LAG.labels(**self._labels).set_function(
            lambda: store.refresh_lag() if (store := this()) is not None else 0.0)

    def _default_lanes(self) -> tuple[str, ...]:
        # JSON: simdjson here costs ~30 us a row (1536 dims) where pgvector's cast costs the server ~120 us
        # (strtof), on top of the ~45-60 us the server spends on every row either way (TOAST, pglz, send): client
        # lanes only, two, each reading one chunk ahead of the decode thread (bench/fallback_load.py). Without
        # simdjson (orjson: ~90 us a row) a server lane shares the work. Arrays: the server's cast is the only fast
        # reader. bytea: nothing to parse, two lanes overlap network and copying.
        if self.format == LegacyFormat.JSON:
            return ("client", "client") if formats.simdjson is not None else ("server", "client")
        return {LegacyFormat.ARRAY: ("server", "server")}.get(self.format, ("client", "client"))

    # -- reading ---------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def __len__(self) -> int:
        return self._snapshot.rows

    def __contains__(self, key: Key) -> bool:
        return key in self._index

    def get(self, key: Key) -> np.ndarray | None:
        """The stored vector of `key` as float32 (a copy), or None. An int8 store keeps no such vector."""
        if self.dtype == np.int8:
            raise ValueError("an int8 store keeps screening codes only: read the vector from the table")
        loc = self._index.get(key)
        return None if loc is None else loc[0].data[loc[1]].astype(np.float32)

    def xmin(self, key: Key) -> int | None:
        loc = self._index.get(key)
        return None if loc is None else int(loc[0].xmins[loc[1]])

    @property
    def nbytes(self) -> int:
        return sum(seg.nbytes for seg in self._segments)

    @property
    def skipped(self) -> dict[Key, str]:
        """Legacy-only rows currently skipped, key -> reason."""
        return {key: reason for key, (_, reason) in self._bad.items()}

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def close(self) -> None:
        """Release the worker thread (the store stays readable)."""
        self._worker.shutdown(wait=False)

    # -- writing (event loop only) ---------------------------------------------------------------------------
    def _rows_per_segment(self) -> int:
        if self._segment_rows:
            return self._segment_rows
        assert self.dims
        # A multiple of the search's block of rows, so no segment ends in a small, inefficient product.
        return max(BLOCK_ROWS, SEGMENT_BYTES // (self.dims * self.dtype.itemsize) // BLOCK_ROWS * BLOCK_ROWS)

    def _tail(self) -> _Segment:
        if not self._segments or self._segments[-1].count == self._segments[-1].capacity:
            assert self.dims
            self._segments.append(_Segment(self._rows_per_segment(), self.dims, self.dtype, self._key_dtype))
            if self._loading:  # the load will fill it: fault its pages in on the decode thread meanwhile
                self._worker.submit(_populate, self._segments[-1].data)
        return self._segments[-1]

    def _kill(self, key: Key) -> bool:
        loc = self._index.pop(key, None)
        if loc is not None:
            loc[0].kill(loc[1])
        return loc is not None

    def _append(self, keys: Sequence[Key], xmins: Sequence[int], vectors: np.ndarray | formats.Int8Rows,
                sq: np.ndarray | None = None) -> None:
        """Rows as float32, or already quantized for an int8 store (`sq`: their squared norms in float64, when the
        decode thread has them already; always with quantized rows)."""
        stored: np.ndarray | formats.Int8Rows
        if isinstance(vectors, formats.Int8Rows):
            assert sq is not None and self.dtype == np.int8
            stored, fits = vectors, np.ones(len(vectors), dtype=bool)
        else:
            stored, fits = formats.to_storage(vectors, self.dtype)
        if not fits.all():
            for pos in np.flatnonzero(~fits):
                self._mark_bad(keys[pos], xmins[pos], VectorFormatError(formats.FP16_RANGE, "beyond float16"))
            keys = [k for k, ok in zip(keys, fits, strict=True) if ok]
            xmins = [x for x, ok in zip(xmins, fits, strict=True) if ok]
            sq = None
        if sq is None or stored is not vectors:  # float16: the norms of the rows as stored
            assert isinstance(stored, np.ndarray)
            sq = formats.squared_norms(stored)
        xmins_arr = np.asarray(xmins, dtype=np.int64)
        done = 0
        while done < len(keys):
            seg = self._tail()
            take = min(seg.capacity - seg.count, len(keys) - done)
            start = seg.count
            seg.fill(start, keys[done:done + take], xmins_arr[done:done + take], stored[done:done + take],
                     sq[done:done + take])
            self._index.update(zip(keys[done:done + take], zip(itertools.repeat(seg), range(start, start + take)),
                                   strict=True))
            seg.count += take  # published only by _publish(), after the rows are complete
            done += take

    def _mark_bad(self, key: Key, xmin: int, err: VectorFormatError) -> None:
        self._kill(key)
        self._bad[key] = (xmin, err.reason)
        metrics.SKIPPED_TOTAL.labels(reason=err.reason, **self._labels).inc()

    def _apply(self, fetched: _Fetched, what: str) -> None:
        """Make the store agree with freshly read rows: upsert good ones, drop bad and gone ones."""
        for key in fetched.gone:
            self._kill(key)
            self._bad.pop(key, None)
        for key in fetched.keys:
            self._kill(key)
            self._bad.pop(key, None)
        self._append(fetched.keys, fetched.xmins, fetched.matrix(self.dims or 0),
                     np.concatenate(fetched.sq) if fetched.sq and len(fetched.sq) == len(fetched.vectors) else None)
        for n, (key, xmin, err) in enumerate(fetched.bad):
            self._mark_bad(key, xmin, err)
            if n < LOGGED_BAD_ROWS:
                log.warning("%s: skipped legacy row %s=%r during %s (%s)", self.route.table, self.route.key, key,
                            what, err)
        if len(fetched.bad) > LOGGED_BAD_ROWS:
            reasons = Counter(err.reason for _, _, err in fetched.bad)
            log.warning("%s: %d more legacy rows skipped during %s (%s)", self.route.table,
                        len(fetched.bad) - LOGGED_BAD_ROWS, what, dict(reasons))
        self._publish()

    def _publish(self) -> None:
        segments = tuple(seg.view() for seg in self._segments if seg.count)
        rows = sum(seg.count - seg.dead for seg in self._segments)
        max_sq = max((seg.max_sq for seg in self._segments), default=0.0)
        min_sq = min((seg.min_sq for seg in self._segments), default=float("inf"))
        self._generation += 1
        self._snapshot = Snapshot(self.route.table, self.dims or 0, self.dtype, segments, rows, max_sq, min_sq,
                                  self._generation)
        metrics.LEGACY_ROWS.labels(**self._labels).set(rows)
        metrics.BYTES.labels(**self._labels).set(self.nbytes)
        metrics.SKIPPED_ROWS.labels(**self._labels).set(len(self._bad))

    def upsert(self, key: Key, vector: np.ndarray, xmin: int = 0) -> None:
        """Insert or replace one row (mostly for tests; the follower re-reads rows from the table)."""
        self.bulk_upsert([key], np.asarray(vector, dtype=np.float32)[None, :], [xmin])

    def bulk_upsert(self, keys: Sequence[Key], vectors: np.ndarray, xmins: Sequence[int] | None = None) -> None:
        """Insert or replace many rows at once, without a database (tests, benchmarks)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self.dims = self.dims or vectors.shape[1]
        if vectors.ndim != 2 or vectors.shape[1] != self.dims:
            raise VectorFormatError(formats.DIMS, f"expected rows of {self.dims} dimensions, got {vectors.shape}")
        for start in range(0, len(vectors), 8192):
            if not np.isfinite(vectors[start:start + 8192]).all():
                raise VectorFormatError(formats.NON_FINITE, "NaN or infinite element")
        if not self._segments and self._sql is None and all(isinstance(k, int) for k in keys):
            self._key_dtype = np.dtype(np.int64)
        for key in keys:
            self._kill(key)
            self._bad.pop(key, None)
        self._append(list(keys), list(xmins) if xmins is not None else [0] * len(keys), vectors)
        self._publish()

    def remove(self, key: Key) -> bool:
        removed = self._kill(key)
        self._bad.pop(key, None)
        self._publish()
        return removed

    # -- compaction ------------------------------------------------------------------------------------------
    def _compaction_run(self) -> list[_Segment] | None:
        """Consecutive full segments to merge into one: starting at the first worth compacting."""
        limit = self._rows_per_segment() if self.dims else 0
        candidates = self._segments[:-1]  # the tail still takes appends
        for i, seg in enumerate(candidates):
            if seg.count and (seg.dead / seg.count > self.compact_ratio or seg.count - seg.dead < limit // 4):
                run, alive = [], 0
                for other in candidates[i:]:
                    if run and alive + other.count - other.dead > limit:
                        break
                    run.append(other)
                    alive += other.count - other.dead
                if len(run) > 1 or seg.dead:
                    return run
        return None

    @staticmethod
    def _merge_rows(run: list[_Segment], dims: int, dtype: np.dtype, key_dtype: np.dtype
                    ) -> tuple[_Segment, list[tuple[_Segment, np.ndarray]]]:
        # Runs in a worker thread: reads only rows below each segment's count, which never change.
        picks = [(seg, np.flatnonzero(seg.alive[:seg.count])) for seg in run]
        total = sum(len(rows) for _, rows in picks)
        new = _Segment(total, dims, dtype, key_dtype)
        start = 0
        for seg, rows in picks:
            new.fill(start, seg.keys[rows].tolist(), seg.xmins[rows], seg.rows(rows), seg.sq_norms[rows])
            start += len(rows)
        new.count = total
        return new, picks

    async def compact(self) -> bool:
        """Merge one run of segments with many tombstones (or small ones) into a new segment; True if done."""
        run = self._compaction_run()
        if run is None or not self.dims:
            return False
        new, picks = await asyncio.get_running_loop().run_in_executor(
            self._worker, self._merge_rows, run, self.dims, self.dtype, self._key_dtype)
        if any(seg not in self._segments for seg in run):
            return False  # another compaction got there first
        start = 0
        for seg, rows in picks:
            for offset, row in enumerate(rows.tolist()):
                key = seg.keys[row]
                key = key.item() if isinstance(key, np.generic) else key
                if seg.alive[row] and self._index.get(key) == (seg, row):
                    self._index[key] = (new, start + offset)
                else:  # tombstoned while the copy ran
                    new.kill(start + offset)
            start += len(rows)
        at = self._segments.index(run[0])
        self._segments[at:at + len(run)] = [new]
        self._publish()
        return True

    # -- database access ---------------------------------------------------------------------------------------
    async def _prepare(self, conn: asyncpg.Connection) -> None:
        """Resolve the table, the column types, pgvector's schema and the dimensions (once)."""
        if self._sql is not None:
            return
        route = self.route
        rel = await conn.fetchrow(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = $1::regclass", quote_table(route.table))
        self.qualified_table = f"{rel['nspname']}.{rel['relname']}"
        columns = {r["attname"]: r for r in await conn.fetch(
            "SELECT attname, format_type(atttypid, NULL) AS type, atttypmod FROM pg_attribute"
            " WHERE attrelid = $1 AND attname = ANY($2::text[]) AND attnum > 0 AND NOT attisdropped",
            rel["oid"], [route.key, route.pg_vector_column, route.legacy_column])}
        for name in (route.key, route.pg_vector_column, route.legacy_column):
            if name not in columns:
                raise ValueError(f"{route.table}: no column {name!r}")
        key_type = columns[route.key]["type"]
        self._to_key = _key_converter(key_type)
        self._key_dtype = np.dtype(np.int64 if key_type in INT_TYPES else object)
        self._vector_schema = await conn.fetchval(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'")
        vector_type = f"{quote_ident(self._vector_schema)}.vector" if self._vector_schema else None
        self._sql = _Sql.for_route(route, vector_type, columns[route.legacy_column]["type"])
        if self.dims is None:
            typmod = columns[route.pg_vector_column]["atttypmod"]
            self.dims = typmod if columns[route.pg_vector_column]["type"] == "vector" and typmod > 0 else None
        if self.dims is None:
            seen = Counter(_raw_dims(self.format, r[0]) for r in await conn.fetch(self._sql.first_values()))
            seen.pop(None, None)
            self.dims = seen.most_common(1)[0][0] if seen else None
            log.info("%s: dims not configured, using %s from the data", route.table, self.dims)

    async def _configure(self, conn: asyncpg.Connection) -> None:
        """Once per connection: resolve the route, and read pgvector values as raw binary."""
        await self._prepare(conn)
        if self._vector_schema and conn not in self._configured:
            # pgvector's binary form arrives as raw bytes; formats.decode_many reads whole chunks of it.
            await conn.set_type_codec("vector", schema=self._vector_schema, encoder=bytes,
                                      decoder=lambda data: data, format="binary")
            self._configured.add(conn)

    async def _connect(self, conn_factory: ConnFactory) -> asyncpg.Connection:
        conn = await conn_factory()
        await self._configure(conn)
        return conn

    @property
    def _server_cast(self) -> bool:
        return self.format in SERVER_CAST_FORMATS and self._vector_schema is not None

    async def _decode(self, conn: asyncpg.Connection, fmt: str, rows: Sequence[asyncpg.Record]) -> _Fetched:
        """Decode fetched (key, xmin, value) rows; JSON that orjson refuses goes to the server for a verdict."""
        return await self._settle(conn, fmt, rows, self._decode_soon(fmt, rows))

    def _decode_soon(self, fmt: str, rows: Sequence[asyncpg.Record]) -> asyncio.Future[formats.DecodedChunk]:
        """Start decoding the rows' values on the decode thread (NULL values are `_settle`'s)."""
        assert self.dims
        return asyncio.get_running_loop().run_in_executor(
            self._worker, formats.decode_with_norms, fmt, [r[2] for r in rows if r[2] is not None], self.dims,
            self.dtype == np.int8)

    async def _settle(self, conn: asyncpg.Connection, fmt: str, rows: Sequence[asyncpg.Record],
                      decoding: asyncio.Future[formats.DecodedChunk]) -> _Fetched:
        """The rows as decoded by `decoding` (from `_decode_soon`), with the server's verdict on refused JSON."""
        fetched = _Fetched()
        present = [r for r in rows if r[2] is not None]
        fetched.gone = [r[0] for r in rows if r[2] is None]
        keys, xmins = [r[0] for r in present], [r[1] for r in present]
        chunk = await decoding
        if fmt == LegacyFormat.JSON and self._server_cast:
            retry = {pos for pos, err in chunk.bad if err.reason == formats.SYNTAX}
            if retry:
                chunk.bad = [(pos, err) for pos, err in chunk.bad if pos not in retry]
                fetched.merge(await self._server_verdict(conn, [keys[pos] for pos in sorted(retry)]))
        fetched.add_chunk(keys, xmins, chunk)
        return fetched

    async def _server_verdict(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> _Fetched:
        """Cast these rows on the server; when the cast fails, bisect down to the rows at fault."""
        assert self._sql
        try:
            rows = await conn.fetch(self._sql.by_keys(True), list(keys))
        except asyncpg.DataError as exc:
            if len(keys) == 1:
                xmin = await conn.fetchval(f"SELECT xmin::text::int8 FROM {self._sql.table}"
                                           f" WHERE {self._sql.key} = $1", keys[0])
                return _Fetched(bad=[(keys[0], xmin or 0, VectorFormatError(formats.SERVER, str(exc)))])
            half = len(keys) // 2
            first = await self._server_verdict(conn, keys[:half])
            first.merge(await self._server_verdict(conn, keys[half:]))
            return first
        fetched = await self._decode(conn, PGVECTOR_BINARY, rows)
        fetched.gone += sorted(set(keys) - {r[0] for r in rows}, key=repr)
        return fetched

    async def _read(self, conn: asyncpg.Connection, lane: str, sql: Callable[[bool], str],
                    args: Sequence[Any]) -> tuple[str, list[asyncpg.Record]]:
        """Run one selection the lane's way: (format of the values, rows). A chunk the server cannot cast is
        re-read raw, to be triaged row by row."""
        if lane == "server" and self._server_cast:
            try:
                return PGVECTOR_BINARY, await conn.fetch(sql(True), *args)
            except asyncpg.DataError as exc:
                log.info("%s: server cast failed for a chunk (%s); triaging its rows", self.route.table, exc)
        return self.format, await conn.fetch(sql(False), *args)

    async def _fetch_rows(self, conn: asyncpg.Connection, lane: str, sql: Callable[[bool], str],
                          args: Sequence[Any]) -> _Fetched:
        return await self._decode(conn, *await self._read(conn, lane, sql, args))

    async def _fetch_keys(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> _Fetched:
        assert self._sql
        sql = self._sql
        lane = "server" if self._server_cast else "client"
        fetched = await self._fetch_rows(conn, lane, sql.by_keys, [list(keys)])
        found = set(fetched.keys) | set(fetched.gone) | {key for key, _, _ in fetched.bad}
        fetched.gone += [key for key in keys if key not in found]
        return fetched

    # -- load ------------------------------------------------------------------------------------------------
    async def load(self, conn_factory: ConnFactory) -> LoadReport:
        """Read every legacy-only row. Call once, on an empty store; `reconcile()` keeps it current afterwards."""
        if self.loaded or self._segments:
            raise RuntimeError("load() runs once, on an empty store; use reconcile()")
        started = time.monotonic()
        conns = [await self._connect(conn_factory)]
        self._loading = True
        try:
            assert self._sql
            if self.dims is None:  # no legacy rows and nothing to learn the dimensions from
                return self._finish_load(started, 0)
            chunk_rows = self._chunk_rows or max(64, CHUNK_BYTES // (self.dims * 4))
            edges = [r[0] for r in await conns[0].fetch(self._sql.boundaries(), chunk_rows)]
            ranges: list[tuple[Any, Any]] = list(zip([None, *edges], [*edges, None], strict=True))
            ranges.reverse()  # popped from the end: key order
            conns += [await self._connect(conn_factory) for _ in self.lanes[1:]]
            try:
                async with asyncio.TaskGroup() as lanes:  # one lane failing cancels the others
                    for conn, lane in zip(conns, self.lanes, strict=True):
                        lanes.create_task(self._lane(conn, lane, ranges))
            except ExceptionGroup as failed:  # the lane's own error, not "unhandled errors in a TaskGroup"
                raise failed.exceptions[0] from None
            return self._finish_load(started, len(edges) + 1)
        except BaseException:
            self._drop_partial_load()
            raise
        finally:
            self._loading = False
            for conn in conns:
                await conn.close()

    def _drop_partial_load(self) -> None:
        """Forget what a failed load read, so that load() can run again on this store (proxy/legacy.py retries
        until the upstream is back). Nobody searched those rows: the store was not loaded."""
        self._segments.clear()
        self._index.clear()
        self._bad.clear()
        self._publish()

    async def _lane(self, conn: asyncpg.Connection, lane: str, ranges: list[tuple[Any, Any]]) -> None:
        """Read ranges until none is left, one ahead of the decode thread: the backend streams the next range
        while this one is decoded, instead of waiting for it (bench/fallback_load.py: ~1 s of idle CPU on 2
        cores). Two ranges of values per lane at most are held (one decoding, one arriving)."""
        assert self._sql
        sql = self._sql
        current: _Pending | None = None
        ahead: _Pending | None = None
        try:
            while ranges or ahead:
                current, ahead = ahead, None
                if ranges:
                    lower, upper = ranges.pop()
                    args = [a for a in (lower, upper) if a is not None]
                    statement = functools.partial(sql.by_range, lower=lower is not None, upper=upper is not None)
                    fmt, rows = await self._read(conn, lane, statement, args)
                    ahead = (fmt, rows, self._decode_soon(fmt, rows))
                if current:
                    self._apply(await self._settle(conn, *current), "load")
        finally:  # a failed lane leaves no decode queued for nobody (cancelling a finished one does nothing)
            for pending in (current, ahead):
                if pending:
                    pending[2].cancel()

    def _finish_load(self, started: float, chunks: int) -> LoadReport:
        self.loaded = True
        self.last_reconcile = time.time()
        seconds = time.monotonic() - started
        self._publish()
        self._ready.set()
        metrics.LOAD_SECONDS.labels(**self._labels).set(seconds)
        reasons = Counter(reason for _, reason in self._bad.values())
        log.info("%s: loaded %d legacy rows (%d skipped) in %.1fs, %.0f MB", self.route.table, len(self),
                 len(self._bad), seconds, self.nbytes / 1e6)
        return LoadReport(len(self), dict(reasons), seconds, self.nbytes, self.lanes, chunks)

    # -- refresh ---------------------------------------------------------------------------------------------
    async def refresh(self, conn: asyncpg.Connection, keys: Iterable[Any]) -> None:
        """Re-read the current state of these keys and apply it (upsert, skip or remove)."""
        await self._configure(conn)
        wanted = list(dict.fromkeys(self._to_key(k) for k in keys))
        if self.dims is None and wanted:
            await self._learn_dims(conn, wanted)
        for batch in _chunks(wanted, REFRESH_BATCH):
            if self.dims is None:
                self._apply(_Fetched(gone=list(batch)), "refresh")
            else:
                self._apply(await self._fetch_keys(conn, batch), "refresh")

    async def _learn_dims(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        assert self._sql
        rows = await conn.fetch(self._sql.by_keys(False), list(keys[:20]))
        seen = Counter(_raw_dims(self.format, r[2]) for r in rows if r[2] is not None)
        seen.pop(None, None)
        if seen:
            self.dims = seen.most_common(1)[0][0]

    async def reconcile(self, conn: asyncpg.Connection) -> int:
        """Compare (key, xmin) of every legacy-only row with the store; re-read what differs. Returns that count."""
        await self._configure(conn)
        assert self._sql
        started = time.time()
        seen = {id(seg): np.zeros(seg.count, dtype=bool) for seg in self._segments}
        seen_bad: set[Key] = set()
        differing: list[Key] = []
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            async for key, xmin in conn.cursor(self._sql.key_versions(), prefetch=20000):
                loc = self._index.get(key)
                marks = seen.get(id(loc[0])) if loc is not None else None
                if marks is not None and loc[1] < len(marks):
                    marks[loc[1]] = True
                    if loc[0].xmins[loc[1]] != xmin:
                        differing.append(key)
                elif key in self._bad and loc is None:
                    seen_bad.add(key)
                    if self._bad[key][0] != xmin:  # a skipped row that changed: maybe readable now
                        differing.append(key)
                else:
                    differing.append(key)
        for seg in self._segments:  # rows the table no longer has as legacy-only
            marks = seen.get(id(seg))
            if marks is not None:
                gone = seg.alive[:len(marks)] & ~marks
                differing.extend(seg.keys[np.flatnonzero(gone)].tolist())
        differing.extend(key for key in self._bad if key not in seen_bad)
        await self.refresh(conn, differing)
        self.last_reconcile = started
        self._last_resync = time.monotonic()
        self.reconciles += 1
        metrics.LAST_RECONCILE.labels(**self._labels).set(started)
        metrics.RECONCILE_CHANGES.labels(**self._labels).inc(len(differing))
        return len(differing)

    # -- follow ----------------------------------------------------------------------------------------------
    def refresh_lag(self) -> float:
        """Seconds since the oldest change notice that is not yet applied (0 when caught up)."""
        times = [t for t in (self._applying_since, self._resync_since) if t is not None]
        if self._pending:
            times.append(self._pending[0][0])
        return time.monotonic() - min(times) if times else 0.0

    def in_flight_keys(self) -> list[Key]:
        """Keys named by change notices received but not yet applied (the merged query may add them to its
        candidates). A pending resync cannot be enumerated; `refresh_lag()` tells that something is pending."""
        keys = list(self._applying_keys)
        for _, payload in self._pending:
            try:
                notice = parse_notice(payload)
                if notice.table == self.qualified_table:
                    keys.extend(self._to_key(key) for key in notice.keys)
            except (NoticeError, ValueError):
                continue
        return keys

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        now = time.monotonic()
        if len(self._pending) >= self.max_pending or self._pending_bytes + len(payload) > self.max_pending_bytes:
            # Full: whatever is queued (and this one) is covered by one resync instead, which reads every key.
            dropped = len(self._pending) + 1
            self._resync_since = min(self._resync_since or now, self._pending[0][0] if self._pending else now)
            self._pending.clear()
            self._pending_bytes = 0
            self.notices_dropped += dropped
            metrics.NOTICES_DROPPED.labels(**self._labels).inc(dropped)
            self._warnings.warning("overflow", "%s: more than %d change notices (or %d bytes) pending; collapsed"
                                   " into one resync", self.route.table, self.max_pending, self.max_pending_bytes)
        else:
            self._pending.append((now, payload))
            self._pending_bytes += len(payload)
        self._notified.set()

    async def follow(self, conn_factory: ConnFactory, *, stop: asyncio.Event | None = None,
                     retry_delay: float = 1.0) -> None:
        """LISTEN for change notices and apply them, reconcile periodically; loads first if needed.

        Runs until `stop` is set (or the task is cancelled). Errors are logged and the connections re-opened,
        followed by a reconcile, since notices sent meanwhile are lost.
        """
        stop = stop or asyncio.Event()
        while not stop.is_set():
            listen = work = None
            try:
                listen = await conn_factory()
                await listen.add_listener(self.channel, self._on_notify)
                if not self.loaded and not self._segments and not self._bad:
                    await self.load(conn_factory)
                    work = await self._connect(conn_factory)
                else:  # loaded before we listened, reconnected, or a load that failed half-way
                    work = await self._connect(conn_factory)
                    await self.reconcile(work)
                    if not self.loaded:
                        self._finish_load(time.monotonic(), 0)
                await self._follow_loop(work, listen, stop)
            except Exception:
                log.exception("%s: fallback follower failed; retrying in %.1fs", self.route.table, retry_delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry_delay)
            finally:
                for conn in (listen, work):
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                self._pending.clear()
                self._pending_bytes = 0
                self._applying_since = None

    async def _follow_loop(self, work: asyncpg.Connection, listen: asyncpg.Connection, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if listen.is_closed() or work.is_closed():
                raise ConnectionError("follower connection closed")
            due = (self.last_reconcile or 0) + self.reconcile_interval - time.time()
            if due <= 0:
                await self.reconcile(work)
                while await self.compact():
                    pass
                continue
            resync_due = self._last_resync + self.resync_interval - time.monotonic()
            if self._resync_since is not None and resync_due <= 0:
                since, self._resync_since = self._resync_since, None
                self._applying_since = since
                try:
                    await self.reconcile(work)
                finally:
                    self._applying_since = None
                while await self.compact():
                    pass
                continue
            if not self._pending:
                self._notified.clear()
                wait = min(due, 1.0) if self._resync_since is None else min(due, resync_due, 1.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait_any(stop), max(wait, 0.0))
                continue
            batch = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._applying_since = batch[0][0]
            try:
                if await self._apply_notices(work, [payload for _, payload in batch]):
                    self._resync_since = min(self._resync_since or batch[0][0], batch[0][0])
            finally:
                self._applying_since = None
            while await self.compact():
                pass

    async def _wait_any(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self._notified.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _apply_notices(self, conn: asyncpg.Connection, payloads: Sequence[str]) -> bool:
        """Refresh the keys the notices name; True when they ask for a resync (or cannot be read: reconciling
        is the safe reading). The follow loop runs resyncs, spaced by `resync_interval`."""
        keys: list[Any] = []
        resync = False
        for payload in payloads:
            try:
                notice = parse_notice(payload)
            except NoticeError as exc:
                self._warnings.warning("unreadable", "%s: unreadable change notice (%s); reconciling",
                                       self.route.table, exc)
                resync = True
                continue
            if notice.table != self.qualified_table:
                continue
            metrics.NOTICES.labels(kind=notice.kind, **self._labels).inc()
            self.notices_applied += 1
            resync = resync or notice.is_resync
            for key in notice.keys:
                try:
                    keys.append(self._to_key(key))
                except ValueError as exc:  # no row can have it; it may hide a change that had no notice
                    self._warnings.warning("key", "%s: notice key of the wrong type or range (%s); reconciling",
                                           self.route.table, exc)
                    resync = True
        self._applying_keys = keys
        try:
            if keys:
                await self.refresh(conn, keys)
        finally:
            self._applying_keys = []
        return resync
