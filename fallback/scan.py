"""Every legacy row's distance to one query vector: the exact scan behind the shapes `fallback.knn` does not
search (l1 `<+>`, farthest first) and behind the universal merge that ships every legacy distance.

Distances are computed in float64 from the stored rows, as pgvector defines them (l2 = sqrt(sum (x-q)^2),
cosine = 1 - x.q/(|x||q|), NaN for a zero vector, ip = -x.q, l1 = sum |x-q|). The server computes them in
float32 from its own parse of the legacy value, so it may differ from ours by up to `_tolerance(d)`; the
candidate cut and the bound below leave that margin on both sides, so the merged query's guard argument holds:
every row outside the candidates ranks behind the bound by the server's own arithmetic too.

It reads every row (memory-bandwidth bound, about as fast as the knn screening pass for l1 and slower for the
others), in blocks, in a worker thread: never on the event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pgcutover.core.enums import Metric

if TYPE_CHECKING:
    from pgcutover.fallback.store import Snapshot

U32 = 2.0 ** -24
U16 = 2.0 ** -11
F16_ABS = 2.0 ** -25
BLOCK = 4096  # rows converted to float64 at a time
METRICS = ("l2", "cosine", "ip", "l1")


@dataclass(frozen=True, slots=True)
class Scan:
    keys: np.ndarray  # every alive row of the snapshot
    distances: np.ndarray  # float64, pgvector's definition of the metric (NaN: cosine of a zero vector)
    max_norm: float  # largest |x| (l2 norm), and the largest sum |x_i| (l1 norm), of the rows
    max_l1: float


def scan(snap: Snapshot, vector: np.ndarray, metric: str) -> Scan:
    """Exact distances of every alive row (blocking: run it in a worker thread)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if snap.dtype == np.int8:  # screening codes, not rows: distances from them would be wrong, not exact
        raise ValueError("an int8 store keeps screening codes only: the exact scan needs float32 or float16 rows")
    q = np.asarray(vector, dtype=np.float64).reshape(-1)
    if q.shape[0] != snap.dims:
        raise ValueError(f"query has {q.shape[0]} dimensions, the store {snap.dims}")
    q_norm = math.sqrt(float(q @ q))
    keys: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    max_l1 = 0.0
    for view in snap.segments:
        for start in range(0, view.count, BLOCK):
            rows = slice(start, min(start + BLOCK, view.count))
            x = view.data[rows].astype(np.float64)
            k = view.keys[rows]
            if view.alive is not None:
                alive = view.alive[rows]
                x, k = x[alive], k[alive]
            if not len(k):
                continue
            if metric == Metric.L2:
                diff = x - q[None, :]
                d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            elif metric == Metric.L1:
                d = np.abs(x - q[None, :]).sum(axis=1)
            elif metric == Metric.IP:
                d = -(x @ q)
            else:
                norms = np.sqrt(np.einsum("ij,ij->i", x, x)) * q_norm
                with np.errstate(divide="ignore", invalid="ignore"):
                    d = 1.0 - np.clip((x @ q) / norms, -1.0, 1.0)
            max_l1 = max(max_l1, float(np.abs(x).sum(axis=1).max()))
            keys.append(k)
            parts.append(d)
    key_dtype = snap.segments[0].keys.dtype if snap.segments else np.int64
    return Scan(np.concatenate(keys) if keys else np.empty(0, dtype=key_dtype),
                np.concatenate(parts) if parts else np.empty(0), math.sqrt(snap.max_sq_norm), max_l1)


def tolerance(snap: Snapshot, result: Scan, vector: np.ndarray, metric: str, distance: float) -> float:
    """An upper bound (generous by 4x) of |server's float32 distance - ours| at `distance`."""
    q = np.asarray(vector, dtype=np.float64).reshape(-1)
    q_norm, q_l1 = math.sqrt(float(q @ q)), float(np.abs(q).sum())
    dims = snap.dims
    gamma = dims * U32 / (1 - dims * U32) + 4 * U32
    half = snap.dtype == np.float16
    mx = result.max_norm
    quant = (U16 * mx + F16_ABS * math.sqrt(dims)) if half else 2 * U32 * mx  # |stored row - server's row|
    d = abs(distance) if math.isfinite(distance) else 0.0
    if metric == Metric.L2:
        t = gamma * (d + mx + q_norm) + quant
    elif metric == Metric.L1:
        t = gamma * (d + result.max_l1 + q_l1) + math.sqrt(dims) * quant
    elif metric == Metric.IP:
        t = gamma * mx * q_norm + quant * q_norm
    else:
        min_norm = math.sqrt(snap.min_sq_norm) if math.isfinite(snap.min_sq_norm) and snap.min_sq_norm > 0 else 1.0
        t = 2 * gamma + 8 * U32 + 2 * quant / max(min_norm, 1e-30)
    return 4 * t + 1e-300


def candidates(snap: Snapshot, vector: np.ndarray, asked: int, metric: str, *, farthest: bool,
               cap: int) -> tuple[np.ndarray, float | None]:
    """The legacy candidates and the guard's bound (in the metric's units) for the `asked` nearest rows, or
    farthest with `farthest`: every row left out is, by the server's arithmetic, at distance >= bound (nearest)
    or <= bound (farthest); +Infinity when every row is a candidate, None when unknown (the guard then runs).
    NaN distances (cosine of a zero vector) sort as PostgreSQL sorts NaN: after every number."""
    result = scan(snap, vector, metric)
    d = np.where(np.isnan(result.distances), np.inf, result.distances)
    n = len(d)
    if n <= asked and n <= cap:
        return result.keys, math.inf
    m = min(asked, n)
    dk = float(-np.partition(-d, m - 1)[m - 1]) if farthest else float(np.partition(d, m - 1)[m - 1])
    if not math.isfinite(dk):  # NaN rows at the cut: hand over what fits, let the guard decide
        order = np.argsort(-d if farthest else d, kind="stable")[:cap]
        return result.keys[order], None
    t = tolerance(snap, result, vector, metric, dk)
    if farthest:
        chosen = np.flatnonzero(d >= dk - 3 * t)
        bound = dk - t
        chosen = chosen[np.argsort(-d[chosen], kind="stable")]
    else:
        chosen = np.flatnonzero(d <= dk + 3 * t)
        bound = dk + t
        chosen = chosen[np.argsort(d[chosen], kind="stable")]
    if len(chosen) > cap:
        return result.keys[chosen[:cap]], None
    return result.keys[chosen], bound
