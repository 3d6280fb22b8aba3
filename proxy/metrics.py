"""Prometheus /metrics, /healthz and /readyz on `[proxy] metrics`.

One pattern for every metric: its figures are plain numbers kept by their owner (runtime.Totals and the live
sessions' counters, QueryMetrics, the mirror's and the breaker's counters, MigrationStats.latest, the fallback's
series in fallback/metrics.py), and `families()` turns them into Prometheus families only when Prometheus
scrapes: pass-through traffic pays nothing for them, and no increment takes a lock. prometheus-client serves
the text format and its own process and Python collectors.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from pgcutover.core.config import HostPort, Route
from pgcutover.core.enums import Target
from pgcutover.fallback import metrics as fallback_metrics
from pgcutover.fallback.metrics import cumulative, go_float

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("pgcutover.metrics")


class Families(Collector):
    """The one prometheus-client Collector: whatever `source` builds when scraped."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source()


def runtime_families(rt: Runtime) -> Iterator[Metric]:
    """Connections, bytes and messages (the ended sessions' totals plus the live sessions'), and routing."""
    totals = rt.totals
    sessions = list(rt.sessions)
    yield GaugeMetricFamily("pgcutover_client_connections", "Client connections open now", len(sessions))
    yield GaugeMetricFamily("pgcutover_server_connections", "Upstream connections open now",
                            sum(1 for s in sessions if s.server_transport is not None))
    yield CounterMetricFamily("pgcutover_client_connections", "Client connections accepted",
                              totals.client_connections)
    bytes_in = CounterMetricFamily("pgcutover_bytes", "Bytes relayed", labels=["direction"])
    bytes_in.add_metric(["from_client"], totals.bytes_from_client + sum(s.bytes_from_client for s in sessions))
    bytes_in.add_metric(["from_server"], totals.bytes_from_server + sum(s.bytes_from_server for s in sessions))
    yield bytes_in
    yield CounterMetricFamily("pgcutover_client_messages", "Frontend messages relayed",
                              totals.messages_from_client + sum(s.messages_from_client for s in sessions))
    yield CounterMetricFamily("pgcutover_simple_queries", "Simple Query messages",
                              totals.queries + sum(s.queries for s in sessions))
    yield CounterMetricFamily("pgcutover_protocol_errors", "Clients closed for protocol violations",
                              totals.protocol_errors)
    yield CounterMetricFamily("pgcutover_upstream_errors", "Upstream connect failures and losses",
                              totals.upstream_errors)
    yield CounterMetricFamily("pgcutover_cancels_forwarded", "CancelRequests forwarded upstream",
                              totals.cancels_forwarded)
    yield GaugeMetricFamily("pgcutover_routing_generation", "Generation of the routing in force",
                            rt.routing.generation)
    split = GaugeMetricFamily("pgcutover_route_split_percent", "Percent of similarity queries to the shadow",
                              labels=["route"])
    for route in rt.routing.routes:
        split.add_metric([route.table], route.split)
    yield split
    yield CounterMetricFamily("pgcutover_reload_errors", "Refused configuration reloads and routing changes",
                              totals.reload_errors)
    if rt.router is None:
        return
    stats = rt.router.stats
    decisions = CounterMetricFamily("pgcutover_rewrite_decisions", "Router decisions by reason",
                                    labels=["decision", "reason"])
    for reason, count in stats.passthrough.items():
        decisions.add_metric(["passthrough", reason], count)
    for table in {route.table for route in rt.routing.routes} | set(stats.rewritten):
        decisions.add_metric(["rewrite", f"similarity:{table}"], stats.rewritten.get(table, 0))
    yield decisions
    cache = CounterMetricFamily("pgcutover_plan_cache", "Plan cache lookups", labels=["result"])
    cache.add_metric(["hit"], stats.hits)
    cache.add_metric(["miss"], stats.misses)
    yield cache


def unmerged_families(rt: Runtime) -> Iterator[Metric]:
    if rt.fallback is None:
        return
    unmerged = CounterMetricFamily(
        "pgcutover_fallback_unmerged", "Similarity queries on a fallback route not answered exactly over all "
        "rows (refused with 0A000 or answered from pgvector rows only, per on_inexact), by reason",
        labels=["route", "reason"])
    for (table, reason), count in rt.fallback.unmerged.items():
        unmerged.add_metric([table, reason], count)
    yield unmerged


LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class QueryMetrics:
    """Routed executions by route, target and outcome, and their latency histograms.

    Plain dicts on the client's path: prometheus-client's labels() and observe() take a lock and a lookup each,
    a third of what routing a query costs in Python.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.buckets: dict[tuple[str, str], list[int]] = {}  # one count per bucket, +Inf last
        self.sums: dict[tuple[str, str], float] = {}

    def observe(self, route: str, target: str, seconds: float, ok: bool) -> None:
        key = (route, target, "ok" if ok else "error")
        self.counts[key] = self.counts.get(key, 0) + 1
        pair = (route, target)
        buckets = self.buckets.get(pair)
        if buckets is None:
            buckets = self.buckets[pair] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[pair] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sums[pair] += seconds

    def families(self) -> Iterator[Metric]:
        queries = CounterMetricFamily("pgcutover_queries", "Routed queries by route, target and outcome",
                                      labels=["route", "target", "outcome"])
        for labels, count in self.counts.items():
            queries.add_metric(list(labels), count)
        yield queries
        latency = HistogramMetricFamily("pgcutover_query_duration_seconds",
                                        "Routed query latency, send to ReadyForQuery", labels=["route", "target"])
        for pair, counts in self.buckets.items():
            latency.add_metric(list(pair), cumulative(LATENCY_BUCKETS, counts), self.sums[pair])
        yield latency


def families(rt: Runtime | None) -> list[Metric]:
    """Everything /metrics serves, zero-filled for every configured route."""
    out = [*REGISTRY.collect(), *fallback_metrics.families()]  # REGISTRY: prometheus-client's process collectors
    if rt is not None:
        from .migration_stats import migration_families
        from .report import evidence_families

        out += runtime_families(rt)
        out += (rt.query_metrics or QueryMetrics()).families()
        out += evidence_families(rt)
        out += migration_families(rt.migration.latest if rt.migration is not None else {})
        out += unmerged_families(rt)
    return _zero_fill(out, rt.routing.routes if rt is not None else ())


# -- one naming scheme, and every series from the start -----------------------------------------------------
def _targets(route: Route) -> list[str]:
    targets: list[str] = [Target.PRIMARY]
    if route.shadow_table:
        targets.append(Target.SHADOW)
    if route.legacy_column and route.fallback:
        targets.append(Target.MERGED)
    return targets


def _one(route: Route) -> list[dict[str, str]]:
    return [{}]


def _has_shadow(route: Route) -> list[dict[str, str]]:
    return [{}] if route.shadow_table else []


def _has_fallback(route: Route) -> list[dict[str, str]]:
    return [{}] if route.legacy_column and route.fallback else []


# family -> (type, label sets per configured route). A series the alerts or the dashboard use is exported for
# every route it applies to from the first scrape: counters at 0, histograms empty, gauges NaN (no value yet:
# NaN compares false, so no alert fires on it, and a panel shows no point rather than a made-up 0). Every family
# here is built by families() above (with its help), routes or not.
ROUTE_SERIES: dict[str, tuple[str, Callable[[Route], list[dict[str, str]]]]] = {
    "pgcutover_queries": (
        "counter", lambda r: [{"target": t, "outcome": o} for t in _targets(r) for o in ("ok", "error")]),
    "pgcutover_query_duration_seconds": ("histogram", lambda r: [{"target": t} for t in _targets(r)]),
    "pgcutover_route_split_percent": ("gauge", _one),
    "pgcutover_migration_percent": ("gauge", _one),
    "pgcutover_legacy_only_rows": ("gauge", _one),
    "pgcutover_shadow_diff_keys": ("gauge", _has_shadow),
    "pgcutover_mirror_samples": ("counter", _has_shadow),
    "pgcutover_mirror_dropped": ("counter", _has_shadow),
    "pgcutover_shadow_errors": ("counter", _has_shadow),
    "pgcutover_shadow_recall": ("gauge", _has_shadow),
    "pgcutover_breaker_trips": (
        "counter", lambda r: [{"reason": "error_rate"}, {"reason": "latency"}] if r.shadow_table else []),
    "pgcutover_fallback_legacy_rows": ("gauge", _has_fallback),
    "pgcutover_fallback_bytes": ("gauge", _has_fallback),
    "pgcutover_fallback_refresh_lag_seconds": ("gauge", _has_fallback),
    "pgcutover_fallback_search_seconds": ("histogram", _has_fallback),
    "pgcutover_fallback_batch_size": ("histogram", _has_fallback),
    "pgcutover_fallback_skipped_rows": ("counter", _has_fallback),
}


def _skipped_rows_total() -> Metric:
    """pgcutover_fallback_skipped_rows_total{route}: the skipped reads of every reason, added up."""
    total = CounterMetricFamily("pgcutover_fallback_skipped_rows",
                                "Reads of legacy rows skipped because the value is not a vector", labels=["route"])
    sums: dict[str, float] = {}
    for (table, _), reads in fallback_metrics.SKIPPED_TOTAL.values.items():
        sums[table] = sums.get(table, 0.0) + reads.get()
    for route, count in sorted(sums.items()):
        total.add_metric([route], count)
    return total


def _zero_fill(families: list[Metric], routes: tuple[Route, ...]) -> list[Metric]:
    families.append(_skipped_rows_total())  # beside the gauge of the same base name (rows skipped now)
    for name, (kind, label_sets) in ROUTE_SERIES.items():
        family = next((f for f in families if f.name == name and f.type == kind), None)
        if family is None:  # no runtime installed yet, so no routes either
            continue
        for route in routes:
            for extra in label_sets(route):
                if not any(s.labels.get("route") == route.table and all(s.labels.get(k) == v for k, v in extra.items())
                           for s in family.samples):
                    family.samples.extend(_zero_samples(family, {"route": route.table, **extra}))
    return families


def _zero_samples(family: Metric, labels: dict[str, str]) -> list[Sample]:
    if family.type == "counter":
        return [Sample(family.name + "_total", labels, 0.0)]
    if family.type == "histogram":
        buckets = [Sample(family.name + "_bucket", {**labels, "le": go_float(b)}, 0.0)
                   for b in (*LATENCY_BUCKETS, float("inf"))]
        return [*buckets, Sample(family.name + "_count", labels, 0.0), Sample(family.name + "_sum", labels, 0.0)]
    return [Sample(family.name, labels, float("nan"))]


def not_ready_reasons(rt: Runtime | None) -> list[str]:
    """What /readyz says when it answers 503: each condition that is not met, with the route and error."""
    if rt is None:
        return []
    reasons = []
    if rt.shutting_down:
        reasons.append("shutting down")
    if not rt.upstream_ok:
        reasons.append("upstream not reachable")
    if not rt.routing_loaded:
        reasons.append("routing not loaded")
    if rt.fallback is not None:
        reasons += rt.fallback.not_ready()
    return reasons


class _Current:
    """The runtime this process serves: the one installed last (tests start several in one process)."""

    runtime: Runtime | None = None


_current = _Current()
_served = CollectorRegistry(auto_describe=False)  # the connections gauge and its _total counter share a base name
_served.register(Families(lambda: families(_current.runtime)))


def install(runtime: Runtime) -> CollectorRegistry:
    """Serve this runtime's figures (and the process's) on /metrics."""
    _current.runtime = runtime
    return _served


class HttpEndpoints:
    """A minimal HTTP/1.0 server: enough for Prometheus and orchestrator probes, no framework needed."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool], token: str | None = None) -> None:
        self.registry = registry
        self.ready = ready
        self.token = token  # when set, /metrics needs "Authorization: Bearer <token>"; the probes stay open
        self.server: asyncio.Server | None = None

    async def start(self, where: HostPort) -> None:
        self.server = await asyncio.start_server(self._handle, where.host, where.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode("ascii", "replace") if request.count(b" ") >= 2 else "/"
            path = path.split("?", 1)[0]
            if path in ("/metrics", "/report") and not self._authorized(request):
                status, ctype, body = "401 Unauthorized", "text/plain", b"bearer token required\n"
            elif path == "/report":
                status, ctype, body = await self._report()
            else:
                status, ctype, body = self._route(path)
            head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _authorized(self, request: bytes) -> bool:
        if not self.token:
            return True
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                return hmac.compare_digest(value.strip(), f"Bearer {self.token}".encode())
        return False

    async def _report(self) -> tuple[str, str, bytes]:
        """The readiness page (proxy/report_html.py) of the runtime this process serves."""
        from .report_html import page_for_runtime

        rt = _current.runtime
        if rt is None:
            return "503 Service Unavailable", "text/plain", b"not started\n"
        try:
            page = await page_for_runtime(rt)
        except Exception as exc:  # the database may be away: say so, the endpoint stays up
            log.warning("GET /report failed: %s", exc)
            return "503 Service Unavailable", "text/plain", f"readiness page unavailable: {exc}\n".encode()
        return "200 OK", "text/html; charset=utf-8", page.encode()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return "200 OK", "text/plain", b"ready\n"
            body = "".join(f"{line}\n" for line in ["not ready", *not_ready_reasons(_current.runtime)])
            return "503 Service Unavailable", "text/plain; charset=utf-8", body.encode()
        return "404 Not Found", "text/plain", b"not found\n"
