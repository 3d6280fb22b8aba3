"""The metrics the proxy exports (issue 6, fixed contract) and a PromQL checker for dashboards and alerts.

The dashboard and the alert rules may only name these series: a typo or a renamed metric would otherwise give an
empty panel or an alert that can never fire, and nobody would notice until the night it was needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .promql import MetricRef, references

ROUTE = {"route": None}
TARGETS = ("primary", "shadow", "fallback_merged", "passthrough")

# name -> (type, {label: allowed values or None for free text})
METRICS: dict[str, tuple[str, dict[str, tuple[str, ...] | None]]] = {
    "pgcutover_client_connections": ("gauge", {}),
    "pgcutover_server_connections": ("gauge", {}),
    "pgcutover_client_connections_total": ("counter", {}),
    "pgcutover_bytes_total": ("counter", {"direction": ("from_client", "from_server")}),
    "pgcutover_client_messages_total": ("counter", {}),
    "pgcutover_queries_total": ("counter", {"route": None, "target": TARGETS, "outcome": ("ok", "error")}),
    "pgcutover_query_duration_seconds": ("histogram", {"route": None, "target": TARGETS}),
    "pgcutover_rewrite_decisions_total": ("counter", {"decision": ("rewrite", "passthrough"), "reason": None}),
    "pgcutover_plan_cache_total": ("counter", {"result": ("hit", "miss")}),
    "pgcutover_protocol_errors_total": ("counter", {}),
    "pgcutover_upstream_errors_total": ("counter", {}),
    "pgcutover_cancels_forwarded_total": ("counter", {}),
    "pgcutover_routing_generation": ("gauge", {}),
    "pgcutover_route_split_percent": ("gauge", ROUTE),
    "pgcutover_reload_errors_total": ("counter", {}),
    "pgcutover_migration_percent": ("gauge", ROUTE),
    "pgcutover_shadow_diff_keys": ("gauge", ROUTE),
    "pgcutover_legacy_only_rows": ("gauge", ROUTE),
    "pgcutover_fallback_legacy_rows": ("gauge", ROUTE),
    "pgcutover_fallback_bytes": ("gauge", ROUTE),
    "pgcutover_fallback_skipped_rows_total": ("counter", ROUTE),
    "pgcutover_fallback_refresh_lag_seconds": ("gauge", ROUTE),
    "pgcutover_fallback_search_seconds": ("histogram", ROUTE),
    "pgcutover_fallback_batch_size": ("histogram", {}),
    "pgcutover_mirror_samples_total": ("counter", ROUTE),
    "pgcutover_mirror_dropped_total": ("counter", ROUTE),
    "pgcutover_shadow_recall": ("gauge", ROUTE),
    "pgcutover_shadow_errors_total": ("counter", ROUTE),
    "pgcutover_breaker_trips_total": ("counter", {"route": None, "reason": None}),
    "pgcutover_readiness": ("gauge", {"route": None, "verdict": ("ready", "not ready", "insufficient data")}),
    "pgcutover_readiness_samples": ("gauge", ROUTE),
}

# Series that come from Prometheus itself or kube-state-metrics, used by the availability alerts.
EXTERNAL = {
    "up": "gauge",
    "kube_deployment_status_replicas_available": "gauge",
    "kube_deployment_spec_replicas": "gauge",
}

# Labels Prometheus adds to every scraped series (deploy/prometheus/prometheus.yml relabels these).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "node", "environment"})

COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
GAUGE_RANGE_FUNCTIONS = frozenset({
    "delta", "idelta", "deriv", "changes", "predict_linear", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time", "stddev_over_time",
    "absent_over_time", "present_over_time",
})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True, slots=True)
class Series:
    """A series name resolved against the contract: its metric, how it must be used, and its labels."""

    metric: str
    kind: str  # "counter" (also every histogram series) or "gauge"
    labels: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    external: bool = False


def resolve(name: str) -> Series | None:
    if name in EXTERNAL:
        return Series(name, EXTERNAL[name], external=True)
    if name in METRICS and METRICS[name][0] != "histogram":
        kind, labels = METRICS[name]
        return Series(name, kind, labels)
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base, ("",))[0] == "histogram":
            labels = dict(METRICS[base][1])
            if suffix == "_bucket":
                labels["le"] = None
            return Series(base, "counter", labels)
    return None


def _check_ref(ref: MetricRef) -> list[str]:
    series = resolve(ref.name)
    if series is None:
        return [f"{ref.name}: not a pgcutover metric (nor up/kube-state-metrics)"]
    problems = []
    if series.kind == "counter":
        if not ref.has_range:
            problems.append(f"{ref.name}: a counter needs a range and rate()/increase(), not a bare value")
        elif ref.function not in COUNTER_FUNCTIONS:
            problems.append(f"{ref.name}[..] inside {ref.function}(): counters take rate/irate/increase")
    elif ref.has_range and ref.function not in GAUGE_RANGE_FUNCTIONS:
        problems.append(f"{ref.name}[..] inside {ref.function}(): rate/increase are for counters, not gauges")
    if series.external:
        return problems
    for label, op, value in ref.matchers:
        if label in TARGET_LABELS:
            continue
        if label not in series.labels:
            problems.append(f"{ref.name}: has no label {label!r} (labels: {sorted(series.labels)})")
            continue
        allowed = series.labels[label]
        if allowed is not None and op == "=" and value not in allowed:
            problems.append(f"{ref.name}{{{label}={value!r}}}: {label} is one of {allowed}")
    return problems


def check_expr(expr: str) -> list[str]:
    """Everything wrong with the metrics an expression names; [] when it only uses the contract correctly."""
    refs = references(expr)
    if not refs:
        return [f"{expr!r}: names no metric"]
    return [problem for ref in refs for problem in _check_ref(ref)]


def labels_kept(expr: str) -> set[str]:
    """Labels an expression's result can carry, as far as templates ({{ $labels.x }}, {{x}}) may use them:
    the labels of any `by (...)` clause, plus every label of a selector that no function or aggregation wraps."""
    import re

    kept = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}
    for ref in references(expr):
        if ref.function is None:
            series = resolve(ref.name)
            kept |= TARGET_LABELS | set(series.labels if series else ())
    kept.discard("")
    return kept
