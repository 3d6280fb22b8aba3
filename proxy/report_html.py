"""The readiness page: `pgcutover report --html FILE` and GET /report on the metrics port.

One self-contained HTML file (no script, no CDN, no web font): per route the verdict with its reasons, the
summary numbers, and charts drawn here as inline SVG: recall over time against min_recall, primary and shadow
latency percentiles over time against max_latency_ratio, error rates against max_error_rate, and migration
progress, with breaker trips and split changes marked on every time axis.

The verdict and summary numbers are the readiness summary (proxy/report.py `summarize`, the same function
behind `pgcutover report`, SHOW REPORT and the metrics); the time series are the same samples bucketed in time.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from pgcutover.core.config import Route

from .evidence import INSUFFICIENT, NOT_READY, READY, mean_interval
from .report import DEFAULT_SINCE, RouteReport, _latency_ms

BUCKETS = 60  # points per chart

_SERIES_SQL = """
SELECT route, extract(epoch FROM date_bin($3::interval, sampled_at, '2000-01-01'::timestamptz))::float8 AS t,
       count(*) AS n, count(recall) AS nr, avg(recall) AS recall, stddev_samp(recall) AS recall_sd,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY primary_ms) FILTER (WHERE primary_ok) AS p_ms,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY shadow_ms) FILTER (WHERE shadow_ok) AS s_ms,
       avg(CASE WHEN shadow_fault THEN 1.0 ELSE 0.0 END)::float8 AS shadow_err,
       avg(CASE WHEN primary_ok THEN 0.0 ELSE 1.0 END)::float8 AS primary_err
FROM pgcutover.mirror_samples
WHERE sampled_at >= now() - $1::interval AND route = ANY($2::text[])
GROUP BY 1, 2 ORDER BY 1, 2
"""
_EVENTS_SQL = """
SELECT table_name, extract(epoch FROM changed_at)::float8 AS t, split, previous_split, changed_by, reason
FROM pgcutover.routing_history WHERE changed_at >= now() - $1::interval AND table_name = ANY($2::text[])
ORDER BY generation
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    t: float  # unix seconds, start of the bucket
    n: int
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    primary_p50: float | None  # milliseconds
    primary_p95: float | None
    shadow_p50: float | None
    shadow_p95: float | None
    shadow_error_rate: float
    primary_error_rate: float


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    split: float
    previous: float | None
    by: str
    reason: str

    @property
    def trip(self) -> bool:
        return "breaker" in self.by


@dataclass
class RoutePage:
    route: Route
    report: RouteReport
    buckets: list[Bucket] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    migration: dict[str, Any] | None = None  # a row of deploy.status (percent_migrated, migrated, legacy_only...)


@dataclass
class Page:
    generated_at: float
    since: timedelta | None
    t0: float
    t1: float
    routes: list[RoutePage]


async def fetch_page(conn: asyncpg.Connection, routes: Sequence[Route], reports: Sequence[RouteReport],
                     since: timedelta | None = DEFAULT_SINCE,
                     migration: dict[str, dict[str, Any]] | None = None) -> Page:
    """Time series and routing events for the routes; `reports` is the readiness summary to show beside them."""
    now = (await conn.fetchval("SELECT extract(epoch FROM now())::float8"))
    tables = [r.table for r in routes]
    window = since
    if window is None:
        first = None
        if await conn.fetchval("SELECT to_regclass('pgcutover.mirror_samples') IS NOT NULL"):
            first = await conn.fetchval("SELECT extract(epoch FROM min(sampled_at))::float8 FROM "
                                        "pgcutover.mirror_samples WHERE route = ANY($1::text[])", tables)
        window = timedelta(seconds=max(now - (first or now), 60) + 60)
    bucket = timedelta(seconds=max(1, math.ceil(window.total_seconds() / BUCKETS)))
    pages = {r.table: RoutePage(r, rep) for r, rep in zip(routes, reports, strict=True)}
    if await conn.fetchval("SELECT to_regclass('pgcutover.mirror_samples') IS NOT NULL"):
        for row in await conn.fetch(_SERIES_SQL, window, tables, bucket):
            interval = mean_interval(row["nr"], row["recall"], row["recall_sd"])
            p_ms, s_ms = row["p_ms"] or [None, None], row["s_ms"] or [None, None]
            pages[row["route"]].buckets.append(Bucket(
                row["t"], row["n"], row["recall"], interval.low if interval else None,
                interval.high if interval else None, p_ms[0], p_ms[1], s_ms[0], s_ms[1], row["shadow_err"],
                row["primary_err"]))
    if await conn.fetchval("SELECT to_regclass('pgcutover.routing_history') IS NOT NULL"):
        for row in await conn.fetch(_EVENTS_SQL, window, tables):
            pages[row["table_name"]].events.append(Event(row["t"], row["split"], row["previous_split"],
                                                         row["changed_by"], row["reason"]))
    for table, row in (migration or {}).items():
        if table in pages:
            pages[table].migration = row
    return Page(now, since, now - window.total_seconds(), now, list(pages.values()))


# -- drawing --------------------------------------------------------------------------------------------------
W, H = 560, 210
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 26, 30
COLORS = {"primary": "#2b6cb0", "shadow": "#c05621", "recall": "#2f855a", "band": "#c6f6d5", "threshold": "#c53030",
          "split": "#6b46c1", "trip": "#c53030", "grid": "#e2e8f0", "axis": "#4a5568"}


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    color: str
    points: list[tuple[float, float]]
    dashed: bool = False


def _x(t: float, t0: float, t1: float) -> float:
    return LEFT + (t - t0) / max(t1 - t0, 1e-9) * (W - LEFT - RIGHT)


def _y(v: float, lo: float, hi: float) -> float:
    return TOP + (1 - (v - lo) / max(hi - lo, 1e-12)) * (H - TOP - BOTTOM)


def _path(points: list[tuple[float, float]], t0: float, t1: float, lo: float, hi: float) -> str:
    coords = [(_x(t, t0, t1), _y(min(max(v, lo), hi), lo, hi)) for t, v in points]
    if len(coords) == 1:  # one bucket: a short tick so the path is visible
        x, y = coords[0]
        coords = [(x - 3, y), (x + 3, y)]
    return "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in coords)


def _time_label(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%H:%M:%S" if span < 600 else "%H:%M" if span < 2 * 86400 else "%m-%d %H:%M")


def chart(title: str, series: Sequence[Series], *, t0: float, t1: float, lo: float, hi: float,
          thresholds: Sequence[tuple[str, float]] = (), events: Sequence[Event] = (), unit: str = "",
          band: Sequence[tuple[float, float, float]] = ()) -> str:
    """An SVG line chart over [t0, t1] x [lo, hi]: series, a confidence band, threshold lines, event markers."""
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="{LEFT}" y="16" class="title">{html.escape(title)}</text>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = _y(v, lo, hi)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLORS["grid"]}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt(v)}{unit}</text>')
    span = t1 - t0
    for i in range(4):
        t = t0 + span * i / 3
        x = _x(t, t0, t1)
        out.append(f'<text x="{x:.1f}" y="{H - 10}" class="tick" text-anchor="middle">'
                   f'{html.escape(_time_label(t, span))}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="none" '
               f'stroke="{COLORS["axis"]}"/>')
    if band:
        upper = [(t, h) for t, _, h in band]
        lower = [(t, low) for t, low, _ in reversed(band)]
        d = _path(upper, t0, t1, lo, hi) + " L" + _path(lower, t0, t1, lo, hi)[1:] + " Z"
        out.append(f'<path class="band" d="{d}" fill="{COLORS["band"]}" stroke="none" opacity="0.8"/>')
    for label, value in thresholds:
        y = _y(min(max(value, lo), hi), lo, hi)
        out.append(f'<line class="threshold" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{COLORS["threshold"]}" stroke-dasharray="6 4"><title>{html.escape(label)}</title></line>')
        out.append(f'<text x="{W - RIGHT - 4}" y="{y - 4:.1f}" class="tick" text-anchor="end" '
                   f'fill="{COLORS["threshold"]}">{html.escape(label)}</text>')
    for event in events:
        if not t0 <= event.t <= t1:
            continue
        x = _x(event.t, t0, t1)
        color = COLORS["trip"] if event.trip else COLORS["split"]
        what = "breaker trip" if event.trip else "split change"
        tip = f"{what}: split {_fmt(event.previous)} -> {_fmt(event.split)} by {event.by} ({event.reason})"
        out.append(f'<line class="event" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="{color}" '
                   f'stroke-width="2" stroke-dasharray="{"2 2" if event.trip else "none"}">'
                   f'<title>{html.escape(tip)}</title></line>')
    for s in series:
        if not s.points:
            continue
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<path class="series" d="{_path(s.points, t0, t1, lo, hi)}" fill="none" stroke="{s.color}" '
                   f'stroke-width="2"{dash}><title>{html.escape(s.label)}</title></path>')
    x = LEFT + 4
    for s in series:
        out.append(f'<rect x="{x}" y="{TOP + 4}" width="10" height="3" fill="{s.color}"/>'
                   f'<text x="{x + 14}" y="{TOP + 10}" class="legend">{html.escape(s.label)}</text>')
        x += 20 + 6.2 * len(s.label)
    out.append("</svg>")
    return "".join(out)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _ceiling(values: Sequence[float], floor: float) -> float:
    top = max([floor, *values])
    magnitude = 10 ** math.floor(math.log10(top)) if top > 0 else 1
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= top:
            return step * magnitude
    return top


def route_charts(page: Page, rp: RoutePage) -> list[str]:
    route, b = rp.route, rp.buckets
    t0, t1 = page.t0, page.t1
    recall = [(x.t, x.recall) for x in b if x.recall is not None]
    band = [(x.t, x.recall_low, x.recall_high) for x in b if x.recall_low is not None and x.recall_high is not None]
    low = min([route.min_recall - 0.05, *(v for _, v in recall), *(lo for _, lo, _ in band)], default=0.0)
    charts = [chart("Recall of the shadow vs the primary (mean, 95% band)",
                    [Series("recall", COLORS["recall"], recall)], t0=t0, t1=t1, lo=max(0.0, math.floor(low * 10) / 10),
                    hi=1.0, thresholds=[(f"min_recall {route.min_recall:g}", route.min_recall)], events=rp.events,
                    band=band)]
    series = [Series("primary p95", COLORS["primary"], [(x.t, x.primary_p95) for x in b if x.primary_p95 is not None]),
              Series("shadow p95", COLORS["shadow"], [(x.t, x.shadow_p95) for x in b if x.shadow_p95 is not None]),
              Series("primary p50", COLORS["primary"], [(x.t, x.primary_p50) for x in b if x.primary_p50 is not None],
                     dashed=True),
              Series("shadow p50", COLORS["shadow"], [(x.t, x.shadow_p50) for x in b if x.shadow_p50 is not None],
                     dashed=True)]
    limit = [(x.t, x.primary_p95 * route.max_latency_ratio) for x in b if x.primary_p95 is not None]
    series.append(Series(f"primary p95 x {route.max_latency_ratio:g}", COLORS["threshold"], limit, dashed=True))
    top = _ceiling([v for s in series for _, v in s.points], 1.0)
    charts.append(chart(f"Latency (ms) against max_latency_ratio {route.max_latency_ratio:g}", series, t0=t0, t1=t1,
                        lo=0.0, hi=top, events=rp.events, unit=""))
    errors = [Series("shadow error rate", COLORS["shadow"], [(x.t, x.shadow_error_rate) for x in b]),
              Series("primary error rate", COLORS["primary"], [(x.t, x.primary_error_rate) for x in b])]
    top = _ceiling([v for s in errors for _, v in s.points] + [route.max_error_rate * 2], 0.01)
    charts.append(chart("Error rates", errors, t0=t0, t1=t1, lo=0.0, hi=min(top, 1.0),
                        thresholds=[(f"max_error_rate {route.max_error_rate:.2%}", route.max_error_rate)],
                        events=rp.events))
    samples = [Series("mirrored samples per bucket", COLORS["axis"], [(x.t, float(x.n)) for x in b])]
    charts.append(chart("Mirrored samples (all replicas)", samples, t0=t0, t1=t1, lo=0.0,
                        hi=_ceiling([v for _, v in samples[0].points], 10.0), events=rp.events))
    return charts


def _progress(rp: RoutePage) -> str:
    m = rp.migration
    if not m:
        if rp.route.legacy_column:
            return '<p class="muted">migration: not measured yet</p>'
        return ""
    pct = float(m.get("percent_migrated") or 0.0)
    return (f'<div class="progress"><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="34" '
            f'viewBox="0 0 {W} 34" role="img" aria-label="migration progress">'
            f'<rect x="0" y="8" width="{W}" height="16" fill="{COLORS["grid"]}"/>'
            f'<path class="series" d="M0,8 H{W * pct / 100:.1f} V24 H0 Z" fill="{COLORS["recall"]}"/></svg>'
            f'<span>migrated to pgvector: {pct:.1f}% ({int(m.get("migrated") or 0):,} rows; '
            f'{int(m.get("legacy_only") or 0):,} legacy-only)</span></div>')


def _verdict_block(report: RouteReport) -> str:
    text = report.verdict
    head, _, rest = text.partition(": ")
    css = {READY: "ready", NOT_READY: "not-ready", INSUFFICIENT: "insufficient"}.get(head, "insufficient")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in rest.split("; ") if r)
    return (f'<div class="verdict {css}"><span class="label">verdict</span> <strong>{html.escape(head)}</strong>'
            + (f"<ul>{reasons}</ul>" if reasons else "") + "</div>")


def _summary_table(rp: RoutePage) -> str:
    s = rp.report.summary
    ratio_ci = s.latency_ratio_interval
    lat = {side: _latency_ms(getattr(s, side)) for side in ("primary", "shadow")}
    rows = [
        ("samples", f"{s.samples:,} mirrored, {s.compared:,} compared"),
        ("recall vs primary", s.recall.text(4) if s.recall else "-"),
        ("recall vs exact (shadow)", s.recall_exact_shadow.text(4) if s.recall_exact_shadow else "-"),
        ("p95 latency (ms)", f"primary {_fmt(lat['primary']['p95'])}, shadow {_fmt(lat['shadow']['p95'])}"),
        ("p95 ratio", (f"{s.latency_ratio:.3f}" if s.latency_ratio is not None else "-")
         + (f" [{ratio_ci[0]:.3f}, {ratio_ci[1]:.3f}]" if ratio_ci else "")),
        ("error rates", f"shadow {_pct(s.shadow_error_rate)} ({s.shadow_errors}), primary "
                        f"{_pct(s.primary_error_rate)} ({s.primary_errors})"),
        ("split now", f"{rp.route.split:g}% to the shadow ({rp.route.sticky})"),
        ("thresholds", f"min_recall {rp.route.min_recall:g}, max_latency_ratio {rp.route.max_latency_ratio:g}, "
                       f"max_error_rate {rp.route.max_error_rate:.2%}, min_samples {rp.route.min_samples}"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _events_table(rp: RoutePage) -> str:
    if not rp.events:
        return '<p class="muted">no split changes or breaker trips in this period</p>'
    rows = "".join(
        f'<tr class="{"trip" if e.trip else "split"}"><td>{html.escape(_stamp(e.t))}</td>'
        f'<td>{"breaker trip" if e.trip else "split change"}</td><td>{_fmt(e.previous)} &#8594; {_fmt(e.split)}</td>'
        f"<td>{html.escape(e.by)}</td><td>{html.escape(e.reason)}</td></tr>" for e in rp.events)
    return ('<table class="events"><tr><th>when (UTC)</th><th>what</th><th>split</th><th>by</th><th>reason</th></tr>'
            f"{rows}</table>")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a202c;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:0 0 8px}.muted{color:#718096}
section.route{border:1px solid #e2e8f0;border-radius:6px;padding:16px;margin:18px 0}
.verdict{padding:10px 14px;border-radius:4px;margin:8px 0 12px;font-size:15px}
.verdict ul{margin:6px 0 0 18px;padding:0}.verdict .label{text-transform:uppercase;font-size:11px;color:#4a5568}
.ready{background:#c6f6d5;border-left:6px solid #2f855a}.not-ready{background:#fed7d7;border-left:6px solid #c53030}
.insufficient{background:#fefcbf;border-left:6px solid #b7791f}
table{border-collapse:collapse;margin:6px 0 12px}th,td{text-align:left;padding:3px 10px 3px 0;vertical-align:top}
table.events td,table.events th{border-bottom:1px solid #edf2f7}tr.trip td{color:#c53030}
.charts{display:flex;flex-wrap:wrap;gap:12px}svg.chart{border:1px solid #edf2f7;background:#fff}
svg text.title{font-size:13px;font-weight:600;fill:#2d3748}svg text.tick,svg text.legend{font-size:10px;fill:#4a5568}
.progress span{margin-left:8px}
"""


def render(page: Page) -> str:
    since = "all samples" if page.since is None else f"the last {_since_text(page.since)}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>pgcutover readiness</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>pgcutover readiness</h1>",
             f'<p class="muted">generated {html.escape(_stamp(page.generated_at))} UTC over {html.escape(since)} '
             f"({html.escape(_stamp(page.t0))} to {html.escape(_stamp(page.t1))}); mirrored samples of every "
             "replica. Markers on the time axis: <span style=\"color:#6b46c1\">split changes</span>, "
             "<span style=\"color:#c53030\">breaker trips</span> (dotted).</p>"]
    if not page.routes:
        parts.append("<p>No [[route]] is configured.</p>")
    for rp in page.routes:
        parts.append(f'<section class="route" id="{html.escape(rp.route.table)}">'
                     f"<h2>route {html.escape(rp.route.table)}</h2>")
        parts.append(_verdict_block(rp.report))
        parts.append(_summary_table(rp))
        parts.append(_progress(rp))
        if rp.route.shadow_table or rp.buckets:
            parts.append('<div class="charts">' + "".join(route_charts(page, rp)) + "</div>")
        parts.append("<h3>split changes and breaker trips</h3>" + _events_table(rp))
        parts.append("</section>")
    parts.append('<p class="muted">intervals: 95%; recall: normal approximation over queries; p95 ratio: order '
                 "statistics of each side; error rates: Wilson. Numbers match <code>pgcutover report</code> and "
                 "SHOW REPORT.</p></body></html>")
    return "\n".join(parts)


def _since_text(since: timedelta) -> str:
    seconds = int(since.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0 and seconds >= size:
            n = seconds // size
            return f"{n} {unit[:-1] if n == 1 else unit}"
    return f"{seconds} seconds"


async def page_for_runtime(rt: Any) -> str:
    """GET /report: the summary this proxy shows in SHOW REPORT, with the time series read now."""
    import asyncio

    from . import control
    from .report import current_reports

    routes = list(rt.routing.routes)
    reports = current_reports(rt)
    migration = dict(rt.migration.latest) if getattr(rt, "migration", None) is not None else None
    async with asyncio.timeout(max(rt.config.proxy.connect_timeout, 1.0) + 10):
        conn = await control.connect(rt.config)
        try:
            page = await fetch_page(conn, routes, reports, DEFAULT_SINCE, migration)
        finally:
            await conn.close()
    return render(page)
