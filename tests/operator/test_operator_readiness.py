"""Readiness: a sequential verdict, correct hints, and the same numbers from `report`, SHOW REPORT and /metrics."""

from __future__ import annotations

import asyncio
import json
import math
import time

import asyncpg
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from pgcutover.core.config import Route
from pgcutover.proxy import report
from pgcutover.proxy.embedded import EmbeddedPostgres
from pgcutover.proxy.evidence import Latency, RouteSummary, mean_interval, verdict
from tests.operator.cli import pgcutover

ROUTE = Route(table="public.t", column="e", shadow_table="s.t", mirror=10, min_samples=100)


def summary(compared: int, recall: float, sd: float, p95=(0.010, 0.011), p95_ci=None, span_s=None,
            samples: int | None = None, shadow_errors: int = 0) -> RouteSummary:
    samples = compared if samples is None else samples
    low, high = p95_ci or (None, None)
    primary = Latency(samples, p95[0] / 2, p95[0], p95[0] * 2, *((p95[0], p95[0]) if p95_ci else (None, None)))
    shadow = Latency(samples, p95[1] / 2, p95[1], p95[1] * 2, low, high)
    return RouteSummary("public.t", samples, compared, mean_interval(compared, recall, sd), None, None, 1.0, 0.0,
                        primary, shadow, 0, shadow_errors, span_s)


def test_decisive_evidence_is_not_ready_before_min_samples() -> None:
    text = verdict(summary(26, 0.0, 0.0), ROUTE)  # the case: 26 samples at recall 0 (CI 0-0)
    assert text.startswith("not ready: recall vs primary 0.000 (95% CI 0.000-0.000) < min_recall 0.95"), text
    slow = verdict(summary(30, 1.0, 0.0, p95=(0.010, 0.050), p95_ci=(0.040, 0.060)), ROUTE)
    assert slow.startswith("not ready: p95 latency 50.00 ms vs primary 10.00 ms: ratio 5.00 (95% CI 4.00-6.00)")
    failing = verdict(summary(40, 1.0, 0.0, shadow_errors=20), ROUTE)
    assert failing.startswith("not ready: shadow error rate 50.00% (20/40)"), failing


def test_ready_only_when_the_intervals_clear() -> None:
    assert verdict(summary(200, 0.99, 0.02, p95_ci=(0.009, 0.012)), ROUTE) == "ready"
    # the recall interval straddles min_recall: undecided, with how many more and how long at the current rate
    text = verdict(summary(150, 0.96, 0.1, span_s=600.0), ROUTE)
    assert text.startswith("insufficient data: recall vs primary 0.960 (95% CI 0.944-0.976) includes min_recall"), text
    assert "more comparisons needed (~" in text and "at 15.0/min)" in text
    # the latency interval straddles max_latency_ratio
    text = verdict(summary(200, 0.99, 0.02, p95=(0.010, 0.014), p95_ci=(0.012, 0.017)), ROUTE)
    assert text.startswith("insufficient data: p95 ratio 1.40 (95% CI 1.20-1.70) includes max_latency_ratio 1.5")
    # too few samples, evidence pointing to ready: says how many are missing
    text = verdict(summary(40, 1.0, 0.0, span_s=120.0), ROUTE)
    assert "40 of min_samples 100" in text and "about 60 more comparisons needed (~3 min at 20.0/min)" in text


def test_hints() -> None:
    empty = summary(0, 0.0, 0.0)
    assert "mirror = 10%" in verdict(empty, ROUTE) and "mirror > 0" not in verdict(empty, ROUTE)
    off = Route(table="public.t", column="e", shadow_table="s.t", mirror=0)
    assert "set mirror > 0" in verdict(empty, off)
    assert "no shadow_table" in verdict(empty, Route(table="public.t", column="e"))


def test_report_show_report_and_metrics_agree(pg: EmbeddedPostgres, start_proxy) -> None:
    pg.psql("DROP SCHEMA IF EXISTS rd CASCADE; CREATE SCHEMA rd;"
            "CREATE TABLE rd.items (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE rd.shadow (id bigint PRIMARY KEY, embedding vector(3));")

    def sample(i: int) -> report.Sample:
        return report.Sample(route="rd.items", replica="a:1", query_id="q", client_target="primary", client_ok=True,
                             client_ms=1.0, primary_ok=True, shadow_ok=True, shadow_fault=False,
                             primary_ms=1.0 + i % 7, shadow_ms=1.1 + i % 7, primary_sqlstate=None,
                             shadow_sqlstate=None, shadow_error=None, k=10, recall=0.97 if i % 3 else 0.9,
                             rank_agreement=1.0, distance_mean_abs=0.0, distance_max_abs=0.0)

    async def load() -> None:
        conn = await asyncpg.connect(pg.dsn())
        try:
            await report.ensure_schema(conn)
            await conn.execute("DELETE FROM pgcutover.mirror_samples WHERE route = 'rd.items'")
            await report.insert_samples(conn, [sample(i) for i in range(120)])
        finally:
            await conn.close()

    asyncio.run(load())
    proxy = start_proxy('[admin]\nusers = ["postgres"]\n\n[[route]]\ntable = "rd.items"\ncolumn = "embedding"\n'
                        'shadow_table = "rd.shadow"\nmirror = 10\n')
    with psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True, prepare_threshold=None) as admin:
        deadline = time.monotonic() + 60
        while True:
            cur = admin.execute("SHOW REPORT")
            columns = [c.name for c in cur.description]
            shown = dict(zip(columns, cur.fetchone(), strict=True))
            if shown["samples"] == 120:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
    assert len(columns) <= 11
    run = pgcutover("report", "--json", "--config", str(proxy.config_path))
    assert run.returncode == 0, run.stderr
    (cli,) = json.loads(run.stdout)["routes"]
    assert cli["verdict"] == shown["verdict"] and cli["samples"] == shown["samples"]
    assert round(cli["recall_vs_primary"]["mean"], 4) == shown["recall"]
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    recall = next(s.value for s in families["pgcutover_shadow_recall"].samples if s.labels["route"] == "rd.items")
    assert math.isclose(recall, cli["recall_vs_primary"]["mean"], rel_tol=1e-9)
    verdicts = {s.labels["verdict"]: s.value for s in families["pgcutover_readiness"].samples
                if s.labels["route"] == "rd.items"}
    assert verdicts[cli["verdict"].split(":")[0]] == 1.0 and sum(verdicts.values()) == 1.0
