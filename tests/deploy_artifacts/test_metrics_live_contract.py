"""The alert rules and the dashboard against a live proxy with every feature configured: every series name and
label they use is exported from the first scrape, for every route it applies to (counters at 0, gauges NaN)."""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .artifacts import DASHBOARD, PROMETHEUS, http_get, wait_for_http
from .contract import TARGET_LABELS
from .promql import PromQLError, references

ROUTES = """
[admin]
users = ["postgres"]

[[route]]
table = "mc.docs"
column = "embedding"
vector_column = "embedding_vector"
legacy_column = "embedding"
legacy_format = "json"
dims = 3

[[route]]
table = "mc.items"
column = "embedding"
shadow_table = "mc.items_shadow"
mirror = 10
"""
ROUTE_NAMES = ("mc.docs", "mc.items")


def _expressions() -> list[str]:
    exprs = [rule["expr"] for group in yaml.safe_load((PROMETHEUS / "pgcutover-alerts.yml").read_text())["groups"]
             for rule in group["rules"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str) and value:
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


@pytest.fixture(scope="module")
def scrape(pg, start_proxy) -> dict[str, list[dict[str, str]]]:
    pg.psql("DROP SCHEMA IF EXISTS mc CASCADE; CREATE SCHEMA mc;"
            "CREATE TABLE mc.docs (id bigint PRIMARY KEY, embedding text, embedding_vector vector(3));"
            "INSERT INTO mc.docs VALUES (1, '[1,2,3]', NULL), (2, '[3,2,1]', '[3,2,1]');"
            "CREATE TABLE mc.items (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE mc.items_shadow (id bigint PRIMARY KEY, embedding vector(3));")
    proxy = start_proxy(ROUTES)
    wait_for_http(proxy.metrics_port)
    deadline = time.monotonic() + 60
    while http_get(proxy.metrics_port, "/readyz")[0] != 200:  # the fallback store has loaded
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    status, body = http_get(proxy.metrics_port, "/metrics")
    assert status == 200
    series: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            series[sample.name].append(dict(sample.labels))
            if family.name == "pgcutover_shadow_recall":
                assert math.isnan(sample.value) or 0 <= sample.value <= 1
    return series


@pytest.mark.parametrize("expr", _expressions())
def test_every_name_and_label_is_exported(scrape: dict[str, list[dict[str, str]]], expr: str) -> None:
    try:
        refs = [ref for ref in references(expr) if ref.name.startswith("pgcutover_")]
    except PromQLError:
        refs = [ref for ref in references(re.sub(r"label_values\((\w+),.*\)", r"\1", expr))]
    problems = []
    for ref in refs:
        labels = scrape.get(ref.name)
        if not labels:
            problems.append(f"{ref.name}: not exported")
            continue
        for label, op, value in ref.matchers:
            if label in TARGET_LABELS:
                continue
            if not any(label in sample for sample in labels):
                problems.append(f"{ref.name}: no label {label!r}")
            elif op == "=" and not any(sample.get(label) == value for sample in labels):
                problems.append(f"{ref.name}{{{label}={value!r}}}: no such series")
            elif value == "$route":
                missing = [r for r in ROUTE_NAMES if not any(s.get("route") == r for s in labels)]
                if ref.name.startswith(("pgcutover_fallback_", "pgcutover_mirror_", "pgcutover_shadow_",
                                        "pgcutover_breaker_")):
                    missing = [r for r in missing if r != ("mc.items" if "fallback" in ref.name else "mc.docs")]
                if missing:
                    problems.append(f"{ref.name}: no series for route(s) {missing}")
    for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        for label in {part.strip() for part in group.split(",")} - TARGET_LABELS - {"", "le"}:
            if refs and not any(label in sample for ref in refs for sample in scrape.get(ref.name, [])):
                problems.append(f"by/on ({label}): no metric of the expression has it")
    assert not problems, f"{expr}\n" + "\n".join(problems)


def test_zero_initialised_for_each_route(scrape: dict[str, list[dict[str, str]]]) -> None:
    trips = scrape["pgcutover_breaker_trips_total"]
    assert {("mc.items", "error_rate"), ("mc.items", "latency")} <= {(s["route"], s["reason"]) for s in trips}
    assert {"mc.docs"} <= {s["route"] for s in scrape["pgcutover_fallback_skipped_rows_total"]}
    queries = {(s["route"], s["target"], s["outcome"]) for s in scrape["pgcutover_queries_total"]}
    assert {("mc.items", "shadow", "error"), ("mc.docs", "fallback_merged", "ok")} <= queries
    for name, samples in scrape.items():
        if name.startswith("pgcutover_fallback_") and samples and name != "pgcutover_fallback_batch_size_bucket":
            assert all("table" not in s for s in samples), name
