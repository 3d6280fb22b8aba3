"""deploy/grafana/pgcutover.json: a dashboard Grafana can import, laid out without overlaps, whose every query
only uses the metrics the proxy exports and which shows everything an operator watches during a cutover."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

import pytest

from .artifacts import DASHBOARD
from .contract import METRICS, check_expr, labels_kept, resolve
from .promql import references

GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _all_panels(dashboard) for target in panel.get("targets", [])]


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id clashes on import"


def test_panels_have_unique_ids_and_a_layout_without_overlaps(dashboard: dict[str, Any]) -> None:
    panels = _all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids) and len(ids) == len(set(ids))
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1
        boxes.append((panel["title"], grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_every_query_uses_the_metric_contract(dashboard: dict[str, Any]) -> None:
    queries = _queries(dashboard)
    assert len(queries) >= 20
    for title, target in queries:
        assert target["datasource"]["uid"] == "${datasource}", title
        assert check_expr(target["expr"]) == [], title
        kept = labels_kept(target["expr"])
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in kept, f"{title}: legend {{{{{label}}}}} is aggregated away"
    for panel in _all_panels(dashboard):
        if panel["type"] != "row":
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_annotations_use_the_metric_contract(dashboard: dict[str, Any]) -> None:
    exprs = [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert exprs
    for expr in exprs:
        assert check_expr(expr) == []


def test_template_variables_are_defined_and_the_route_list_comes_from_a_real_metric(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    used = {name for _, target in _queries(dashboard)
            for name in re.findall(r"\$\{?(\w+)", target["expr"] + json.dumps(target["datasource"]))}
    assert used - GRAFANA_BUILTINS <= set(variables), used - GRAFANA_BUILTINS - set(variables)
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variables["route"]["definition"])
    assert match, variables["route"]["definition"]
    metric, label = match.groups()
    assert label in METRICS[metric][1]
    assert variables["route"]["allValue"] == ".*", "All must also match queries without a route (passthrough)"


def test_dashboard_shows_what_an_operator_watches(dashboard: dict[str, Any]) -> None:
    exprs = [target["expr"] for _, target in _queries(dashboard)]
    used = {ref.name for expr in exprs for ref in references(expr)}
    for metric in ("pgcutover_route_split_percent", "pgcutover_migration_percent", "pgcutover_legacy_only_rows",
                   "pgcutover_shadow_diff_keys", "pgcutover_fallback_search_seconds_bucket",
                   "pgcutover_fallback_legacy_rows", "pgcutover_shadow_recall", "pgcutover_breaker_trips_total",
                   "pgcutover_client_connections", "pgcutover_server_connections", "pgcutover_bytes_total"):
        assert metric in used, f"no panel shows {metric}"
    assert any("by (target)" in e and any(r.name == "pgcutover_queries_total" and r.function == "rate"
                                          for r in references(e)) for e in exprs), "queries by target (rate)"
    for quantile in ("0.5", "0.95"):
        assert any(f"histogram_quantile({quantile}, sum by (target, le)" in e
                   and "pgcutover_query_duration_seconds_bucket" in e for e in exprs), f"latency p{quantile}"
    # Every metric of the contract has a place on the dashboard.
    shown = {resolve(name).metric for name in used}
    assert shown == set(METRICS), sorted(set(METRICS) - shown)
