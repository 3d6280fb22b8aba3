"""The arithmetic of shadow readiness: comparing two top-k answers, intervals, percentiles, the verdict.

Pure functions, no I/O: the mirror (proxy/mirror.py) feeds them key lists, the report (proxy/report.py) feeds
them aggregates read from `pgcutover.mirror_samples`.

Statistics used, and why:
- recall@k of a candidate against a reference = |candidate ∩ reference| / |reference|, per query (k is the
  number of rows the reference returned; a query whose reference returned no rows has no recall);
- rank agreement = Kendall's tau-a over the keys both answers hold, in [-1, 1] (1: same order);
- the 95% interval of a mean recall is the normal approximation over queries, mean ± 1.96·s/√n, clamped to
  [0, 1]. Queries are the independent units (the keys within one answer are not), so this is the honest
  interval; it is reported, and the verdict compares the mean itself with `min_recall`;
- error-rate intervals are Wilson score intervals (they stay meaningful at 0 errors);
- percentiles are linear interpolation between order statistics, as PostgreSQL's percentile_cont.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Route

Z95 = 1.959963984540054
MIN_EXACT_SAMPLES = 30  # below this many brute-force comparisons the exact recall is shown, not judged


@dataclass(frozen=True, slots=True)
class Comparison:
    """One candidate answer judged against a reference answer of the same query."""

    k: int  # rows in the reference
    returned: int  # rows in the candidate
    recall: float | None  # None when the reference is empty
    rank_agreement: float | None  # None with fewer than two common keys
    distance_mean_abs: float | None  # over common keys; None when there are none
    distance_max_abs: float | None


def compare(reference: Sequence[tuple[Hashable, float | None]],
            candidate: Sequence[tuple[Hashable, float | None]]) -> Comparison:
    """Judge `candidate` (key, distance) rows against `reference` rows, both nearest first."""
    ref_keys = [key for key, _ in reference]
    cand_keys = [key for key, _ in candidate]
    diffs = distance_differences(dict(reference), dict(candidate))
    return Comparison(
        k=len(ref_keys), returned=len(cand_keys), recall=recall_at_k(ref_keys, cand_keys),
        rank_agreement=rank_agreement(ref_keys, cand_keys),
        distance_mean_abs=diffs[0], distance_max_abs=diffs[1],
    )


def recall_at_k(reference: Sequence[Hashable], candidate: Sequence[Hashable]) -> float | None:
    """Share of the reference's keys that the candidate also returned.

    >>> recall_at_k([1, 2, 3, 4], [2, 1, 9, 4])
    0.75
    >>> recall_at_k([], [1]) is None
    True
    """
    wanted = set(reference)
    if not wanted:
        return None
    return len(wanted & set(candidate)) / len(wanted)


def rank_agreement(reference: Sequence[Hashable], candidate: Sequence[Hashable]) -> float | None:
    """Kendall's tau-a between the two orders of the keys both lists hold.

    >>> rank_agreement([1, 2, 3], [1, 2, 3])
    1.0
    >>> rank_agreement([1, 2, 3], [3, 2, 1])
    -1.0
    >>> rank_agreement([1, 2, 3, 4], [1, 3, 2, 9])
    0.3333333333333333
    """
    ref_pos = _first_positions(reference)
    cand_pos = _first_positions(candidate)
    common = [key for key in ref_pos if key in cand_pos]
    if len(common) < 2:
        return None
    concordant = discordant = 0
    for i in range(len(common)):
        for j in range(i + 1, len(common)):
            a, b = common[i], common[j]
            product = (ref_pos[a] - ref_pos[b]) * (cand_pos[a] - cand_pos[b])
            if product > 0:
                concordant += 1
            elif product < 0:
                discordant += 1
    pairs = len(common) * (len(common) - 1) // 2
    return (concordant - discordant) / pairs


def _first_positions(keys: Sequence[Hashable]) -> dict[Hashable, int]:
    positions: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, i)
    return positions


def distance_differences(reference: dict[Hashable, float | None],
                         candidate: dict[Hashable, float | None]) -> tuple[float | None, float | None]:
    """(mean, max) absolute difference of the distances the two answers give the same key.

    >>> distance_differences({1: 0.5, 2: 1.0}, {1: 0.5, 2: 1.25, 3: 2.0})
    (0.125, 0.25)
    """
    diffs = [abs(float(reference[k]) - float(candidate[k])) for k in reference
             if k in candidate and reference[k] is not None and candidate[k] is not None]
    if not diffs:
        return None, None
    return sum(diffs) / len(diffs), max(diffs)


# -- summaries ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"


def mean_interval(n: int, mean: float | None, sd: float | None, lo: float = 0.0, hi: float = 1.0) -> Interval | None:
    """Normal-approximation 95% interval of a mean from its sample size, mean and sample standard deviation.

    >>> mean_interval(100, 0.9, 0.1).text()
    '0.900 [0.880, 0.920] (n=100)'

    """
    if n <= 0 or mean is None:
        return None
    half = Z95 * (sd or 0.0) / math.sqrt(n) if n > 1 else hi - lo
    return Interval(mean, max(lo, mean - half), min(hi, mean + half), n)


def interval_of(values: Sequence[float]) -> Interval | None:
    """`mean_interval` of raw values."""
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean_interval(n, mean, sd)


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion.

    >>> [round(x, 4) for x in wilson(0, 100)]
    [0.0, 0.037]
    """
    if n <= 0:
        return None
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between order statistics (PostgreSQL's percentile_cont).

    >>> percentile([1, 2, 3, 4], 0.5)
    2.5
    >>> percentile([5.0], 0.99)
    5.0
    """
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds."""

    n: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class RouteSummary:
    """What the mirror learned about one route over a period: the input of the verdict."""

    route: str
    samples: int  # mirrored comparisons attempted on both targets
    compared: int  # of which both answered and the primary returned rows (recall is defined)
    recall: Interval | None  # shadow vs primary
    recall_exact_shadow: Interval | None  # shadow vs brute force
    recall_exact_primary: Interval | None  # primary vs brute force
    rank_agreement: float | None
    distance_mean_abs: float | None
    primary: Latency
    shadow: Latency
    primary_errors: int
    shadow_errors: int  # failures of the shadow where the primary answered: the shadow's fault

    @property
    def latency_ratio(self) -> float | None:
        """Shadow p95 over primary p95."""
        if self.primary.p95 is None or self.shadow.p95 is None or self.primary.p95 <= 0:
            return None
        return self.shadow.p95 / self.primary.p95

    @property
    def shadow_error_rate(self) -> float | None:
        return self.shadow_errors / self.samples if self.samples else None

    @property
    def primary_error_rate(self) -> float | None:
        return self.primary_errors / self.samples if self.samples else None


READY = "ready"
INSUFFICIENT = "insufficient data"


def verdict(summary: RouteSummary, route: Route) -> str:
    """`ready`, `not ready: <reasons>` or `insufficient data: <why>` against the route's thresholds.

    The point estimates decide (the report shows their intervals beside them): recall of the shadow against
    the primary must reach `min_recall`; when there are at least MIN_EXACT_SAMPLES brute-force comparisons, the
    shadow's recall against the truth must reach `min_recall` or be no worse than the primary's own; the
    shadow's p95 latency may be at most `max_latency_ratio` times the primary's; the share of mirrored
    queries that failed on the shadow alone may be at most `max_error_rate`.
    """
    s = summary
    if s.samples == 0:
        return f"{INSUFFICIENT}: no mirrored samples (is `mirror` > 0 on this route?)"
    reasons = []
    error_rate = s.shadow_error_rate or 0.0
    if s.samples >= route.min_samples and error_rate > route.max_error_rate:
        reasons.append(f"shadow error rate {error_rate:.2%} ({s.shadow_errors}/{s.samples}) > max_error_rate "
                       f"{route.max_error_rate:.2%}")
    if s.compared < route.min_samples:
        if reasons:
            return "not ready: " + "; ".join(reasons)
        return f"{INSUFFICIENT}: {s.compared} of min_samples {route.min_samples} comparisons"
    if s.recall is not None and s.recall.mean < route.min_recall:
        reasons.append(f"recall vs primary {s.recall.mean:.3f} (95% CI {s.recall.low:.3f}-{s.recall.high:.3f}) "
                       f"< min_recall {route.min_recall:g}")
    exact, primary_exact = s.recall_exact_shadow, s.recall_exact_primary
    if exact is not None and exact.n >= MIN_EXACT_SAMPLES and exact.mean < route.min_recall \
            and (primary_exact is None or exact.mean < primary_exact.mean):
        against = f" and the primary's {primary_exact.mean:.3f}" if primary_exact is not None else ""
        reasons.append(f"recall vs exact {exact.mean:.3f} < min_recall {route.min_recall:g}{against}")
    ratio = s.latency_ratio
    if ratio is not None and ratio > route.max_latency_ratio:
        reasons.append(f"p95 latency {_ms(s.shadow.p95)} vs primary {_ms(s.primary.p95)}: ratio {ratio:.2f} > "
                       f"max_latency_ratio {route.max_latency_ratio:g}")
    return "not ready: " + "; ".join(reasons) if reasons else READY


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"
