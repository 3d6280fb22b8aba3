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
    from pgcutover.core.config import Route

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
    """Seconds. p95_low/p95_high: a distribution-free 95% interval of the p95 (order statistics), when known."""

    n: int
    p50: float | None
    p95: float | None
    p99: float | None
    p95_low: float | None = None
    p95_high: float | None = None


def quantile_ranks(q: float, n: int) -> tuple[float, float]:
    """The quantile levels whose order statistics bound a 95% interval of the q-quantile of n values
    (normal approximation of the binomial rank), clamped to [0, 1].

    >>> [round(x, 3) for x in quantile_ranks(0.95, 400)]
    [0.929, 0.971]
    """
    if n <= 0:
        return 0.0, 1.0
    half = Z95 * math.sqrt(q * (1 - q) / n)
    return max(0.0, q - half), min(1.0, q + half)


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
    span_s: float | None = None  # seconds from the first to the last sample of the period (for the sample rate)

    @property
    def latency_ratio(self) -> float | None:
        """Shadow p95 over primary p95."""
        if self.primary.p95 is None or self.shadow.p95 is None or self.primary.p95 <= 0:
            return None
        return self.shadow.p95 / self.primary.p95

    @property
    def latency_ratio_interval(self) -> tuple[float, float] | None:
        """A conservative 95% interval of the p95 ratio: the shadow's p95 bounds over the primary's."""
        p, sh = self.primary, self.shadow
        if None in (p.p95_low, p.p95_high, sh.p95_low, sh.p95_high) or not p.p95_low or not p.p95_high:
            return None
        return sh.p95_low / p.p95_high, sh.p95_high / p.p95_low  # type: ignore[operator]

    @property
    def compared_per_s(self) -> float | None:
        """Comparisons a second over the period (what the mirror achieves), None with under two samples."""
        if not self.span_s or self.compared < 2:
            return None
        return self.compared / self.span_s

    @property
    def shadow_error_rate(self) -> float | None:
        return self.shadow_errors / self.samples if self.samples else None

    @property
    def primary_error_rate(self) -> float | None:
        return self.primary_errors / self.samples if self.samples else None


READY = "ready"
NOT_READY = "not ready"
INSUFFICIENT = "insufficient data"


def verdict(summary: RouteSummary, route: Route) -> str:
    """`ready`, `not ready: <reasons>` or `insufficient data: <why, and how many more samples>`.

    Sequential: the evidence decides as soon as it is decisive, whatever min_samples says.
    - not ready as soon as the 95% interval of the recall against the primary lies entirely below min_recall,
      or the p95 latency ratio's interval entirely above max_latency_ratio, or the shadow error rate's Wilson
      interval entirely above max_error_rate; with at least MIN_EXACT_SAMPLES brute-force comparisons, also
      when the shadow's recall against the truth is entirely below min_recall and below the primary's own;
    - ready only with min_samples comparisons and intervals that clear the thresholds: recall's low end at
      least min_recall, the latency ratio's high end at most max_latency_ratio (the point estimate when no
      interval is known), the error rate at most max_error_rate;
    - insufficient data otherwise, with the number of further comparisons the recall interval needs at the
      current spread, and how long that takes at the current sample rate.
    """
    s = summary
    if s.samples == 0 and not route.shadow_table:
        return f"{INSUFFICIENT}: no shadow_table on this route, nothing to compare"
    if s.samples == 0:
        if route.mirror <= 0 and route.mirror_exact <= 0:
            return f"{INSUFFICIENT}: no mirrored samples: set mirror > 0 on this route to compare the shadow"
        return (f"{INSUFFICIENT}: no mirrored samples yet (mirror = {route.mirror:g}%): no similarity query on this "
                f"route reached the proxy in the period, or every one was dropped (SHOW REPORT, dropped_here)")
    reasons = _decisive(s, route)
    if reasons:
        return f"{NOT_READY}: " + "; ".join(reasons)
    waiting = _undecided(s, route)
    if waiting:
        return f"{INSUFFICIENT}: " + "; ".join(waiting)
    return READY


def _decisive(s: RouteSummary, route: Route) -> list[str]:
    reasons = []
    errors = wilson(s.shadow_errors, s.samples)
    if errors is not None and errors[0] > route.max_error_rate:
        reasons.append(f"shadow error rate {s.shadow_error_rate:.2%} ({s.shadow_errors}/{s.samples}) > "
                       f"max_error_rate {route.max_error_rate:.2%} (95% CI {errors[0]:.2%}-{errors[1]:.2%})")
    if s.recall is not None and s.recall.high < route.min_recall:
        reasons.append(f"recall vs primary {s.recall.mean:.3f} (95% CI {s.recall.low:.3f}-{s.recall.high:.3f}) "
                       f"< min_recall {route.min_recall:g}")
    exact, primary_exact = s.recall_exact_shadow, s.recall_exact_primary
    if exact is not None and exact.n >= MIN_EXACT_SAMPLES and exact.high < route.min_recall \
            and (primary_exact is None or exact.high < primary_exact.mean):
        against = f" and the primary's {primary_exact.mean:.3f}" if primary_exact is not None else ""
        reasons.append(f"recall vs exact {exact.mean:.3f} < min_recall {route.min_recall:g}{against}")
    ratio, interval = s.latency_ratio, s.latency_ratio_interval
    if ratio is not None and (interval[0] if interval else ratio) > route.max_latency_ratio:
        ci = f" (95% CI {interval[0]:.2f}-{interval[1]:.2f})" if interval else ""
        reasons.append(f"p95 latency {_ms(s.shadow.p95)} vs primary {_ms(s.primary.p95)}: ratio {ratio:.2f}{ci} > "
                       f"max_latency_ratio {route.max_latency_ratio:g}")
    return reasons


def _undecided(s: RouteSummary, route: Route) -> list[str]:
    waiting = []
    if s.compared < route.min_samples:
        waiting.append(f"{s.compared} of min_samples {route.min_samples} comparisons")
    if s.recall is not None and s.recall.low < route.min_recall:
        waiting.append(f"recall vs primary {s.recall.mean:.3f} (95% CI {s.recall.low:.3f}-{s.recall.high:.3f}) "
                       f"includes min_recall {route.min_recall:g}")
    interval = s.latency_ratio_interval
    if interval is not None and interval[1] > route.max_latency_ratio:
        waiting.append(f"p95 ratio {s.latency_ratio:.2f} (95% CI {interval[0]:.2f}-{interval[1]:.2f}) includes "
                       f"max_latency_ratio {route.max_latency_ratio:g}")
    if s.shadow_error_rate is not None and s.shadow_error_rate > route.max_error_rate:
        waiting.append(f"shadow error rate {s.shadow_error_rate:.2%} above max_error_rate "
                       f"{route.max_error_rate:.2%} but not yet significantly")
    if waiting:
        waiting.append(_more_needed(s, route))
    return waiting


def samples_needed(s: RouteSummary, route: Route) -> int | None:
    """Comparisons in all for the recall interval to clear min_recall (either way) at the current mean and
    spread, and at least min_samples; None when the mean sits on the threshold (no count decides it)."""
    needed = float(route.min_samples)
    if s.recall is not None and s.recall.n > 1:
        gap = abs(s.recall.mean - route.min_recall)
        sd = (s.recall.high - s.recall.low) / (2 * Z95) * math.sqrt(s.recall.n)  # back from the half-width
        if sd > 0:
            if gap < 1e-9:
                return None
            needed = max(needed, (Z95 * sd / gap) ** 2)
    return math.ceil(needed)


def _more_needed(s: RouteSummary, route: Route) -> str:
    total = samples_needed(s, route)
    if total is None:
        return "the recall sits on min_recall: more samples will not decide it"
    more = max(total - s.compared, 1)
    rate = s.compared_per_s
    noun = "comparison" if more == 1 else "comparisons"
    if rate:
        return f"about {more:,} more {noun} needed (~{_duration_text(more / rate)} at {rate * 60:,.1f}/min)"
    return f"about {more:,} more {noun} needed"


def _duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"
