"""Exact top-k over a store snapshot, for pgvector's `<->` (l2), `<=>` (cosine) and `<#>` (ip), with batching.

What "exact" means here. PostgreSQL recomputes every candidate's distance in the merged query, in float32 with its
own summation order, so no float32 computation here can reproduce its ranking bit for bit. Instead the search
returns a *candidate set* guaranteed to contain every legacy row that could be in the server's top-k:

1. Screening: one float32 matrix product per block of rows gives a score per (row, query) with a known error
   bound E1 (from the dot-product error bound gamma_D = D*u/(1 - D*u), u = 2^-24). Every row whose score is within
   2*E1 + T of the running k-th best is kept, where T bounds how far pgvector's float32 distance can be from the
   exact one (the same gamma bound on its own sums), plus how far the stored row may be from the server's
   float32 value (one ulp per element for JSON decoded here; float16 rounding when the store keeps float16).
2. Refinement: the kept rows are re-scored in float64 (exact for practical purposes), and every row within T of
   the exact k-th distance is returned, nearest first, with its float64 distance as pgvector defines it:
   l2 = sqrt(sum (x-q)^2), cosine = 1 - x.q/(|x||q|) (NaN for a zero vector), ip = -x.q.

So the result usually has exactly k rows, a few more when distances tie within the bound, and all rows when the
store holds fewer than k. Memory per query is O(k): the only O(rows) temporaries are per block of rows and shared
by the whole batch.

Batching. `BatchSearcher.search()` queues the request; one worker takes whatever is queued when it becomes free
(optionally after a short window), answers it with one matrix product per block of rows, and resolves the
futures. The products run in search threads (one per CPU) that share the segments out among themselves, with
OpenBLAS kept to one thread (see `_Pool`); the event loop never runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pgcutover.core.enums import Metric
from pgcutover.fallback import metrics

if TYPE_CHECKING:
    from pgcutover.fallback.store import LegacyStore, SegmentView, Snapshot

METRICS = ("l2", "cosine", "ip", "l1")
U32 = 2.0 ** -24  # unit roundoff of float32
U16 = 2.0 ** -11  # relative rounding of float16 (normal range)
F16_ABS = 2.0 ** -25  # absolute rounding of float16 subnormals
ZERO_SCORE = 4.0  # cosine screening score of a zero row: after every real one (|-cos| <= 1 + error)
BLOCK_ROWS = 1024  # rows per matrix product when several queries are batched (measured best of 1-4k)
REFINE_ROWS = 4096  # candidates re-scored in float64 at a time (bounds memory when many rows tie)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    vector: np.ndarray  # float32, (dims,)
    k: int
    metric: str

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.k < 1:
            raise ValueError("k must be at least 1")


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Float32/float16 storage: exact float64 distances. int8 storage and l1 (fallback.screening): a candidate set
    ordered by an upper bound of each row's server distance, `distances[k-1]` (when there are k) a distance that
    every row left out is at least at; len(keys) may then be well above k."""

    keys: np.ndarray  # nearest first
    distances: np.ndarray  # float64, pgvector's definition of the metric (see above)
    k: int  # what was asked; len(keys) >= min(k, rows), more when distances tie within the error bound

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(slots=True)
class _Bounds:
    """Per-query error bounds, in screening-score units (which equal distance units for cosine and ip and
    squared-distance units for l2)."""

    e1: float  # |screening score - exact score of the stored row|
    t_const: float  # |pgvector's distance - ours| that does not scale with the distance
    t_rel: float  # ... the part proportional to the (squared) distance (l2)
    t_sqrt: float  # ... the part proportional to its square root (l2 with float16 storage)
    shift: float  # exact distance = screening score + shift (l2: |q|^2)

    def tolerance(self, exact: float) -> float:
        """T at an exact (squared) distance."""
        exact = max(exact, 0.0)
        return self.t_const + self.t_rel * exact + self.t_sqrt * math.sqrt(exact)

    def screen_margin(self, kth_score: float) -> float:
        return 2 * self.e1 + self.tolerance(kth_score + self.shift + self.e1)


def _gamma(dims: int) -> float:
    return dims * U32 / (1 - dims * U32)


def _bounds(metric: str, q_norm: float, snap: Snapshot) -> _Bounds:
    """Error bounds for one query (see the module docstring); generous by a factor of 2 where cheap."""
    g = _gamma(snap.dims)
    mx = math.sqrt(snap.max_sq_norm)
    # |stored row - the server's float32 row|, as a norm: float16 rounding, or for float32 one ulp per element
    # (JSON decoded here goes text -> float64 -> float32, which can differ from pgvector's strtof by one ulp).
    half = snap.dtype == np.float16
    quant = U16 * mx + F16_ABS * math.sqrt(snap.dims) if half else 2 * U32 * mx
    if metric == Metric.L2:
        e1 = 2 * (2 * g * mx * q_norm + 2 * U32 * mx * mx + 2 * U32 * mx * q_norm)
        # pgvector: (a-b) rounded, squared, summed in float32: relative error <= gamma + 3u.
        return _Bounds(e1, 2 * quant * quant, 2 * (g + 3 * U32), 2 * 2 * quant, q_norm * q_norm)
    if metric == Metric.COSINE:
        e1 = 2 * (g + 8 * U32)
        t = 2 * (2 * g + 8 * U32)
        if half:
            min_norm = math.sqrt(snap.min_sq_norm) if math.isfinite(snap.min_sq_norm) else 1.0
            t += 2 * 2 * (U16 + F16_ABS * math.sqrt(snap.dims) / max(min_norm, 1e-30))
        else:
            t += 2 * 2 * 2 * U32
        return _Bounds(e1, t, 0.0, 0.0, 1.0)
    if metric == Metric.L1:
        # pgvector: |a-b| rounded, summed in float32: relative error <= gamma + u; the stored row (float32 here,
        # float16 storage is bounded per row by the search) one ulp per element from the server's: u |x|_1.
        return _Bounds(0.0, 2 * 2 * U32 * math.sqrt(snap.dims) * mx, 2 * (g + 2 * U32), 0.0, 0.0)
    e1 = 2 * (g + U32) * mx * q_norm
    return _Bounds(e1, 2 * (g + 2 * U32) * mx * q_norm + 2 * quant * q_norm, 0.0, 0.0, 0.0)


@dataclass(slots=True)
class _Candidates:
    """Screened (query, segment, row, score) entries; after `prune()`, sorted by query then score."""

    query: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seg: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    row: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    score: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    _parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    pending: int = 0

    def add(self, query: np.ndarray, seg: int, row: np.ndarray, score: np.ndarray) -> None:
        self._parts.append((query, np.full(len(row), seg), row, score))
        self.pending += len(row)

    def add_all(self, other: _Candidates) -> None:
        self._parts.append((other.query, other.seg, other.row, other.score))
        self.pending += len(other.query)

    def prune(self, plan: _Plan, threshold: np.ndarray) -> np.ndarray:
        """Tighten each query's threshold to its k-th candidate score plus margin, drop what lies beyond."""
        if self._parts:
            parts = [(self.query, self.seg, self.row, self.score), *self._parts]
            self.query, self.seg, self.row, self.score = (np.concatenate(c) for c in zip(*parts, strict=True))
            self._parts.clear()
        order = np.lexsort((self.score, self.query))
        self.query, self.seg, self.row, self.score = (a[order] for a in (self.query, self.seg, self.row,
                                                                        self.score))
        counts = np.bincount(self.query, minlength=len(plan.ks))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        full = counts >= plan.ks
        kth = np.full(len(plan.ks), np.nan)
        kth[full] = self.score[starts[full] + plan.ks[full] - 1]
        threshold = np.fmin(threshold, kth + plan.screen_margins(kth))  # NaN (too few yet) changes nothing
        keep = self.score <= threshold[self.query]
        self.query, self.seg, self.row, self.score = (a[keep] for a in (self.query, self.seg, self.row,
                                                                       self.score))
        self.pending = len(self.query)
        return threshold


class _Plan:
    """A batch of queries ordered by metric, so each metric's rows of the score matrix are one slice.

    Queries are pre-scaled so that one matrix product plus one pass per metric gives the screening score:
    l2: |x|^2 + x.(-2q)   cosine: (x.(-q/|q|)) / |x|   ip: x.(-q)   (smaller is nearer, as in pgvector).
    """

    _e1: np.ndarray
    _t_const: np.ndarray
    _t_rel: np.ndarray
    _t_sqrt: np.ndarray
    _shift: np.ndarray

    def __init__(self, snap: Snapshot, queries: Sequence[Query]) -> None:
        self.order = sorted(range(len(queries)), key=lambda i: METRICS.index(queries[i].metric))
        self.queries = [queries[i] for i in self.order]
        self.q64 = np.stack([q.vector for q in self.queries]).astype(np.float64)
        self.q_norms = np.sqrt(np.einsum("ij,ij->i", self.q64, self.q64))
        self.ks = np.array([q.k for q in self.queries], dtype=np.int64)
        self.slices: dict[str, slice] = {}
        scale = np.empty(len(self.queries))
        start = 0
        for metric in METRICS:
            n = sum(1 for q in self.queries if q.metric == metric)
            if n:
                self.slices[metric] = sl = slice(start, start + n)
                with np.errstate(divide="ignore"):
                    scale[sl] = {"l2": -2.0, "ip": -1.0}.get(metric, -1.0 / self.q_norms[sl])
            start += n
        self.scaled = (self.q64 * scale[:, None]).astype(np.float32)  # (B, dims), C order
        self.scaled_t = np.ascontiguousarray(self.scaled.T)  # (dims, B)
        self.bounds = [_bounds(q.metric, float(n), snap) for q, n in zip(self.queries, self.q_norms, strict=True)]
        for name in ("e1", "t_const", "t_rel", "t_sqrt", "shift"):
            setattr(self, f"_{name}", np.array([getattr(b, name) for b in self.bounds]))

    def screen_margins(self, kth: np.ndarray) -> np.ndarray:
        """`_Bounds.screen_margin` for every query at once (kth: one screening score per query)."""
        exact = np.maximum(kth + self._shift + self._e1, 0.0)
        return 2 * self._e1 + self._t_const + self._t_rel * exact + self._t_sqrt * np.sqrt(exact)


def _score_block(plan: _Plan, view: SegmentView, start: int, stop: int) -> np.ndarray:
    """Screening scores (rows x queries, float32, C order) of rows [start, stop) of one segment; dead rows NaN."""
    data = view.data[start:stop]
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    # One query: a matrix-vector product, bound by memory bandwidth. Several: one matrix product.
    scores = (data @ plan.scaled[0])[:, None] if len(plan.scaled) == 1 else data @ plan.scaled_t
    if "l2" in plan.slices:
        scores[:, plan.slices["l2"]] += view.sq_norms32[start:stop, None]
    if "cosine" in plan.slices:
        sl = plan.slices["cosine"]
        scores[:, sl] *= view.inv_norms32[start:stop, None]
        if view.zero is not None:  # NaN in pgvector, after every number: a score after every real one
            scores[np.ix_(np.flatnonzero(view.zero[start:stop]), np.arange(sl.start, sl.stop))] = ZERO_SCORE
    if view.alive is not None:
        scores[~view.alive[start:stop]] = np.nan  # NaN never passes a threshold
    return scores


def _threshold32(threshold: np.ndarray) -> np.ndarray:
    """float32 thresholds never below the float64 ones (a row exactly at the bound is kept)."""
    t32 = threshold.astype(np.float32)
    return np.where(t32 < threshold, np.nextafter(t32, np.float32(np.inf)), t32)


def _true_positions(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True entries of a C-contiguous bool array, mostly False: eight at a time first."""
    flat = mask.reshape(-1)
    whole = len(flat) // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    found = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    found = found[flat[found]]
    return np.concatenate([found, whole + np.flatnonzero(flat[whole:])]) if whole < len(flat) else found


def _screen(plan: _Plan, snap: Snapshot, block_rows: int, segments: Callable[[], int | None]) -> _Candidates:
    """Pass 1: every row whose float32 score can still make the top-k, per query, over the segments that
    `segments()` hands out (None: no more).

    The first block sets each query's threshold (its k-th score plus margin); after that a block costs one
    comparison pass, and the candidates are pruned (tightening the thresholds) whenever they pile up.
    """
    cands = _Candidates()
    ks = plan.ks
    b = len(ks)
    threshold = np.full(b, np.inf)
    budget = int(2 * ks.sum()) + 1024
    first = True
    while (si := segments()) is not None:
        view = snap.segments[si]
        n = view.count
        step = n if b == 1 and view.data.dtype == np.float32 else block_rows
        for start in range(0, n, step):
            stop = min(n, start + step)
            scores = _score_block(plan, view, start, stop)
            if first:
                first = False
                m = stop - start
                kth_idx = np.minimum(ks, m) - 1
                parted = np.partition(scores, np.unique(kth_idx), axis=0)  # NaN (dead) sorts last
                kth = parted[kth_idx, np.arange(b)].astype(np.float64)
                threshold = np.where(ks <= m, kth + plan.screen_margins(kth), np.inf)
                threshold = np.where(np.isnan(threshold), np.inf, threshold)
            mask = scores <= _threshold32(threshold)[None, :]  # NaN (dead rows) never passes
            found = _true_positions(mask)
            if len(found):
                rows, queries = np.divmod(found, b)
                cands.add(queries, si, rows + start, scores.reshape(-1)[found])
                if cands.pending > budget:
                    threshold = cands.prune(plan, threshold)
    cands.prune(plan, threshold)
    return cands


# -- threads ----------------------------------------------------------------------------------------------
def _openblas_set_threads() -> Callable[[int], None] | None:
    """openblas_set_num_threads of the OpenBLAS numpy loaded, if that is what it loaded (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                return setter
    return None


class _Pool:
    """The search threads. OpenBLAS's own threads busy-wait for each other and collapse when a core is taken
    by something else (the proxy's event loop, PostgreSQL, other processes): measured 4x slower on a busy
    2-core machine. So OpenBLAS is set to one thread and the rows are shared out here instead, segment by
    segment, which also balances itself when one core is busy. Without OpenBLAS (MKL, Accelerate...) the
    library's own threading is kept and the search runs in one thread."""

    _lock = threading.Lock()
    _instance: _Pool | None = None

    def __init__(self) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        setter = _openblas_set_threads() if cpus > 1 else None
        if setter is not None:
            setter(1)
        self.threads = cpus if setter is not None else 1
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pgcutover-knn-rows") \
            if self.threads > 1 else None

    @classmethod
    def get(cls) -> _Pool:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Pool()
            return cls._instance


def _share(pool: _Pool, workers: int, work: Callable[[], T]) -> list[T]:
    """Run `work` on `workers` threads, this one among them, and return what each returned. Work comes from a
    shared queue, so a helper that has not started when this thread is done is cancelled, not waited for (no
    deadlock when the pool is busy). This thread working too means one thread to wake instead of two: an idle
    vCPU took up to 3 ms to start its part, a fifth of a search."""
    helpers = [pool.executor.submit(work) for _ in range(workers - 1)] if pool.executor is not None else []
    done = [work()]
    return done + [helper.result() for helper in helpers if not helper.cancel()]


def _screen_all(plan: _Plan, snap: Snapshot, block_rows: int, threads: int | None) -> _Candidates:
    pool = _Pool.get()
    threads = min(threads or pool.threads, pool.threads, len(snap.segments))
    counter = itertools.count()  # next() on it is atomic under the GIL: a shared work queue of segments

    def segments() -> int | None:
        i = next(counter)
        return i if i < len(snap.segments) else None

    if threads <= 1 or pool.executor is None:
        return _screen(plan, snap, block_rows, segments)
    parts = _share(pool, threads, lambda: _screen(plan, snap, block_rows, segments))
    merged = parts[0]
    for part in parts[1:]:
        merged.add_all(part)
    merged.prune(plan, np.full(len(plan.ks), np.inf))
    return merged


def _gather(snap: Snapshot, segs: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.empty((len(rows), snap.dims), dtype=np.float64)
    keys = np.empty(len(rows), dtype=snap.segments[0].keys.dtype if snap.segments else object)
    for si in np.unique(segs):
        at = np.flatnonzero(segs == si)
        view = snap.segments[si]
        vectors[at] = view.data[rows[at]]
        keys[at] = view.keys[rows[at]]
    return vectors, keys


def _exact(metric: str, x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact (float64) distance as pgvector defines it; l2 returned squared."""
    if metric == Metric.L2:
        diff = x - q[None, :]
        return np.einsum("ij,ij->i", diff, diff)
    dots = x @ q
    if metric == Metric.IP:
        return -dots
    norms = np.sqrt(np.einsum("ij,ij->i", x, x)) * math.sqrt(float(q @ q))
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.clip(dots / norms, -1.0, 1.0)  # pgvector clamps; 0/0 stays NaN as in pgvector
    return 1.0 - sim


def _exact_all(snap: Snapshot, metric: str, q: np.ndarray, segs: np.ndarray, rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances and keys of the given rows, a bounded number of vectors at a time."""
    distances = np.empty(len(rows), dtype=np.float64)
    keys = np.empty(len(rows), dtype=snap.segments[0].keys.dtype if snap.segments else object)
    for start in range(0, len(rows), REFINE_ROWS):
        part = slice(start, start + REFINE_ROWS)
        vectors, keys[part] = _gather(snap, segs[part], rows[part])
        distances[part] = _exact(metric, vectors, q)
    return distances, keys


def _final_cut(exact: np.ndarray, k: int, bound: _Bounds) -> np.ndarray:
    """Indices to return, nearest first: all within the tolerance of the exact k-th, NaN rows only to fill k."""
    finite = np.flatnonzero(~np.isnan(exact))
    if len(finite) > k:
        kth = float(np.partition(exact[finite], k - 1)[k - 1])
        finite = finite[exact[finite] <= kth + bound.tolerance(kth)]
    chosen = finite[np.argsort(exact[finite], kind="stable")]
    if len(chosen) < k:  # NaN (cosine of a zero vector) sorts after every number in PostgreSQL
        chosen = np.concatenate([chosen, np.flatnonzero(np.isnan(exact))[:k - len(chosen)]])
    return chosen


def _refine(plan: _Plan, snap: Snapshot, cands: _Candidates) -> list[SearchResult]:
    """Pass 2: float64 distances of the screened rows, cut at the exact k-th plus the tolerance."""
    edges = np.searchsorted(cands.query, np.arange(len(plan.queries) + 1))
    results: list[SearchResult] = []
    for b, query in enumerate(plan.queries):
        mine = slice(edges[b], edges[b + 1])
        exact, keys = _exact_all(snap, query.metric, plan.q64[b], cands.seg[mine], cands.row[mine])
        chosen = _final_cut(exact, int(plan.ks[b]), plan.bounds[b])
        distances = exact[chosen]
        results.append(SearchResult(keys[chosen], np.sqrt(distances) if query.metric == Metric.L2 else distances,
                                    query.k))
    return results


def _any_rows(snap: Snapshot, query: Query) -> SearchResult:
    """Cosine against a zero query: pgvector's distance is NaN for every row, so any k rows are the answer."""
    keys: list[np.ndarray] = []
    for view in snap.segments:
        if sum(len(k) for k in keys) >= query.k:
            break
        keys.append(view.keys if view.alive is None else view.keys[view.alive])
    chosen = np.concatenate(keys)[:query.k] if keys else np.empty(0, dtype=object)
    return SearchResult(chosen, np.full(len(chosen), np.nan), query.k)


def search_snapshot(snap: Snapshot, queries: Sequence[Query], *, block_rows: int = BLOCK_ROWS,
                    threads: int | None = None) -> list[SearchResult]:
    """Answer a batch of queries over one snapshot (blocking; run it in a worker thread). `threads` caps the
    search threads (default: one per CPU when OpenBLAS can be kept single-threaded)."""
    for query in queries:
        if query.vector.shape != (snap.dims,):
            raise ValueError(f"query has {query.vector.shape[0]} dimensions, the store {snap.dims}")
    results: list[SearchResult | None] = [None] * len(queries)
    regular = []
    bounded = []  # int8 storage (no float32 row to refine with) and l1: candidate sets from bounds
    for i, query in enumerate(queries):
        if query.metric == Metric.COSINE and not query.vector.any():
            results[i] = _any_rows(snap, query)
        elif snap.dtype == np.int8 or query.metric == Metric.L1:
            bounded.append(i)
        else:
            regular.append(i)
    if bounded:
        from pgcutover.fallback.screening import search_bounds  # it imports this module

        for i, answer in zip(bounded, search_bounds(snap, [queries[i] for i in bounded], threads=threads),
                             strict=True):
            results[i] = answer
    if regular:
        plan = _Plan(snap, [queries[i] for i in regular])
        cands = _screen_all(plan, snap, block_rows, threads)
        for pos, answer in zip(plan.order, _refine(plan, snap, cands), strict=True):
            results[regular[pos]] = answer
    return [r for r in results if r is not None]


@dataclass(slots=True)
class _Pending:
    store: LegacyStore
    query: Query
    future: asyncio.Future[SearchResult]
    submitted: float


class BatchSearcher:
    """Gathers concurrent searches into one matrix product per store, run in one worker thread.

    `window` (seconds) lets the worker wait a little for more queries after the first; 0 takes whatever is
    queued when it becomes free, which already batches under load without delaying a lone query.
    """

    def __init__(self, *, max_batch: int = 64, window: float = 0.0, block_rows: int = BLOCK_ROWS) -> None:
        self.max_batch = max_batch
        self.window = window
        self.block_rows = block_rows
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcutover-knn")
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches had it

    async def search(self, store: LegacyStore, vector: np.ndarray | Sequence[float], k: int,
                     metric: str) -> SearchResult:
        """Top-k legacy rows nearest to `vector` (ask for a larger k to widen when filters drop rows)."""
        query = Query(np.asarray(vector, dtype=np.float32).reshape(-1), k, metric)
        if store.dims is not None and query.vector.shape[0] != store.dims:
            raise ValueError(f"query has {query.vector.shape[0]} dimensions, {store.route.table} has {store.dims}")
        loop = asyncio.get_running_loop()
        pending = _Pending(store, query, loop.create_future(), time.perf_counter())
        self._queue.append(pending)
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="pgcutover-knn-batcher")
        return await pending.future

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.window:
                await asyncio.sleep(self.window)
            while self._queue:
                batch = [p for p in self._queue[:self.max_batch] if not p.future.done()]
                del self._queue[:self.max_batch]
                groups: dict[int, list[_Pending]] = {}
                for pending in batch:
                    groups.setdefault(id(pending.store), []).append(pending)
                for group in groups.values():
                    await self._answer(loop, group)

    async def _answer(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        store = group[0].store
        snap = store.snapshot()
        try:
            results = await loop.run_in_executor(
                self._executor, lambda: search_snapshot(snap, [p.query for p in group], block_rows=self.block_rows))
        except Exception as exc:  # a bad query or a bug: every caller of the batch hears about it
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self.batch_sizes[len(group)] += 1
        labels = {"table": store.route.table}
        metrics.BATCH_SIZE.labels(**labels).observe(len(group))
        now = time.perf_counter()
        for pending, result in zip(group, results, strict=True):
            metrics.SEARCH_SECONDS.labels(**labels).observe(now - pending.submitted)
            if not pending.future.done():
                pending.future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._queue:
            if not pending.future.done():
                pending.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)
