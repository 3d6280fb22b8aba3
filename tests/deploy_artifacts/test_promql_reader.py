"""The PromQL reader and the contract checker that the dashboard and alert tests rely on."""

from __future__ import annotations

import pytest

from .contract import check_expr
from .promql import MetricRef, PromQLError, references


def test_selectors_with_matchers_ranges_and_functions() -> None:
    expr = ('sum by (route) (rate(pgcutover_queries_total{target="shadow",outcome="error"}[5m]))'
            ' / sum by (route) (rate(pgcutover_queries_total{target="shadow"}[5m])) > 0.01')
    assert references(expr) == [
        MetricRef("pgcutover_queries_total", (("target", "=", "shadow"), ("outcome", "=", "error")), True, "rate"),
        MetricRef("pgcutover_queries_total", (("target", "=", "shadow"),), True, "rate"),
    ]


def test_label_lists_keywords_subqueries_and_grafana_variables_are_not_metrics() -> None:
    expr = ('min by (route) (pgcutover_shadow_recall{route=~"$route"}) < 0.95 and on (route) '
            "sum without (instance) (increase(pgcutover_mirror_samples_total[$__rate_interval])) >= 100 "
            "or changes(max(pgcutover_routing_generation)[2m:30s]) > 0 offset 5m")
    assert [(r.name, r.has_range, r.function) for r in references(expr)] == [
        ("pgcutover_shadow_recall", False, "min"),
        ("pgcutover_mirror_samples_total", True, "increase"),
        ("pgcutover_routing_generation", False, "max"),
    ]


def test_aggregation_with_trailing_by_clause() -> None:
    refs = references("sum(rate(pgcutover_bytes_total[1m])) by (direction)")
    assert [(r.name, r.function) for r in refs] == [("pgcutover_bytes_total", "rate")]


@pytest.mark.parametrize("bad", [
    "sum(rate(pgcutover_queries_total[5m])",      # unclosed
    "rate(pgcutover_queries_total[5m]))",         # unbalanced
    "histogram_quantle(0.9, x_bucket)",          # unknown function
    'x{route~="a"}',                              # bad matcher operator
    "x[5 minutes]",                               # bad range
    "x + $route",                                 # a Grafana variable outside a string or range
])
def test_reader_refuses(bad: str) -> None:
    with pytest.raises(PromQLError):
        references(bad)


@pytest.mark.parametrize(("expr", "problem"), [
    ("rate(pgcutover_queries_totl[5m])", "not a pgcutover metric"),
    ("sum(pgcutover_queries_total)", "needs a range"),
    ("delta(pgcutover_queries_total[5m])", "counters take rate"),
    ("rate(pgcutover_migration_percent[5m])", "not gauges"),
    ('rate(pgcutover_queries_total{target="fallback-merged"}[5m])', "target is one of"),
    ('pgcutover_shadow_recall{target="shadow"}', "has no label 'target'"),
    ("histogram_quantile(0.9, rate(pgcutover_fallback_search_seconds[5m]))", "not a pgcutover metric"),
    ("1 + 1", "names no metric"),
])
def test_checker_catches(expr: str, problem: str) -> None:
    problems = check_expr(expr)
    assert any(problem in p for p in problems), problems


def test_checker_accepts_correct_use() -> None:
    assert check_expr(
        "histogram_quantile(0.95, sum by (route, le) (rate(pgcutover_fallback_search_seconds_bucket[5m])))"
        ' + max by (route) (delta(pgcutover_migration_percent[30m])) + up{job="pgcutover"}'
        ' + sum(rate(pgcutover_query_duration_seconds_bucket{target="shadow",le="0.1",instance="a"}[5m]))'
    ) == []
