"""The comparison and readiness arithmetic (pure: no database)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcutover.core.config import Route
from pgcutover.proxy.evidence import (
    MIN_EXACT_SAMPLES,
    Interval,
    Latency,
    RouteSummary,
    compare,
    mean_interval,
    percentile,
    rank_agreement,
    recall_at_k,
    verdict,
    wilson,
)

ROUTE = Route(table="public.items", column="embedding", shadow_table="s.items", min_recall=0.95,
              max_latency_ratio=1.5, max_error_rate=0.01, min_samples=100)


def test_compare_identical_answers() -> None:
    rows = [(1, 0.1), (2, 0.2), (3, 0.3)]
    c = compare(rows, rows)
    assert (c.k, c.returned, c.recall, c.rank_agreement, c.distance_mean_abs, c.distance_max_abs) == \
        (3, 3, 1.0, 1.0, 0.0, 0.0)


def test_compare_partial_overlap() -> None:
    reference = [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    candidate = [(2, 0.25), (1, 0.1), (7, 0.35), (8, 0.5)]
    c = compare(reference, candidate)
    assert c.recall == 0.5
    assert c.rank_agreement == -1.0  # the two common keys in swapped order
    assert c.distance_mean_abs == pytest.approx(0.025)
    assert c.distance_max_abs == pytest.approx(0.05)


def test_compare_empty_reference_has_no_recall() -> None:
    c = compare([], [(1, 0.1)])
    assert c.recall is None and c.rank_agreement is None and c.distance_mean_abs is None


def test_duplicate_keys_count_once() -> None:
    assert recall_at_k([1, 1, 2], [1]) == 0.5


@given(st.lists(st.integers(0, 30), max_size=15, unique=True), st.lists(st.integers(0, 30), max_size=15, unique=True))
def test_recall_and_tau_stay_in_range(reference: list[int], candidate: list[int]) -> None:
    recall = recall_at_k(reference, candidate)
    assert recall is None or 0.0 <= recall <= 1.0
    tau = rank_agreement(reference, candidate)
    assert tau is None or -1.0 <= tau <= 1.0
    assert rank_agreement(reference, reference) in (None, 1.0)


def test_kendall_tau_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        keys = list(range(12))
        shuffled = list(rng.permutation(keys))
        concordant = discordant = 0
        for i in range(12):
            for j in range(i + 1, 12):
                a, b = keys[i], keys[j]
                same = (shuffled.index(a) - shuffled.index(b)) * (i - j) > 0
                concordant += same
                discordant += not same
        assert rank_agreement(keys, shuffled) == pytest.approx((concordant - discordant) / 66)


def test_intervals() -> None:
    values = [0.8, 0.9, 1.0, 0.7, 0.95, 0.85]
    interval = mean_interval(len(values), statistics.mean(values), statistics.stdev(values))
    assert interval is not None
    half = 1.959963984540054 * statistics.stdev(values) / math.sqrt(len(values))
    assert interval.mean == pytest.approx(statistics.mean(values))
    assert interval.low == pytest.approx(interval.mean - half)
    assert interval.high == pytest.approx(min(1.0, interval.mean + half))
    assert mean_interval(0, None, None) is None
    single = mean_interval(1, 0.5, None)
    assert single is not None and (single.low, single.high) == (0.0, 1.0)  # one query says nothing of spread
    clamped = mean_interval(4, 0.99, 0.2)
    assert clamped is not None and clamped.high == 1.0


def test_wilson_and_percentiles() -> None:
    low, high = wilson(5, 100)
    assert 0.02 < low < 0.05 < high < 0.12
    assert wilson(0, 0) is None
    assert percentile([], 0.5) is None
    data = list(np.random.default_rng(1).random(101))
    for q in (0.5, 0.95, 0.99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q * 100)))


def summary(samples: int = 200, compared: int | None = None, recall: float = 0.99, p95: tuple = (0.010, 0.012),
            shadow_errors: int = 0, exact: tuple[float, float] | None = None, exact_n: int = 50) -> RouteSummary:
    compared = samples if compared is None else compared
    recall_iv = mean_interval(compared, recall, 0.02)
    exact_shadow = mean_interval(exact_n, exact[0], 0.05) if exact else None
    exact_primary = mean_interval(exact_n, exact[1], 0.05) if exact else None
    return RouteSummary(
        route=ROUTE.table, samples=samples, compared=compared, recall=recall_iv, recall_exact_shadow=exact_shadow,
        recall_exact_primary=exact_primary, rank_agreement=0.9, distance_mean_abs=0.0,
        primary=Latency(samples, p95[0] / 2, p95[0], p95[0] * 2), shadow=Latency(samples, p95[1] / 2, p95[1], p95[1]),
        primary_errors=0, shadow_errors=shadow_errors,
    )


def test_verdict_ready() -> None:
    assert verdict(summary(), ROUTE) == "ready"


def test_verdict_insufficient_data() -> None:
    assert verdict(summary(samples=0), ROUTE).startswith("insufficient data: no mirrored samples")
    assert verdict(summary(samples=99), ROUTE) == ("insufficient data: 99 of min_samples 100 comparisons; "
                                                   "about 1 more comparison needed")
    # enough attempts but too few of them comparable (e.g. the primary returned nothing)
    assert verdict(summary(samples=150, compared=40), ROUTE).startswith("insufficient data: 40 of")


def test_verdict_not_ready_each_reason() -> None:
    low_recall = verdict(summary(recall=0.62), ROUTE)
    assert low_recall.startswith("not ready: recall vs primary 0.620 (95% CI ") and "< min_recall 0.95" in low_recall
    slow = verdict(summary(p95=(0.010, 0.030)), ROUTE)
    assert slow.startswith("not ready: p95 latency 30.00 ms vs primary 10.00 ms: ratio 3.00 > max_latency_ratio 1.5")
    failing = verdict(summary(shadow_errors=5), ROUTE)
    assert failing.startswith("not ready: shadow error rate 2.50% (5/200) > max_error_rate 1.00%")
    both = verdict(summary(recall=0.5, p95=(0.01, 0.05)), ROUTE)
    assert both.count(";") == 1 and "recall vs primary" in both and "ratio 5.00" in both


def test_verdict_errors_decide_even_when_few_answers_compare() -> None:
    text = verdict(summary(samples=120, compared=20, shadow_errors=100), ROUTE)
    assert text.startswith("not ready: shadow error rate")


def test_verdict_against_exact_search() -> None:
    # the shadow finds 0.80 of the true neighbours where the primary finds 0.97: not ready
    worse = verdict(summary(exact=(0.80, 0.97)), ROUTE)
    assert "recall vs exact 0.800 < min_recall 0.95 and the primary's 0.970" in worse
    # both approximate equally (below min_recall) and agree with each other: the shadow is no worse
    assert verdict(summary(exact=(0.90, 0.90)), ROUTE) == "ready"
    # too few exact comparisons to judge
    assert verdict(summary(exact=(0.5, 0.99), exact_n=MIN_EXACT_SAMPLES - 1), ROUTE) == "ready"


def test_interval_text() -> None:
    assert Interval(0.9, 0.85, 0.95, 40).text(2) == "0.90 [0.85, 0.95] (n=40)"
