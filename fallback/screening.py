"""Candidate sets from bounds: the search of an int8 store (every metric) and of l1 on any store.

An int8 store keeps no float32 row, so nothing here can rank rows exactly; the merged query does that on the
server. What this module returns is a *candidate set* with a proof attached.

Bounds. Every row x is stored as x^ = offset + scale * codes (fallback.formats.quantize_int8) with residual norms
r2 >= |x - x^|_2 and r1 >= |x - x^|_1. For a query q:

    x.q = offset * sum(q) + scale * (codes . q) + r.q,     |r.q| <= r2 |q|_2          (Cauchy-Schwarz)
    |x - q|_1 = |x^ - q|_1 + e,                            |e| <= r1                  (triangle inequality)

`codes . q` is one float32 matrix product per block of rows (codes upcast to float32, exact), its rounding bounded by
gamma_D * |codes|_2 |q|_2 (any summation order, FMA or not); the query is first scaled by a power of two so nothing
overflows, and products below float32's normal range add at most D * 127 * 2^-148. The rest is float64, whose own
rounding is covered by a relative slack of 1e-11. So each row gets a lower bound L and an upper bound U of its
exact distance (l2 squared, cosine 1 - cos, ip -x.q, l1), in "score" units.

Candidates. Let T(e) bound how far PostgreSQL's float32 distance can be from the exact one e (fallback.knn._bounds:
its own rounding, and one ulp per element between a value decoded here and the server's), f(e) = e - T(e), U_k the
k-th smallest U, P = U_k + T(U_k). The candidates are the rows with f(L) <= P + T(P). Then

- every row that is not a candidate has server distance >= f(exact) >= f(L) > P + T(P) >= P;
- the k rows with the smallest U are candidates and have server distance <= U + T(U) <= P;
- so every row of the exact top-k is a candidate (its exact distance is <= U_k), and P (the guard bound the merged
  query needs) is a number every other row is at least at, and at least k candidates are within.

Results are ordered by U; `distances` are the server-distance upper bounds U + T(U) in SQL units (l2: the square
root), capped at the bound, so `distances[k-1]` is P, as `fallback.merge.guard_bound` reads it. When more than
`max_candidates` rows qualify (adversarial ties), the set is cut to the nearest by U and the bound lowered to the
smallest f(L) of the rows left out: still a valid bound, the merged query's guard then covers the rest.

Memory per query is O(k) plus the rows that genuinely tie within the bounds; the per-block temporaries are shared
by the whole batch.

Kernel (issue 16). With NumKong installed (fallback.kernels) the products codes . q are exact int8 x int8 SIMD
dot products instead of a float32 upcast per block: the query is quantized in two levels, q = step1 c1 + step2 c2
+ resid. Level 1 (codes . c1) runs over every row; the query's level-1 residual (~1% of |q|) widens its "coarse"
bounds about twice. Level 2 (codes . c2) runs only for rows that can still pass, and leaves only the row's own
quantization error. A row keeps the larger L and the smaller U of every pair it gets; all are proven, so the
argument above is unchanged.

Between the scan and any bound sits a pre-test (`_pretest_scores`, `_pretest_thresholds`): per (row, query) a
score of two or three operations (ints scale/|x| + offset/|x| sum(q)/step1 for cosine) against a per-query
threshold, the coarse L <= limit test solved for the score with every per-row error term replaced by its
maximum over the segment (fallback.formats.Int8Terms). Only the rows that pass get bounds.

One query (fewer than PACK_MIN): scan first, then screen (`_scan_screen`). The search threads run the kernel
and the scores for a round of ROUND_ROWS rows and nothing else; then one thread seeds the limit from the k-th
largest score (k distinct rows score at least that, so their U is at most `_score_upper` of it), refines it from
the level-2 bounds of the best-scored survivors when thousands pass (random data), and bounds the survivors of
the whole round in one call. A candidate's U is also capped by its score's bound, so the reported guard bound
never exceeds what the limit assumed. Batches of PACK_MIN queries and more go block by block through a packed
query matrix (`_kernel_block_bounds`), the limit tightened from the k-th coarse U seen so far.

Measured (bench/fallback.py, 203,727 rows, cosine, k = 11, p50 against the float32 memory-bandwidth bound of the
same run): clustered data 0.37x at 1536 dims and 0.27x at 3072 (17 ms: 17.6x faster than the seed's 300 ms);
the level-1 scan alone is ~0.3x, it reads a quarter of the bytes at ~85% of numpy's streaming rate. Random
data's bounds are looser (all distances concentrate), so more rows need level 2; it stays below the float32
path's time (see the bench and the README for the figures of a run).

Why not prune whole clusters of rows, or bound distances through a PCA prefix (measured on the bench's clustered
set, 20,000 x 1536, a mixture of 2,000 Gaussians with the spread of text embeddings): the within-cluster noise is
high-dimensional, so |q - x|^2 ~ |q - c|^2 + |x - c|^2 rather than (|q - c| - |x - c|)^2. With the true cluster
centres as pivots and each row's own radius, the triangle-inequality bound |q - c| - |x - c| ruled out 0% of the
rows for the 11 nearest (distance ~1.13, radii ~0.57); the top 256 principal components hold 39% of the
variance, so a projection bound leaves most of the distance in the residual term. Both would only add work.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pgcutover.core.enums import Metric
from pgcutover.fallback import formats as f
from pgcutover.fallback import kernels
from pgcutover.fallback.knn import F16_ABS, U16, Query, SearchResult, _bounds, _gamma, _Pool, _share

if TYPE_CHECKING:
    from pgcutover.fallback.store import SegmentView, Snapshot

SLACK = 1e-11  # relative slack for float64 rounding (D <= 16,000: D * 2^-53 < 2e-12)
ZERO_SCORE = 10.0  # cosine bounds of a zero row (NaN in pgvector, after every number): beyond every real one (<= 2)
GEMM_ROWS = 512  # rows upcast and multiplied at a time for one query (the float32 copy stays in cache; twice that
# for a batch, whose matrix product is compute-bound: measured best 512 and 1024)
POST_ROWS = 8192  # rows whose bounds are computed at a time (amortises numpy's per-call cost)
L1_ROWS = 1024  # rows of float64 differences at a time for l1
KERNEL_ROWS = 32768  # rows per exact int8 product (fallback.kernels) for one query: a whole segment
KERNEL_CELLS = 65536  # (row, query) bounds computed at a time: temporaries stay in cache (a fresh multi-MB
# temporary page-faults on every call: measured 1.8x slower for 21,504 rows x 32 queries)


def max_candidates(k: int) -> int:
    return max(2 * k, k + 2000)


@dataclass(slots=True)
class _Cands:
    """(query, segment, row, L, U) of screened rows; L and U in score units."""

    query: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seg: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    row: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    low: np.ndarray = field(default_factory=lambda: np.empty(0))
    up: np.ndarray = field(default_factory=lambda: np.empty(0))
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    pending: int = 0

    def add(self, query: np.ndarray, seg: np.ndarray, row: np.ndarray, low: np.ndarray, up: np.ndarray) -> None:
        self.parts.append((query, seg, row, low, up))
        self.pending += len(query)

    def add_all(self, other: _Cands) -> None:
        other.collect()
        self.add(other.query, other.seg, other.row, other.low, other.up)

    def collect(self) -> None:
        if self.parts:
            arrays = [(self.query, self.seg, self.row, self.low, self.up), *self.parts]
            self.query, self.seg, self.row, self.low, self.up = (np.concatenate(c) for c in zip(*arrays,
                                                                                                  strict=True))
            self.parts.clear()

    def prune(self, plan: _Plan, limit: np.ndarray) -> np.ndarray:
        """Sort by (query, U), tighten each query's limit on L from its k-th U, drop what lies beyond."""
        self.collect()
        order = np.lexsort((self.up, self.query))
        self.query, self.seg, self.row, self.low, self.up = (a[order] for a in (self.query, self.seg, self.row,
                                                                               self.low, self.up))
        counts = np.bincount(self.query, minlength=plan.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        full = counts >= plan.ks
        kth = np.full(plan.size, np.inf)
        kth[full] = self.up[starts[full] + plan.ks[full] - 1]
        limit = np.minimum(limit, plan.low_limit(kth))
        keep = self.low <= limit[self.query]
        self.query, self.seg, self.row, self.low, self.up = (a[keep] for a in (self.query, self.seg, self.row,
                                                                              self.low, self.up))
        self.pending = len(self.query)
        return limit


class _Plan:
    """Per-query constants of a batch; one float32 matrix product serves every query that is not l1."""

    def __init__(self, snap: Snapshot, queries: Sequence[Query]) -> None:
        self.snap = snap
        self.size = len(queries)
        self.metrics = [q.metric for q in queries]
        self.ks = np.array([q.k for q in queries], dtype=np.int64)
        self.q64 = np.stack([q.vector for q in queries]).astype(np.float64)
        self.qn = np.sqrt(np.einsum("ij,ij->i", self.q64, self.q64))
        self.q_l1 = np.abs(self.q64).sum(axis=1)
        self.sumq = self.q64.sum(axis=1)
        # Matrix-product queries grouped by metric, so each metric's columns are one slice of the product.
        self.gemm = np.array(sorted((i for i, m in enumerate(self.metrics) if m != "l1"),
                                    key=lambda i: ("l2", "cosine", "ip").index(self.metrics[i])), dtype=np.int64)
        self.groups: list[tuple[str, slice, np.ndarray]] = []  # (metric, columns of the product, query indices)
        at = 0
        for metric in (Metric.L2, Metric.COSINE, Metric.IP):
            mine = self.gemm[[self.metrics[i] == metric for i in self.gemm]] if len(self.gemm) else self.gemm
            if len(mine):
                self.groups.append((metric, slice(at, at + len(mine)), mine))
                at += len(mine)
        self.l1 = np.array([i for i, m in enumerate(self.metrics) if m == "l1"], dtype=np.int64)
        # q = q' * 2^e with max |q'| in [0.5, 1): codes . q' cannot overflow float32 (|.| <= 127 D).
        exps = np.frexp(np.abs(self.q64).max(axis=1))[1]
        self.qscale = np.ldexp(1.0, exps)
        scaled = np.ldexp(self.q64, -exps[:, None]).astype(np.float32)
        self.q_t = np.ascontiguousarray(scaled[self.gemm].T)  # (dims, G)
        # The SIMD kernel's exact int8 products (fallback.kernels), the queries quantized in two levels.
        self.kernel: kernels.QueryCodes | None = None
        if len(self.gemm) and not len(self.l1) and snap.dtype == np.int8 and kernels.available():
            self.kernel = kernels.QueryCodes(self.q64[self.gemm])
        self.gamma = _gamma(snap.dims)
        self.tiny = snap.dims * 127 * 2.0 ** -148  # underflow of q' and of the products, in q' units
        bounds = [_bounds(m, float(n), snap) for m, n in zip(self.metrics, self.qn, strict=True)]
        self.t_const = np.array([b.t_const for b in bounds])
        self.t_rel = np.array([b.t_rel for b in bounds])
        self.t_sqrt = np.array([b.t_sqrt for b in bounds])  # l2 (squared units): |stored - server row| terms
        # f(e) = e - T(e) = (1 - r) e - s sqrt(e) - c falls until sqrt(e) = s / (2 (1 - r)), then rises: rows are
        # compared through f(max(L, e_min)), the smallest f over every distance the row can have.
        self.e_min = (self.t_sqrt / (2 * (1 - self.t_rel))) ** 2

    def tolerance(self, e: np.ndarray, query: np.ndarray | slice | int = slice(None)) -> np.ndarray:
        e = np.maximum(e, 0.0)
        with np.errstate(invalid="ignore"):  # an infinite distance (dead row, k beyond rows): NaN, never kept
            return self.t_const[query] + self.t_rel[query] * e + self.t_sqrt[query] * np.sqrt(e)

    def lowest_server(self, low: np.ndarray, b: int) -> np.ndarray:
        """Smallest server distance of rows whose exact distance is >= low (query b)."""
        e = np.maximum(low, self.e_min[b])
        return e - self.tolerance(e, b)

    def low_limit(self, kth_up: np.ndarray) -> np.ndarray:
        """Limit on L from the k-th U: a row is kept while f(max(L, e_min)) < P + T(P), i.e. L < the larger root."""
        with np.errstate(invalid="ignore", over="ignore"):
            p = kth_up + self.tolerance(kth_up)
            target = p + self.tolerance(p) + self.t_const  # (1 - r) e - s sqrt(e) < target
            one_r = 1 - self.t_rel
            root = (self.t_sqrt + np.sqrt(self.t_sqrt ** 2 + 4 * one_r * np.maximum(target, 0.0))) / (2 * one_r)
            limit = np.where(self.t_sqrt > 0, root * root, target / one_r)
        return np.where(np.isnan(limit), np.inf, limit)

    def guard(self, kth_up: float, b: int) -> float:
        return float(kth_up + self.tolerance(np.array(kth_up), b))


Rows = slice | np.ndarray  # rows of a segment: a range, or indices


def _dot_bounds(plan: _Plan, view: SegmentView, at: Rows, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x.q estimate and its error bound for rows `at` and the matrix-product queries (rows x G)."""
    quant = view.quant
    assert quant is not None
    g = plan.gemm
    off, scale = quant.offset[at, None], quant.scale[at, None]
    dot = raw * (scale * plan.qscale[g]) + off * plan.sumq[g]
    err = (quant.resid_l2[at, None] + plan.gamma * scale * quant.codes_l2[at, None]) * plan.qn[g] \
        + (plan.tiny * scale) * plan.qscale[g] + SLACK * (np.abs(off) + 127 * scale) * plan.q_l1[g]
    return dot, err


def _prefilter(plan: _Plan, view: SegmentView, start: int, stop: int, raw: np.ndarray, limit: np.ndarray
               ) -> np.ndarray | None:
    """Rows of [start, stop) (relative) whose bounds are worth computing, or None for all of them.

    A cheap lower bound of L per (row, query), from per-row maxima over the batch of the terms that are not the
    product itself: L >= c_r - raw * a_r * b_q. Rows whose cheap bound is above every query's limit cannot be
    candidates. Cosine and ip only (l2's |q|^2 differs too much between queries to share a row maximum)."""
    if not np.isfinite(limit).any() or any(metric == Metric.L2 for metric, _, _ in plan.groups):
        return None
    quant = view.quant
    assert quant is not None
    at = slice(start, stop)
    scale, off = quant.scale[at], np.abs(quant.offset[at])
    spread = quant.resid_l2[at] + plan.gamma * scale * quant.codes_l2[at]  # times |q|: |x.q - estimate|, most of it
    keep = np.zeros(stop - start, dtype=bool)
    for metric, cols, queries in plan.groups:
        qn, qs, sumq, q_l1 = plan.qn[queries], plan.qscale[queries], np.abs(plan.sumq[queries]), plan.q_l1[queries]
        if metric == Metric.COSINE:
            nx = np.sqrt(view.sq_norms[at])
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(nx > 0, 1 / nx, 0.0)
                beta = qs / qn
                c = 1 - (spread + off * np.max(sumq / qn) + plan.tiny * scale * np.max(beta)
                         + SLACK * (off + 127 * scale) * np.max(q_l1 / qn)) * inv - 4 * SLACK
            c = np.where(nx > 0, c, ZERO_SCORE)  # a zero row's bounds are ZERO_SCORE
            alpha = scale * inv
            margin = 1e-9
        else:  # ip
            beta = qs
            gamma = spread * np.max(qn) + off * np.max(sumq) + plan.tiny * scale * np.max(qs) \
                + SLACK * (off + 127 * scale) * np.max(q_l1)
            c = -gamma
            alpha = scale
            margin = 1e-9 * (gamma + 127 * scale * np.max(q_l1))  # float64 rounding of this very test
        cheap = c[:, None] - raw[:, cols] * (alpha[:, None] * beta[None, :])
        lim = limit[queries]
        keep |= (cheap - np.broadcast_to(np.asarray(margin), (stop - start,))[:, None]
                 <= lim + 1e-9 * np.abs(lim)).any(axis=1)
    picked = np.flatnonzero(keep)
    return None if len(picked) > (stop - start) // 2 else picked


def _kernel_dot_bounds(plan: _Plan, view: SegmentView, at: Rows, ints1: np.ndarray,
                       ints2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x.q estimate and its error bound from the exact products of the codes with the query's level-1 codes
    (and level-2 codes when given), rows x G, float64.

    x.q = offset sum(q) + scale (codes . q) + r.q and codes . q = step1 (codes . codes1) [+ step2 (codes . codes2)]
    + codes . resid, so |x.q - estimate| <= |r| |q| + scale |codes| |resid| (Cauchy-Schwarz twice) plus the
    float64 rounding of the estimate (SLACK, relative, on every term)."""
    quant = view.quant
    kernel = plan.kernel
    assert quant is not None and kernel is not None
    g = plan.gemm
    off, scale = quant.offset[at, None], quant.scale[at, None]
    prod = ints1 * (scale * kernel.step1)
    size = np.abs(prod)
    if ints2 is not None:
        prod2 = ints2 * (scale * kernel.step2)
        prod += prod2
        size += np.abs(prod2)
    dot = prod + off * plan.sumq[g]
    err = quant.resid_l2[at, None] * plan.qn[g] \
        + (scale * quant.codes_l2[at, None]) * (kernel.resid1 if ints2 is None else kernel.resid2) \
        + SLACK * ((np.abs(off) + 127 * scale) * plan.q_l1[g] + size)
    return dot, err


def _gemm_bounds(plan: _Plan, view: SegmentView, at: Rows, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, U) in score units, rows x G."""
    return _score_bounds(plan, view, at, *_dot_bounds(plan, view, at, raw))


def _score_bounds(plan: _Plan, view: SegmentView, at: Rows, dot: np.ndarray, err: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(L, U) in score units, rows x G, from x.q estimates and their error bounds."""
    low = np.empty_like(dot)
    up = np.empty_like(dot)
    sq = view.sq_norms[at, None]
    for metric, cols, queries in plan.groups:
        d, e = dot[:, cols], err[:, cols]
        if metric == Metric.IP:
            np.subtract(-d, e, out=low[:, cols])
            np.add(-d, e, out=up[:, cols])
        elif metric == Metric.L2:
            qq = plan.qn[queries] ** 2
            est = sq - 2 * d + qq
            e2 = 2 * e + SLACK * (sq + qq + 2 * np.abs(d))
            np.maximum(est - e2, 0.0, out=low[:, cols])
            np.add(est, e2, out=up[:, cols])
        else:  # cosine
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / (np.sqrt(sq) * plan.qn[queries])  # inf for a zero row, replaced below
                cos = d * inv
                ec = e * inv + SLACK * (1.0 + np.abs(cos))
                np.maximum(1.0 - cos - ec, 0.0, out=low[:, cols])
                np.minimum(1.0 - cos + ec, 2.0, out=up[:, cols])
            if view.zero is not None:
                zero = view.zero[at]
                low[zero, cols] = ZERO_SCORE
                up[zero, cols] = ZERO_SCORE
    return low, up


def _l1_bounds(plan: _Plan, view: SegmentView, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, U) of l1 queries, rows x len(plan.l1), in float64 from the stored rows."""
    n = stop - start
    low = np.empty((n, len(plan.l1)))
    up = np.empty((n, len(plan.l1)))
    for s0 in range(start, stop, L1_ROWS):
        s1 = min(stop, s0 + L1_ROWS)
        if view.quant is not None:
            quant = view.quant
            x = quant.offset[s0:s1, None] + quant.scale[s0:s1, None] * quant.codes[s0:s1].astype(np.float64)
            resid = quant.resid_l1[s0:s1]
        else:
            x = view.data[s0:s1].astype(np.float64)
            # float16 storage: the row differs from its float32 source by a rounding per element.
            resid = U16 * np.abs(x).sum(axis=1) + x.shape[1] * F16_ABS if view.data.dtype == np.float16 \
                else np.zeros(s1 - s0)
        x_l1 = np.abs(x).sum(axis=1)
        for col, b in enumerate(plan.l1.tolist()):
            est = np.abs(x - plan.q64[b]).sum(axis=1)
            e = resid + SLACK * (x_l1 + plan.q_l1[b])
            low[s0 - start:s1 - start, col] = np.maximum(est - e, 0.0)
            up[s0 - start:s1 - start, col] = est + e
    return low, up


class _Running:
    """The k smallest coarse U seen so far per query (kernel path): a valid k-th U for the limit, tightened on
    every block instead of only when the candidates are pruned (early blocks would otherwise pass far more rows
    to the fine bounds than the final limit lets through)."""

    def __init__(self, plan: _Plan) -> None:
        self.kmax = int(plan.ks.max())
        self.best = np.full((self.kmax, plan.size), np.inf)
        self.cols = np.arange(plan.size)
        self.ks = plan.ks
        self.worst = np.full(plan.size, np.inf)  # the largest of each query's kmax best: nothing above it counts
        self.kth = np.full(plan.size, np.inf)

    def add(self, up: np.ndarray) -> np.ndarray:
        """Merge a block's U (rows x queries); returns each query's k-th smallest U so far (inf: fewer than k)."""
        rows, cols = np.nonzero(up < self.worst[None, :])  # after the first blocks, few
        if not len(rows):
            return self.kth
        order = np.argsort(cols, kind="stable")
        rows, cols = rows[order], cols[order]
        counts = np.bincount(cols, minlength=len(self.cols))
        at = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
        new = np.full((int(counts.max()), len(self.cols)), np.inf)
        new[at, cols] = up[rows, cols]
        both = np.concatenate([self.best, new])
        self.best = np.partition(both, self.kmax - 1, axis=0)[:self.kmax]
        self.worst = self.best.max(axis=0)
        self.kth = np.sort(self.best, axis=0)[self.ks - 1, self.cols]
        return self.kth


ROUND_ROWS = 1 << 18  # rows a single scan runs the kernel over before it screens them (see _scan_screen)
REFINE_ROWS = 256  # rows per query whose level-2 bounds tighten the limit before thousands more get them
SEED_ROWS = 64  # rows per query whose coarse bounds seed a block's limit when it has none yet (any k rows' U is
# a valid k-th U; the rows the pre-test scores highest are near the nearest)


def _pretest_scores(plan: _Plan, view: SegmentView, start: int, ints: np.ndarray, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """Per (row, query): a number the coarse bounds' L is decreasing in, from two or three operations a cell.

    x.q's coarse estimate is scale step1 ints + offset sum(q), so, divided by step1 (and by |x| for cosine):
    cosine  ints (scale / |x|) + (offset / |x|) sum(q) / step1
    ip      ints scale + offset sum(q) / step1
    l2      ints scale + offset sum(q) / step1 - |x|^2 / (2 step1)
    Columns in the kernel's order (plan.gemm); written to `out` when given."""
    assert view.quant is not None and view.terms is not None and plan.kernel is not None
    at = slice(start, start + len(ints))
    quant, terms, kernel = view.quant, view.terms, plan.kernel
    score = np.empty_like(ints) if out is None else out
    for metric, cols, queries in plan.groups:
        sigma = plan.sumq[queries] / kernel.step1[cols]
        if metric == Metric.COSINE:
            scale, offset = terms.scale_by_norm[at, None], terms.offset_by_norm[at, None]
        else:
            scale, offset = quant.scale[at, None], quant.offset[at, None]
        part = score[:, cols]
        np.multiply(ints[:, cols], scale, out=part)
        part += offset * sigma
        if metric == Metric.L2:
            part -= view.sq_norms[at, None] * (0.5 / kernel.step1[cols])
    return score


def _pretest_thresholds(plan: _Plan, caps: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per query (kernel order): rows whose `_pretest_scores` is below cannot have a coarse L <= limit.

    Each is the coarse L <= limit test solved for the score, with every per-row error term replaced by its maximum
    over the segment (formats.Int8Terms.caps) and the float64 rounding of both sides, and of the coarse bounds'
    own arithmetic, covered by a relative margin far above it (1e-10 of every magnitude involved; D <= 16,000
    terms of at most 127 * 127 each). -inf (every row passes) for a query of norm 0 or a limit that is not
    finite."""
    assert plan.kernel is not None
    kernel = plan.kernel
    top = 127.0 * 127.0 * plan.snap.dims  # |ints| <= top
    out = np.full(len(plan.gemm), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for metric, cols, queries in plan.groups:
            qn, lim, sumq, q_l1 = plan.qn[queries], limit[queries], np.abs(plan.sumq[queries]), plan.q_l1[queries]
            step, resid1 = kernel.step1[cols], kernel.resid1[cols]
            sigma = sumq / step
            if metric == Metric.COSINE:
                most = top * caps[f.CAP_COS_SCALE] + caps[f.CAP_COS_OFFSET] * sigma  # >= |score| (sans l2)
                wide = most * step / qn  # >= |cos estimate|
                slack = SLACK * (1 + 2 * wide + caps[f.CAP_COS_SIZE] * q_l1 / qn)
                rhs = (1 - lim - caps[f.CAP_COS_RESID] - caps[f.CAP_COS_SPREAD] * resid1 / qn - slack) * (qn / step)
                margin = 1e-10 * (most + (3 + np.abs(lim) + wide) * qn / step + np.abs(rhs))
            else:
                most = top * caps[f.CAP_SCALE] + caps[f.CAP_OFFSET] * sigma
                err = caps[f.CAP_RESID] * qn + caps[f.CAP_SPREAD] * resid1 \
                    + SLACK * (caps[f.CAP_SIZE] * q_l1 + most * step)
                if metric == Metric.IP:
                    rhs = (-lim - err) / step
                    margin = 1e-10 * (most + (np.abs(lim) + err) / step + np.abs(rhs))
                else:  # l2
                    qq = qn * qn
                    slack = SLACK * (caps[f.CAP_SQ] + qq + 2 * most * step)
                    rhs = (qq - lim - 2 * err - slack) / (2 * step)
                    most = most + caps[f.CAP_SQ] / (2 * step)
                    margin = 1e-10 * (most + (qq + np.abs(lim) + 2 * err + slack) / (2 * step) + np.abs(rhs))
            thr = rhs - margin
            out[cols] = np.where((qn > 0) & np.isfinite(lim) & np.isfinite(thr), thr, -np.inf)
    return out


def _passing(score: np.ndarray, thr: np.ndarray) -> np.ndarray:
    if score.shape[1] == 1:
        return np.flatnonzero(score[:, 0] >= thr[0])
    return np.flatnonzero((score >= thr[None, :]).any(axis=1))


def _coarse(plan: _Plan, view: SegmentView, rows: np.ndarray, ints: np.ndarray, reorder: np.ndarray | None,
            ints2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of `rows` (absolute) from their level-1 products `ints` (rows x queries in kernel order), and from
    the level-2 ones too when given, in query order; dead rows (NaN, inf)."""
    low, up = _score_bounds(plan, view, rows, *_kernel_dot_bounds(plan, view, rows, ints, ints2))
    if reorder is not None:
        low, up = low[:, reorder], up[:, reorder]
    if view.alive is not None:
        dead = ~view.alive[rows]
        low[dead] = np.nan
        up[dead] = np.inf
    return low, up


def _kernel_block_bounds(plan: _Plan, view: SegmentView, start: int, stop: int, limit: np.ndarray,
                         running: _Running) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_block_bounds` through the SIMD kernel: exact int8 x int8 products with the query's level-1 codes for
    every row; a pre-test of a few operations per row (`_pretest_scores` against `_pretest_thresholds`) keeps
    the rows that can pass the limit; those get coarse bounds, and the ones whose coarse L passes get the
    level-2 products too (only the row's own quantization error left, as on the numpy path). Each is a valid
    pair of bounds: a row keeps the larger L and the smaller U. The limit is first tightened from the k-th
    coarse U seen so far (any k rows' U is a valid k-th U: those rows pass every limit derived from it, so they
    stay candidates); a query without one yet gets it from the coarse bounds of the SEED_ROWS rows it scores
    highest. Also returns the tightened limit."""
    assert plan.kernel is not None and view.quant is not None
    codes = view.quant.codes
    ints = plan.kernel.dots(codes[start:stop])
    n = len(ints)
    reorder = _reorder(plan)
    score = _pretest_scores(plan, view, start, ints)
    open_cols = np.flatnonzero(~np.isfinite(limit[plan.gemm]))
    seed = np.empty(0, dtype=np.int64)
    if len(open_cols) and n > SEED_ROWS:
        seed = np.unique(np.argpartition(-score[:, open_cols], SEED_ROWS - 1, axis=0)[:SEED_ROWS].ravel())
        _, up = _coarse(plan, view, start + seed, ints[seed], reorder)
        limit = np.minimum(limit, plan.low_limit(running.add(up)))
    assert view.terms is not None
    sub = _passing(score, _pretest_thresholds(plan, view.terms.caps, limit))
    if not len(sub):
        return sub, np.empty((0, plan.size)), np.empty((0, plan.size)), limit
    return _survivor_bounds(plan, view, start, sub, ints[sub], limit, running, seed)


def _reorder(plan: _Plan) -> np.ndarray | None:
    """Columns back in query order from the kernel's (plan.gemm), or None when they are in it already."""
    if len(plan.gemm) == plan.size and bool((plan.gemm == np.arange(plan.size)).all()):
        return None
    return np.argsort(plan.gemm)


def _survivor_bounds(plan: _Plan, view: SegmentView, start: int, sub: np.ndarray, ints: np.ndarray,
                     limit: np.ndarray, running: _Running, counted: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coarse bounds of the pre-test's survivors `sub` (rows relative to start; `ints` their level-1 products),
    the limit tightened from them (`counted`: rows whose U `running` has already), then level-2 bounds for the
    rows whose coarse L passes. Returns (rows, L, U, limit) as `_kernel_block_bounds`."""
    assert plan.kernel is not None and view.quant is not None
    reorder = _reorder(plan)
    low, up = _coarse(plan, view, start + sub, ints, reorder)
    # rows counted already would count twice: a k-th U could then be one row's
    limit = np.minimum(limit, plan.low_limit(running.add(up[~np.isin(sub, counted)] if len(counted) else up)))
    picked = np.flatnonzero((low <= limit[None, :]).any(axis=1))
    if not len(picked):
        return picked, low[:0], up[:0], limit
    picked_rows = sub[picked]
    low, up = _fine(plan, view, start + picked_rows, ints[picked], low[picked], up[picked], reorder)
    return picked_rows, low, up, limit


def _fine(plan: _Plan, view: SegmentView, rows: np.ndarray, ints: np.ndarray, low: np.ndarray, up: np.ndarray,
          reorder: np.ndarray | None, ints2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Level-2 bounds of `rows` (absolute; `ints`, `low`, `up` their level-1 products and coarse bounds), each
    row keeping the larger L and the smaller U of the two pairs; dead rows (NaN, inf)."""
    fine_low, fine_up = _fine_bounds(plan, view, rows, ints, reorder, ints2)
    low, up = np.fmax(low, fine_low), np.fmin(up, fine_up)
    if view.alive is not None:
        dead = ~view.alive[rows]
        low[dead] = np.nan  # fmax above would have taken the number
        up[dead] = np.inf
    return low, up


def _fine_bounds(plan: _Plan, view: SegmentView, rows: np.ndarray, ints: np.ndarray, reorder: np.ndarray | None,
                 ints2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Level-2 bounds of `rows` (`_coarse`'s), the level-2 products computed here unless given."""
    assert plan.kernel is not None and view.quant is not None
    if ints2 is None:
        ints2 = plan.kernel.dots(view.quant.codes[rows], level=1)
    return _coarse(plan, view, rows, ints, reorder, ints2)


def _block_bounds(plan: _Plan, view: SegmentView, start: int, stop: int, buf: np.ndarray | None,
                  limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, L, U): rows (relative to start) whose bounds were computed, and their bounds, rows x queries; the
    rows left out cannot pass `limit`. Dead rows: (NaN, +inf)."""
    n = stop - start
    picked = np.arange(n)
    if len(plan.gemm):
        assert view.quant is not None and buf is not None, "only l1 searches a float store by bounds"
        raw = np.empty((n, len(plan.gemm)), dtype=np.float32)
        codes = view.quant.codes
        # One query: a matrix-vector product with a 1-D vector (a (dims, 1) matrix is measured 1.6x slower).
        q, out = (plan.q_t[:, 0], raw[:, 0]) if len(plan.gemm) == 1 else (plan.q_t, raw)
        step = GEMM_ROWS if len(plan.gemm) == 1 else 2 * GEMM_ROWS
        for s0 in range(start, stop, step):
            s1 = min(stop, s0 + step)
            m = s1 - s0
            np.copyto(buf[:m], codes[s0:s1], casting="unsafe")  # int8 -> float32: exact
            np.matmul(buf[:m], q, out=out[s0 - start:s1 - start])
        pick = _prefilter(plan, view, start, stop, raw, limit) if not len(plan.l1) else None
        if pick is not None:
            picked, raw = pick, raw[pick]
        low = np.empty((len(picked), plan.size))
        up = np.empty((len(picked), plan.size))
        low[:, plan.gemm], up[:, plan.gemm] = _gemm_bounds(
            plan, view, slice(start, stop) if pick is None else start + pick, raw)
    else:
        low = np.empty((n, plan.size))
        up = np.empty((n, plan.size))
    if len(plan.l1):
        low[:, plan.l1], up[:, plan.l1] = _l1_bounds(plan, view, start, stop)
    if view.alive is not None:
        dead = ~view.alive[start + picked]
        low[dead] = np.nan  # never passes a limit, not even an infinite one
        up[dead] = np.inf
    return picked, low, up


def _screen(plan: _Plan, snap: Snapshot, segments: Callable[[], int | None]) -> _Cands:
    cands = _Cands()
    limit = np.full(plan.size, np.inf)
    running = _Running(plan) if plan.kernel is not None else None
    # pending (query, row) entries before a prune (40 bytes each): the kernel path tightens the limit per block
    # anyway, there pruning only bounds memory
    budget = int(2 * plan.ks.sum()) + (65536 if running is not None else 4096)
    buf = np.empty((2 * GEMM_ROWS, snap.dims), dtype=np.float32) if len(plan.gemm) and running is None else None
    first = True
    step = max(1, min(KERNEL_ROWS, KERNEL_CELLS // plan.size)) if running is not None else POST_ROWS
    while (si := segments()) is not None:
        view = snap.segments[si]
        for start in range(0, view.count, step):
            stop = min(view.count, start + step)
            if running is not None:
                picked, low, up, limit = _kernel_block_bounds(plan, view, start, stop, limit, running)
            else:
                picked, low, up = _block_bounds(plan, view, start, stop, buf, limit)
            if first and len(picked):  # every row that can pass the block's own k-th U was returned
                first = False
                m = len(picked)
                kth_idx = np.minimum(plan.ks, m) - 1
                kth = np.partition(up, np.unique(kth_idx), axis=0)[kth_idx, np.arange(plan.size)]
                limit = np.minimum(limit, plan.low_limit(np.where(plan.ks <= m, kth, np.inf)))
            rows, queries = np.nonzero(low <= limit[None, :])
            if len(rows):
                cands.add(queries, np.full(len(rows), si), picked[rows] + start, low[rows, queries],
                          up[rows, queries])
                if cands.pending > budget:
                    limit = cands.prune(plan, limit)
    cands.prune(plan, limit)
    return cands


def _rounds(snap: Snapshot) -> list[list[int]]:
    """Non-empty segments in groups of at most ROUND_ROWS rows (a larger segment alone)."""
    groups: list[list[int]] = []
    rows = ROUND_ROWS
    for si, view in enumerate(snap.segments):
        if not view.count:
            continue
        if rows + view.count > ROUND_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(si)
        rows += view.count
    return groups


def _score_upper(plan: _Plan, caps: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(queries in kernel order, n) scores -> an upper bound of the coarse U of any row whose `_pretest_scores`
    is >= the score (the inverse of `_pretest_thresholds`, with the error terms added instead of taken away);
    decreasing in the score. Not for a zero row with cosine (its U is ZERO_SCORE whatever its score)."""
    assert plan.kernel is not None
    kernel = plan.kernel
    top = 127.0 * 127.0 * plan.snap.dims
    out = np.full(score.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for metric, cols, queries in plan.groups:
            qn, sumq, q_l1 = (v[queries, None] for v in (plan.qn, np.abs(plan.sumq), plan.q_l1))
            step, resid1, got = kernel.step1[cols, None], kernel.resid1[cols, None], score[cols]
            sigma = sumq / step
            if metric == Metric.COSINE:
                most = top * caps[f.CAP_COS_SCALE] + caps[f.CAP_COS_OFFSET] * sigma
                wide = most * step / qn
                slack = SLACK * (1 + 2 * wide + caps[f.CAP_COS_SIZE] * q_l1 / qn)
                up = 1 - got * step / qn + caps[f.CAP_COS_RESID] + caps[f.CAP_COS_SPREAD] * resid1 / qn + slack
                margin = 1e-10 * (3 + wide + np.abs(up))
            else:
                most = top * caps[f.CAP_SCALE] + caps[f.CAP_OFFSET] * sigma
                err = caps[f.CAP_RESID] * qn + caps[f.CAP_SPREAD] * resid1 \
                    + SLACK * (caps[f.CAP_SIZE] * q_l1 + most * step)
                if metric == Metric.IP:
                    up = -got * step + err
                    margin = 1e-10 * (most * step + err + np.abs(up))
                else:  # l2: est = |x|^2 - 2 x.q + |q|^2 = |q|^2 - 2 step1 score
                    qq = qn * qn
                    slack = SLACK * (caps[f.CAP_SQ] + qq + 2 * most * step)
                    up = qq - 2 * step * got + 2 * err + slack
                    margin = 1e-10 * (qq + caps[f.CAP_SQ] + 2 * most * step + 2 * err + np.abs(up))
            bound = up + margin
            out[cols] = np.where((qn > 0) & np.isfinite(bound), bound, np.inf)
    return out


_scratch = threading.local()  # per calling thread: the round's products and scores, reused (fresh multi-MB arrays
# page-fault on every search: measured +2.5 ms of 14)


def _round_buffers(g: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    have = getattr(_scratch, "round", None)
    if have is None or have[0].shape[0] < g or have[0].shape[1] < n:
        shape = (max(g, have[0].shape[0] if have else 0), max(n, have[0].shape[1] if have else 0))
        have = _scratch.round = (np.empty(shape), np.empty(shape))
    return have[0][:g, :n], have[1][:g, :n]


def _chunk_maxima(score: np.ndarray, width: int = 64) -> np.ndarray:
    """(queries, rows) -> (queries, sets): the largest score of each of disjoint sets of `width` rows (rows i,
    i + m, i + 2m... for m = rows // width, the rest one more set): a reduction over the middle axis of a
    (queries, width, m) view runs element-wise over contiguous rows, 3.4x faster than over runs of 64."""
    m = score.shape[1] // width
    parts = [score[:, :m * width].reshape(len(score), width, m).max(axis=1)] if m else []
    if m * width < score.shape[1]:
        parts.append(score[:, m * width:].max(axis=1, keepdims=True))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _scan_round(plan: _Plan, views: list[SegmentView], offsets: np.ndarray, threads: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-1 products and pre-test scores, (queries in kernel order, rows), of every row of `views` (stacked
    at `offsets`), on `threads` search threads taking segments from a shared counter; dead rows score -inf.
    Also the scores' maxima per set of 64 rows (`_chunk_maxima`), zero rows left out for cosine (their U is
    ZERO_SCORE, not what their score says)."""
    assert plan.kernel is not None
    kernel = plan.kernel
    ints, score = _round_buffers(len(plan.gemm), int(offsets[-1]))
    maxima: list[tuple[int, np.ndarray]] = []
    cosine = [cols for metric, cols, _ in plan.groups if metric == Metric.COSINE]
    counter = itertools.count()  # next() on it is atomic under the GIL: a shared queue of segments

    def scan() -> None:
        while (i := next(counter)) < len(views):
            view = views[i]
            part = slice(int(offsets[i]), int(offsets[i + 1]))
            assert view.quant is not None
            kernel.dots_into(view.quant.codes, ints[:, part])
            mine = score[:, part]
            _pretest_scores(plan, view, 0, ints[:, part].T, out=mine.T)
            if view.alive is not None:
                mine[:, ~view.alive] = -np.inf
            if view.zero is not None and cosine:
                mine = mine.copy()
                for cols in cosine:
                    mine[cols, view.zero] = -np.inf
            maxima.append((i, _chunk_maxima(mine)))

    pool = _Pool.get()
    workers = min(threads, len(views))
    _share(pool, workers, scan)
    return ints, score, np.concatenate([m for _, m in sorted(maxima, key=lambda x: x[0])], axis=1)


def _gather(views: list[SegmentView], seg: np.ndarray, rows: np.ndarray) -> SegmentView:
    """The rows (seg[i], rows[i]) of `views` as one segment, with what the bounds read but the codes (one call
    for the survivors of a whole round instead of one per segment: measured 0.5 ms of the 1.3 a round costs
    here; the codes of the rows that need level 2 are read by `_gathered_codes`)."""
    from pgcutover.fallback.store import SegmentView  # it imports fallback.knn, as this module does

    parts = [(views[i], rows[seg == i]) for i in np.unique(seg).tolist()]

    def cat(get: Callable[[SegmentView], np.ndarray | None]) -> np.ndarray:
        return np.concatenate([np.asarray(get(v))[at] for v, at in parts])

    no_codes = np.empty((0, views[0].data.shape[1]), dtype=np.int8)
    quant = f.Int8Rows(no_codes, *(cat(lambda v, name=name: getattr(v.quant, name))  # type: ignore[misc]
                                   for name in ("offset", "scale", "resid_l2", "resid_l1", "codes_l2")))
    alive = cat(lambda v: v.alive if v.alive is not None else np.ones(v.count, dtype=bool))
    zero = cat(lambda v: v.zero if v.zero is not None else np.zeros(v.count, dtype=bool))
    sq = cat(lambda v: v.sq_norms)
    return SegmentView(no_codes, cat(lambda v: v.keys), sq, sq, sq, None if alive.all() else alive,
                       zero if zero.any() else None, quant)


def _gathered_codes(views: list[SegmentView], seg: np.ndarray, rows: np.ndarray) -> np.ndarray:
    codes = np.empty((len(rows), views[0].data.shape[1]), dtype=np.int8)
    for i in np.unique(seg).tolist():
        at = np.flatnonzero(seg == i)
        quant = views[i].quant
        assert quant is not None
        codes[at] = quant.codes[rows[at]]
    return codes


def _kth_smallest(up: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Each column's ks-th smallest value (rows x queries), inf where a column has fewer rows."""
    at = np.minimum(ks, len(up)) - 1
    if not len(up):
        return np.full(len(ks), np.inf)
    kth = np.partition(up, np.unique(at), axis=0)[at, np.arange(len(ks))]
    return np.where(ks <= len(up), kth, np.inf)


def _kth_largest(values: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Per row of (queries, n): its ks-th largest value, -inf where it has fewer."""
    out = np.full(len(values), -np.inf)
    n = values.shape[1]
    for c, k in enumerate(ks.tolist()):
        if k <= n:
            out[c] = np.partition(values[c], n - k)[n - k]
    return out


def _refined_limit(plan: _Plan, views: list[SegmentView], offsets: np.ndarray, ints: np.ndarray,
                   score: np.ndarray, sub: np.ndarray, limit: np.ndarray, reorder: np.ndarray | None) -> np.ndarray:
    """The limit from the level-2 bounds of the SEED_ROWS survivors (`sub`, round rows) each query scores
    highest: any k distinct rows' U is a valid k-th U. Not counted in `running`: they are survivors and will be.
    Random data needs it: the limit from the k-th set maximum's score, widened by segment-wide error caps, let
    15-30% of 203,727 x 3072 rows through the pre-test."""
    m = min(SEED_ROWS, len(sub))
    mine = score[:, sub]
    top = np.argpartition(-mine, m - 1, axis=1)[:, :m] if m < len(sub) else np.arange(len(sub))[None, :]
    seeds = sub[np.unique(top[np.take_along_axis(mine, top, axis=1) > -np.inf])]  # never a dead row
    if not len(seeds):
        return limit
    seg = np.searchsorted(offsets, seeds, side="right") - 1
    rows = seeds - offsets[seg]
    assert plan.kernel is not None
    ints2 = plan.kernel.dots(_gathered_codes(views, seg, rows), level=1)
    _, up = _fine_bounds(plan, _gather(views, seg, rows), np.arange(len(seeds)), ints[:, seeds].T, reorder, ints2)
    return np.minimum(limit, plan.low_limit(_kth_smallest(up, plan.ks)))


def _scan_screen(plan: _Plan, snap: Snapshot, threads: int) -> _Cands:
    """The kernel path for a few queries (fewer than kernels.PACK_MIN): scan first, then screen.

    Per round of segments (ROUND_ROWS rows), the search threads run only the kernel and the pre-test scores,
    all of it large array operations (the GIL stays free for the other thread); then this thread
    - takes the k-th largest of the scores' chunk maxima: k distinct live rows score at least that, so their
      coarse U are at most `_score_upper` of it, a valid k-th U to start the limit from;
    - keeps the rows whose score passes the limit, a few dozen in ~200,000 on clustered data (when thousands
      pass, on random data, the limit is first refined from the level-2 bounds of the best-scored of them);
    - computes their coarse bounds from the products at hand, tightens the limit from their U, and gives the
      rows whose L passes level-2 bounds (exact int8 products with the query's second level; when thousands
      pass, after refining the limit from the REFINE_ROWS of them with the smallest U).
    Per-query costs are paid once a round instead of once a block (they were most of a single search's time
    beside the scan). Memory: two float64 numbers a row of a round per query (4 MB), whatever the table's size,
    in buffers the calling thread reuses."""
    assert plan.kernel is not None
    cands = _Cands()
    limit = np.full(plan.size, np.inf)
    running = _Running(plan)
    reorder = _reorder(plan)
    for group in _rounds(snap):
        views = [snap.segments[si] for si in group]
        offsets = np.concatenate([[0], np.cumsum([v.count for v in views])]).astype(np.int64)
        ints, score, maxima = _scan_round(plan, views, offsets, threads)
        caps = np.max([v.terms.caps for v in views if v.terms is not None], axis=0)
        seeded = np.empty(plan.size)
        seeded[plan.gemm] = _score_upper(plan, caps, _kth_largest(maxima, plan.ks[plan.gemm])[:, None])[:, 0]
        limit = np.minimum(limit, plan.low_limit(seeded))
        sub = _passing(score.T, _pretest_thresholds(plan, caps, limit))
        if len(sub) > 4 * REFINE_ROWS:
            limit = _refined_limit(plan, views, offsets, ints, score, sub, limit, reorder)
            sub = sub[_passing(score[:, sub].T, _pretest_thresholds(plan, caps, limit))]
        if not len(sub):
            continue
        seg = np.searchsorted(offsets, sub, side="right") - 1  # segment (in the round) of each survivor
        rows = sub - offsets[seg]
        gathered = _gather(views, seg, rows)
        every = np.arange(len(sub))
        ints_sub = ints[:, sub].T
        low, up = _coarse(plan, gathered, every, ints_sub, reorder)
        # The seed's k rows have U <= the seeded one only through their scores: keep that bound too, or a looser
        # bound of theirs (it happens: |q| ~ 1e-21) would report a guard bound above what the limit assumed.
        by_score = _score_upper(plan, caps, score[:, sub]).T
        if gathered.zero is not None:
            for metric, cols, _ in plan.groups:
                if metric == Metric.COSINE:
                    by_score[gathered.zero, cols] = np.inf
        np.fmin(up, by_score if reorder is None else by_score[:, reorder], out=up)
        limit = np.minimum(limit, plan.low_limit(running.add(up)))
        picked = np.flatnonzero((low <= limit[None, :]).any(axis=1))
        if len(picked) > 4 * REFINE_ROWS:  # random data: thousands; tighten the limit from level-2 bounds first
            best = np.unique(np.argpartition(up[picked], REFINE_ROWS, axis=0)[:REFINE_ROWS].ravel())
            best = picked[best]
            ints2 = plan.kernel.dots(_gathered_codes(views, seg[best], rows[best]), level=1)
            _, best_up = _fine(plan, gathered, best, ints_sub[best], low[best], up[best], reorder, ints2)
            limit = np.minimum(limit, plan.low_limit(_kth_smallest(best_up, plan.ks)))  # not counted: no twice
            picked = picked[(low[picked] <= limit[None, :]).any(axis=1)]
        if not len(picked):
            continue
        ints2 = plan.kernel.dots(_gathered_codes(views, seg[picked], rows[picked]), level=1)
        low, up = _fine(plan, gathered, picked, ints_sub[picked], low[picked], up[picked], reorder, ints2)
        at, queries = np.nonzero(low <= limit[None, :])
        if len(at):
            cands.add(queries, np.asarray(group)[seg[picked[at]]], rows[picked[at]], low[at, queries],
                      up[at, queries])
        limit = cands.prune(plan, limit)
    cands.prune(plan, limit)
    return cands


def _screen_all(plan: _Plan, snap: Snapshot, threads: int | None) -> _Cands:
    pool = _Pool.get()
    if plan.kernel is not None and plan.size < kernels.PACK_MIN:
        return _scan_screen(plan, snap, min(threads or pool.threads, pool.threads))
    threads = min(threads or pool.threads, pool.threads, len(snap.segments))
    counter = itertools.count()

    def segments() -> int | None:
        i = next(counter)
        return i if i < len(snap.segments) else None

    if threads <= 1 or pool.executor is None:
        return _screen(plan, snap, segments)
    parts = _share(pool, threads, lambda: _screen(plan, snap, segments))
    merged = parts[0]
    for part in parts[1:]:
        merged.add_all(part)
    merged.prune(plan, np.full(plan.size, np.inf))
    return merged


def _keys(snap: Snapshot, segs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    keys = np.empty(len(rows), dtype=snap.segments[0].keys.dtype if snap.segments else object)
    for si in np.unique(segs):
        at = np.flatnonzero(segs == si)
        keys[at] = snap.segments[si].keys[rows[at]]
    return keys


def _result(plan: _Plan, snap: Snapshot, cands: _Cands, b: int, lo: int, hi: int) -> SearchResult:
    """One query's candidates (already sorted by U) as a SearchResult; see the module docstring."""
    k = int(plan.ks[b])
    metric = plan.metrics[b]
    up, low = cands.up[lo:hi], cands.low[lo:hi]
    seg, row = cands.seg[lo:hi], cands.row[lo:hi]
    server_up = up + plan.tolerance(up, b)
    if len(up) >= k:
        bound = plan.guard(float(up[k - 1]), b)
        cap = max_candidates(k)
        if len(up) > cap:  # many rows tie within the bounds: keep the nearest, lower the bound to the others
            dropped = low[cap:]
            bound = min(bound, float(np.min(plan.lowest_server(dropped, b))))
            up, seg, row, server_up = up[:cap], seg[:cap], row[:cap], server_up[:cap]
        server_up = np.minimum(server_up, bound)
    distances = np.sqrt(np.maximum(server_up, 0.0)) if metric == Metric.L2 else server_up
    if metric == Metric.COSINE:
        distances = np.where(up >= ZERO_SCORE, np.nan, distances)
    return SearchResult(_keys(snap, seg, row), distances, k)


def search_bounds(snap: Snapshot, queries: Sequence[Query], *, threads: int | None = None) -> list[SearchResult]:
    """Candidate sets for a batch of queries (blocking); see the module docstring."""
    plan = _Plan(snap, queries)
    cands = _screen_all(plan, snap, threads)
    edges = np.searchsorted(cands.query, np.arange(plan.size + 1))
    return [_result(plan, snap, cands, b, int(edges[b]), int(edges[b + 1])) for b in range(plan.size)]


def candidate_count(results: Sequence[SearchResult]) -> float:
    """Mean candidate-set size (the bench prints it)."""
    return math.fsum(len(r) for r in results) / max(1, len(results))
