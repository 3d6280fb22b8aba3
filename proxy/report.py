"""The readiness report: mirrored samples kept in the `pgcutover` schema, summarised per route with a verdict.

Every replica's mirror appends its samples to `pgcutover.mirror_samples`, so the report is the sum of all
replicas and survives restarts. `pgcutover report` reads it from a terminal, `SHOW REPORT` in the admin
console shows the summary this replica refreshed last (a SHOW cannot wait on the database), and the metrics
collector exports the mirror's and the breaker's counters.

Percentiles are computed by PostgreSQL (percentile_cont); intervals and the verdict by proxy/evidence.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pgcutover.core.config import Config, ConfigError, Route, load_config
from pgcutover.core.routing import canonical_table

from . import control
from .evidence import (
    INSUFFICIENT,
    NOT_READY,
    READY,
    Latency,
    RouteSummary,
    mean_interval,
    quantile_ranks,
    verdict,
    wilson,
)

if TYPE_CHECKING:
    from .breaker import BreakerState
    from .runtime import Runtime

TEXT, INT8, FLOAT8 = 25, 20, 701
DEFAULT_SINCE = timedelta(hours=24)
RETENTION = timedelta(days=7)  # samples older than this are pruned by the replicas as they write

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgcutover;
CREATE TABLE IF NOT EXISTS pgcutover.mirror_samples (
    id                    bigserial PRIMARY KEY,
    route                 text NOT NULL,
    replica               text NOT NULL,
    sampled_at            timestamptz NOT NULL DEFAULT now(),
    query_id              text NOT NULL,
    client_target         text NOT NULL,
    client_ok             boolean,
    client_ms             double precision,
    primary_ok            boolean NOT NULL,
    shadow_ok             boolean NOT NULL,
    shadow_fault          boolean NOT NULL,
    primary_ms            double precision,
    shadow_ms             double precision,
    primary_sqlstate      text,
    shadow_sqlstate       text,
    shadow_error          text,
    k                     integer,
    recall                double precision,
    rank_agreement        double precision,
    distance_mean_abs     double precision,
    distance_max_abs      double precision,
    exact_k               integer,
    primary_recall_exact  double precision,
    shadow_recall_exact   double precision
);
CREATE INDEX IF NOT EXISTS mirror_samples_route_time ON pgcutover.mirror_samples (route, sampled_at);
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """One mirrored comparison, as stored (latencies in milliseconds)."""

    route: str
    replica: str
    query_id: str
    client_target: str
    client_ok: bool | None
    client_ms: float | None
    primary_ok: bool
    shadow_ok: bool
    shadow_fault: bool  # the shadow failed where the primary answered
    primary_ms: float | None
    shadow_ms: float | None
    primary_sqlstate: str | None
    shadow_sqlstate: str | None
    shadow_error: str | None
    k: int | None
    recall: float | None
    rank_agreement: float | None
    distance_mean_abs: float | None
    distance_max_abs: float | None
    exact_k: int | None = None
    primary_recall_exact: float | None = None
    shadow_recall_exact: float | None = None


SAMPLE_COLUMNS = [f.name for f in fields(Sample)]


async def ensure_schema(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgcutover.schema'))")
        await conn.execute(SCHEMA_SQL)


async def insert_samples(conn: asyncpg.Connection, samples: Sequence[Sample]) -> None:
    """One COPY for the whole batch."""
    if samples:
        await conn.copy_records_to_table("mirror_samples", schema_name="pgcutover", columns=SAMPLE_COLUMNS,
                                         records=[tuple(getattr(s, c) for c in SAMPLE_COLUMNS) for s in samples])


async def prune_samples(conn: asyncpg.Connection, older_than: timedelta = RETENTION) -> int:
    status = await conn.execute("DELETE FROM pgcutover.mirror_samples WHERE sampled_at < now() - $1::interval",
                                older_than)
    return int(status.split()[-1])


# -- summaries ------------------------------------------------------------------------------------------------
_SUMMARY_SQL = """
SELECT route,
       count(*) AS samples,
       count(recall) AS compared,
       avg(recall) AS recall_mean, stddev_samp(recall) AS recall_sd,
       count(shadow_recall_exact) AS exact_n,
       avg(shadow_recall_exact) AS shadow_exact_mean, stddev_samp(shadow_recall_exact) AS shadow_exact_sd,
       avg(primary_recall_exact) AS primary_exact_mean, stddev_samp(primary_recall_exact) AS primary_exact_sd,
       count(primary_recall_exact) AS primary_exact_n,
       avg(rank_agreement) AS rank_agreement, avg(distance_mean_abs) AS distance_mean_abs,
       count(*) FILTER (WHERE primary_ok) AS primary_n,
       percentile_cont($3::float8[]) WITHIN GROUP (ORDER BY primary_ms) FILTER (WHERE primary_ok) AS primary_ms,
       count(*) FILTER (WHERE shadow_ok) AS shadow_n,
       percentile_cont($3::float8[]) WITHIN GROUP (ORDER BY shadow_ms) FILTER (WHERE shadow_ok) AS shadow_ms,
       count(*) FILTER (WHERE NOT primary_ok) AS primary_errors,
       count(*) FILTER (WHERE shadow_fault) AS shadow_errors,
       max(sampled_at)::text AS last_sample,
       extract(epoch FROM max(sampled_at) - min(sampled_at))::float8 AS span_s
FROM pgcutover.mirror_samples
WHERE sampled_at >= now() - $1::interval AND route = ANY($2::text[])
GROUP BY route
"""


# Latency quantiles read in one pass: p50, p99, and a fine grid around p95 from which the order-statistic
# interval of the p95 is interpolated (evidence.quantile_ranks) whatever the sample count.
QUANTILE_GRID = sorted({0.5, 0.99, *(round(0.6 + i * 0.005, 4) for i in range(81))})


@dataclass(frozen=True, slots=True)
class RouteReport:
    summary: RouteSummary
    verdict: str
    last_sample: str | None
    since: timedelta | None


async def summarize(conn: asyncpg.Connection, routes: Sequence[Route],
                    since: timedelta | None = DEFAULT_SINCE) -> list[RouteReport]:
    """One report per route (routes without samples get an empty one). No schema yet means no samples."""
    rows: dict[str, asyncpg.Record] = {}
    if await conn.fetchval("SELECT to_regclass('pgcutover.mirror_samples') IS NOT NULL"):
        window = since if since is not None else timedelta(days=36500)
        for row in await conn.fetch(_SUMMARY_SQL, window, [r.table for r in routes], QUANTILE_GRID):
            rows[row["route"]] = row
    reports = []
    for route in routes:
        row = rows.get(route.table)
        summary = summary_from_row(route.table, row)
        reports.append(RouteReport(summary, verdict(summary, route), row["last_sample"] if row else None, since))
    return reports


def summary_from_row(table: str, row: Any | None) -> RouteSummary:
    if row is None:
        empty = Latency(0, None, None, None)
        return RouteSummary(table, 0, 0, None, None, None, None, None, empty, empty, 0, 0)
    return RouteSummary(
        route=table, samples=row["samples"], compared=row["compared"],
        recall=mean_interval(row["compared"], row["recall_mean"], row["recall_sd"]),
        recall_exact_shadow=mean_interval(row["exact_n"], row["shadow_exact_mean"], row["shadow_exact_sd"]),
        recall_exact_primary=mean_interval(row["primary_exact_n"], row["primary_exact_mean"],
                                           row["primary_exact_sd"]),
        rank_agreement=row["rank_agreement"], distance_mean_abs=row["distance_mean_abs"],
        primary=_latency(row["primary_n"], row["primary_ms"]), shadow=_latency(row["shadow_n"], row["shadow_ms"]),
        primary_errors=row["primary_errors"], shadow_errors=row["shadow_errors"], span_s=row["span_s"],
    )


def _latency(n: int, ms: Sequence[float] | None) -> Latency:
    """Latency (seconds) from percentile_cont over QUANTILE_GRID (milliseconds)."""
    if not n or not ms:
        return Latency(n, None, None, None)

    def at(q: float) -> float:
        i = bisect_left(QUANTILE_GRID, q)
        if i < len(QUANTILE_GRID) and QUANTILE_GRID[i] == q:
            return ms[i] / 1000
        if i == 0:
            return ms[0] / 1000
        if i >= len(QUANTILE_GRID):
            return ms[-1] / 1000
        lo_q, hi_q = QUANTILE_GRID[i - 1], QUANTILE_GRID[i]
        return (ms[i - 1] + (ms[i] - ms[i - 1]) * (q - lo_q) / (hi_q - lo_q)) / 1000

    low, high = quantile_ranks(0.95, n)
    return Latency(n, at(0.5), at(0.95), at(0.99), at(max(low, QUANTILE_GRID[0])), at(high))


# -- presentation ---------------------------------------------------------------------------------------------
def report_dict(report: RouteReport) -> dict[str, Any]:
    s = report.summary
    shadow_rate = wilson(s.shadow_errors, s.samples)
    return {
        "route": s.route,
        "verdict": report.verdict,
        "since_seconds": report.since.total_seconds() if report.since is not None else None,
        "last_sample": report.last_sample,
        "samples": s.samples,
        "compared": s.compared,
        "recall_vs_primary": _interval(s.recall),
        "recall_vs_exact": {"shadow": _interval(s.recall_exact_shadow), "primary": _interval(s.recall_exact_primary)},
        "interval_method": "95% normal approximation over queries (mean ± 1.96·s/√n); error rates: Wilson",
        "rank_agreement_kendall_tau": s.rank_agreement,
        "distance_mean_abs_diff": s.distance_mean_abs,
        "latency_ms": {"primary": _latency_ms(s.primary), "shadow": _latency_ms(s.shadow),
                       "p95_ratio": s.latency_ratio,
                       "p95_ratio_ci95": list(s.latency_ratio_interval) if s.latency_ratio_interval else None},
        "comparisons_per_minute": round(s.compared_per_s * 60, 2) if s.compared_per_s else None,
        "errors": {
            "primary": s.primary_errors, "primary_rate": s.primary_error_rate,
            "shadow": s.shadow_errors, "shadow_rate": s.shadow_error_rate,
            "shadow_rate_ci95": list(shadow_rate) if shadow_rate else None,
        },
    }


def _interval(interval: Any) -> dict[str, float] | None:
    return None if interval is None else asdict(interval)


def _latency_ms(latency: Latency) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {"n": latency.n, "p50": ms(latency.p50), "p95": ms(latency.p95), "p99": ms(latency.p99)}


REPORT_COLUMNS = [
    ("route", TEXT), ("verdict", TEXT), ("samples", INT8), ("compared", INT8),
    ("recall", FLOAT8), ("recall_ci95", TEXT), ("recall_exact_shadow", FLOAT8), ("recall_exact_primary", FLOAT8),
    ("rank_agreement", FLOAT8), ("primary_p50_ms", FLOAT8), ("primary_p95_ms", FLOAT8), ("primary_p99_ms", FLOAT8),
    ("shadow_p50_ms", FLOAT8), ("shadow_p95_ms", FLOAT8), ("shadow_p99_ms", FLOAT8), ("p95_ratio", FLOAT8),
    ("primary_error_rate", FLOAT8), ("shadow_error_rate", FLOAT8), ("last_sample", TEXT),
]


def report_row(report: RouteReport) -> list[object]:
    s = report.summary

    def r(v: float | None, digits: int = 4) -> float | None:
        return None if v is None else round(v, digits)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    ci = f"{s.recall.low:.4f}-{s.recall.high:.4f}" if s.recall else None
    return [s.route, report.verdict, s.samples, s.compared, r(s.recall.mean if s.recall else None), ci,
            r(s.recall_exact_shadow.mean if s.recall_exact_shadow else None),
            r(s.recall_exact_primary.mean if s.recall_exact_primary else None), r(s.rank_agreement),
            ms(s.primary.p50), ms(s.primary.p95), ms(s.primary.p99), ms(s.shadow.p50), ms(s.shadow.p95),
            ms(s.shadow.p99), r(s.latency_ratio, 3), r(s.primary_error_rate), r(s.shadow_error_rate),
            report.last_sample]


def format_text(reports: Sequence[RouteReport]) -> str:
    """A block per route: what an operator reads before turning the split up."""
    out = []
    for report in reports:
        s = report.summary
        since = _since_text(report.since)
        out.append(f"route {s.route}  ({since})")
        out.append(f"  verdict          {report.verdict}")
        out.append(f"  samples          {s.samples} mirrored, {s.compared} compared"
                   + (f", last {report.last_sample}" if report.last_sample else ""))
        out.append(f"  recall vs primary {s.recall.text(4) if s.recall else '-'}")
        exact_shadow = s.recall_exact_shadow.text(4) if s.recall_exact_shadow else "-"
        exact_primary = s.recall_exact_primary.text(4) if s.recall_exact_primary else "-"
        out.append(f"  recall vs exact   shadow {exact_shadow}; primary {exact_primary}")
        out.append(f"  rank agreement    {_num(s.rank_agreement)} (Kendall tau over common keys); "
                   f"mean |distance diff| {_num(s.distance_mean_abs, 6)}")
        out.append(f"  latency primary   {_lat(s.primary)}")
        out.append(f"  latency shadow    {_lat(s.shadow)}")
        ratio_ci = s.latency_ratio_interval
        out.append(f"  p95 ratio         {_num(s.latency_ratio, 3)}"
                   + (f" [{ratio_ci[0]:.3f}, {ratio_ci[1]:.3f}]" if ratio_ci else ""))
        out.append(f"  errors            primary {s.primary_errors} ({_pct(s.primary_error_rate)}), shadow "
                   f"{s.shadow_errors} ({_pct(s.shadow_error_rate)})")
        out.append("")
    out.append("intervals: 95%; recall: normal approximation over queries (mean ± 1.96·s/√n); p95 ratio: "
               "order statistics of each side; error rates: Wilson")
    return "\n".join(out)


def _since_text(since: timedelta | None) -> str:
    return "all samples" if since is None else f"last {_duration_text(since)}"


def _duration_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _lat(latency: Latency) -> str:
    if latency.p50 is None or latency.p95 is None or latency.p99 is None:  # all three or none
        return f"n={latency.n}"
    return (f"p50 {latency.p50 * 1000:.2f} ms  p95 {latency.p95 * 1000:.2f} ms  p99 {latency.p99 * 1000:.2f} ms  "
            f"(n={latency.n})")


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*")


def parse_since(text: str) -> timedelta | None:
    """'90s', '30m', '1h', '2d', '1w' (a bare number is seconds); 'all' means every sample.

    >>> parse_since("1h"), parse_since("all")
    (datetime.timedelta(seconds=3600), None)
    """
    if text.strip().lower() == "all":
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(f"--since {text!r}: expected a duration such as 30m, 1h, 2d, or 'all'")
    size = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2) or "s"]
    return timedelta(seconds=float(match.group(1)) * size)


# -- SHOW REPORT ----------------------------------------------------------------------------------------------
SHOW_COLUMNS = [
    ("route", TEXT), ("verdict", TEXT), ("samples", INT8), ("recall", FLOAT8), ("recall_ci95", TEXT),
    ("p95_ratio", FLOAT8), ("shadow_error_rate", FLOAT8), ("mirror_percent", FLOAT8), ("dropped_here", TEXT),
    ("breaker", TEXT), ("refreshed_s_ago", FLOAT8),
]


def current_reports(rt: Runtime) -> list[RouteReport]:
    """The summary this replica's mirror refreshed last (all replicas' samples, `summarize` over DEFAULT_SINCE),
    one per route in force: what SHOW REPORT, the metrics and GET /report show, so they agree."""
    reports = dict(rt.mirror.reports) if rt.mirror is not None else {}
    out = []
    for route in rt.routing.routes:
        report = reports.get(route.table)
        if report is None:
            summary = summary_from_row(route.table, None)
            report = RouteReport(summary, verdict(summary, route), None, DEFAULT_SINCE)
        out.append(report)
    return out


def show_report(rt: Runtime) -> tuple[list[tuple[str, int]], list[list[object]]]:
    """A summary per route (details: `pgcutover report`, or GET /report on the metrics port)."""
    mirror, breaker = rt.mirror, rt.breaker
    states = {state.route: state for state in breaker.state_rows()} if breaker is not None else {}
    refreshed = mirror.reports_at if mirror is not None else None
    age = round(time.monotonic() - refreshed, 1) if refreshed else None
    mirror_percent = {route.table: route.mirror for route in rt.routing.routes}
    rows = []
    for report in current_reports(rt):
        s = report.summary
        state = states.get(s.route)
        ci = f"{s.recall.low:.4f}-{s.recall.high:.4f}" if s.recall else None
        dropped = mirror.dropped_reasons_text(s.route) if mirror is not None else None
        rows.append([s.route, report.verdict, s.samples, _round(s.recall.mean if s.recall else None), ci,
                     _round(s.latency_ratio, 3), _round(s.shadow_error_rate), mirror_percent.get(s.route), dropped,
                     _breaker_text(state) if state else None, age])
    return SHOW_COLUMNS, rows


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


def _breaker_text(state: BreakerState) -> str:
    """The breaker's state, and whose fault the shadow errors in its window were (why it did or did not trip)."""
    if not (state.shadow_errors or state.client_errors or state.unverified_errors):
        return state.state
    probe = f", probe {state.probe}" if state.probe else ""
    return (f"{state.state} ({state.shadow_errors} shadow errors counted, {state.client_errors} the client's, "
            f"{state.unverified_errors} unverified{probe})")


# -- metrics --------------------------------------------------------------------------------------------------
def evidence_families(rt: Runtime) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The mirror's and the breaker's counters and the readiness summary, as families (proxy/metrics.py)."""
    mirror, breaker = rt.mirror, rt.breaker
    tables = [route.table for route in rt.routing.routes]
    samples = CounterMetricFamily("pgcutover_mirror_samples", "Mirrored comparisons completed by this replica",
                                  labels=["route"])
    dropped = CounterMetricFamily("pgcutover_mirror_dropped",
                                  "Mirrored comparisons dropped (queue full, unsupported shape or parameter)",
                                  labels=["route"])
    errors = CounterMetricFamily("pgcutover_shadow_errors",
                                 "Mirrored queries that failed on the shadow while the primary answered",
                                 labels=["route"])
    recall = GaugeMetricFamily("pgcutover_shadow_recall",
                               "Mean recall@k of the shadow against the primary (the readiness summary: "
                               "pgcutover report, SHOW REPORT)", labels=["route"])
    ready = GaugeMetricFamily("pgcutover_readiness", "1 for the route's current verdict (the readiness "
                              "summary), 0 for the others", labels=["route", "verdict"])
    summary_samples = GaugeMetricFamily("pgcutover_readiness_samples", "Mirrored samples in the readiness "
                                        "summary (all replicas, last 24h)", labels=["route"])
    trips = CounterMetricFamily("pgcutover_breaker_trips", "Circuit breaker rollbacks written by this replica",
                                labels=["route", "reason"])
    if mirror is not None:
        for table in tables:
            samples.add_metric([table], mirror.samples[table])
            dropped.add_metric([table], mirror.dropped[table])
            errors.add_metric([table], mirror.shadow_errors[table])
    for report in current_reports(rt):
        s = report.summary
        if s.recall is not None:
            recall.add_metric([s.route], s.recall.mean)
        summary_samples.add_metric([s.route], s.samples)
        current = report.verdict.split(":", 1)[0]
        for name in (READY, NOT_READY, INSUFFICIENT):
            ready.add_metric([s.route, name], 1.0 if current == name else 0.0)
    judged = GaugeMetricFamily("pgcutover_breaker_window_errors",
                               "Shadow errors in the breaker's window by whose fault they are (only 'shadow' "
                               "counts; 'unverified' counts if a probe finds the shadow broken)",
                               labels=["route", "verdict"])
    if breaker is not None:
        for (table, reason), count in sorted(breaker.trips.items()):
            trips.add_metric([table, reason], count)
        for state in breaker.state_rows():
            for verdict, count in (("shadow", state.shadow_errors), ("client", state.client_errors),
                                   ("unverified", state.unverified_errors)):
                judged.add_metric([state.route, verdict], count)
    yield from (samples, dropped, errors, recall, trips, ready, summary_samples, judged)


# -- CLI ------------------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report", help="readiness of each route's shadow, from the mirrored comparisons",
        description="Summarise the mirrored comparisons every replica stored in pgcutover.mirror_samples: "
                    "samples, recall of the shadow against the primary and against exact search (mean, 95% "
                    "interval), p50/p95/p99 latency of both targets and their ratio, error rates, and a verdict "
                    "(ready / not ready: reason / insufficient data) against the route's min_recall, "
                    "max_latency_ratio, max_error_rate and min_samples.")
    parser.add_argument("--route", help="only this route (table name as configured)")
    parser.add_argument("--since", default="24h", help="period to summarise: 30m, 1h, 2d... or 'all' (default 24h)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--html", metavar="FILE",
                        help="also write the readiness page (charts over time, verdict and reasons) to FILE")
    parser.add_argument("--config", default=os.environ.get("PGCUTOVER_CONFIG"),
                        required="PGCUTOVER_CONFIG" not in os.environ,
                        help="the TOML file `serve` uses (default: $PGCUTOVER_CONFIG)")
    parser.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    since = parse_since(args.since)
    routes = _selected_routes(config, args.route)
    if getattr(args, "html", None):
        reports, page = asyncio.run(_fetch_page(config, routes, since))
        Path(args.html).write_text(page)
    else:
        reports = asyncio.run(_fetch_reports(config, routes, since))
    if args.json:
        sys.stdout.write(orjson.dumps({"routes": [report_dict(r) for r in reports]},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_text(reports))
    return 0


def _selected_routes(config: Config, table: str | None) -> list[Route]:
    if table is None:
        return list(config.routes)
    name = canonical_table(config.routes, table)
    route = config.route_for(name)
    assert route is not None
    return [route]


async def _fetch_page(config: Config, routes: Sequence[Route],
                      since: timedelta | None) -> tuple[list[RouteReport], str]:
    """The reports and the HTML page drawn from the same summary (and the migration status of each route)."""
    from .report_html import fetch_page, render

    migration: dict[str, dict[str, Any]] = {}
    if any(route.legacy_column for route in routes):
        from pgcutover.deploy.status import StatusOptions, status

        for route in routes:
            if route.legacy_column:
                try:
                    for row in await status(config, route.table, StatusOptions(diff=False)):
                        migration[row["table"]] = row
                except Exception:  # the page still shows everything else; `pgcutover status` says why
                    pass
    conn = await control.connect(config)
    try:
        reports = await summarize(conn, routes, since)
        page = await fetch_page(conn, routes, reports, since, migration)
    finally:
        await conn.close()
    return reports, render(page)


async def _fetch_reports(config: Config, routes: Sequence[Route], since: timedelta | None) -> list[RouteReport]:
    conn = await control.connect(config)
    try:
        # the thresholds in force are the TOML's; split changes do not touch them
        return await summarize(conn, routes, since)
    finally:
        await conn.close()
