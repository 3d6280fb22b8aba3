"""Prometheus /metrics, /healthz and /readyz on `[proxy] metrics`.

Hot-path counters are plain ints on the sessions and the runtime (see runtime.Totals); this collector
turns them into Prometheus metrics only when scraped, so pass-through traffic pays nothing for them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .config import HostPort
from .runtime import Runtime

log = logging.getLogger("pgcutover.metrics")

class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rt, totals = self.rt, self.rt.totals
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
        yield from self._routing()

    def _routing(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rt = self.rt
        yield GaugeMetricFamily("pgcutover_routing_generation", "Generation of the routing in force",
                                rt.routing.generation)
        split = GaugeMetricFamily("pgcutover_route_split_percent", "Percent of similarity queries to the shadow",
                                  labels=["route"])
        for route in rt.routing.routes:
            split.add_metric([route.table], route.split)
        yield split
        yield CounterMetricFamily("pgcutover_reload_errors", "Refused configuration reloads and routing changes",
                                  rt.totals.reload_errors)
        if rt.router is None:
            return
        stats = rt.router.stats
        decisions = CounterMetricFamily("pgcutover_rewrite_decisions", "Router decisions by reason",
                                        labels=["decision", "reason"])
        for reason, count in stats.passthrough.items():
            decisions.add_metric(["passthrough", reason], count)
        for table, count in stats.rewritten.items():
            decisions.add_metric(["rewrite", f"similarity:{table}"], count)
        yield decisions
        cache = CounterMetricFamily("pgcutover_plan_cache", "Plan cache lookups", labels=["result"])
        cache.add_metric(["hit"], stats.hits)
        cache.add_metric(["miss"], stats.misses)
        yield cache


LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class QueryMetrics:
    """Routed executions by route, target and outcome, and their latency histograms.

    Kept in plain dicts and turned into Prometheus families at scrape time: prometheus-client's labels() and
    observe() take a lock and a lookup each, a third of what routing a query costs in Python.
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

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        queries = CounterMetricFamily("pgcutover_queries", "Routed queries by route, target and outcome",
                                      labels=["route", "target", "outcome"])
        for labels, count in self.counts.items():
            queries.add_metric(list(labels), count)
        yield queries
        latency = HistogramMetricFamily("pgcutover_query_duration_seconds",
                                        "Routed query latency, send to ReadyForQuery", labels=["route", "target"])
        for pair, counts in self.buckets.items():
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                cumulative.append((floatToGoString(bound), running))
            latency.add_metric(list(pair), cumulative, self.sums[pair])
        yield latency


_installed: dict[str, object] = {}


class _CurrentRuntime(Collector):
    """Collects from whichever runtime was installed last. Registered once per process: unregistering is not
    an option, because two of our families share a base name (the connections gauge and its _total counter)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rt = self.runtime
        if rt is None:
            return
        from .report import EvidenceCollector

        yield from RuntimeCollector(rt).collect()
        if rt.query_metrics is not None:
            yield from rt.query_metrics.collect()
        yield from EvidenceCollector(rt).collect()
        if rt.migration is not None:
            yield from rt.migration.collect()
        if rt.fallback is not None:
            unmerged = CounterMetricFamily(
                "pgcutover_fallback_unmerged", "Similarity queries on a fallback route not answered exactly over all "
                "rows (refused with 0A000 or answered from pgvector rows only, per on_inexact), by reason",
                labels=["route", "reason"])
            for (table, reason), count in rt.fallback.unmerged.items():
                unmerged.add_metric([table, reason], count)
            yield unmerged


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


_current = _CurrentRuntime()


def install(runtime: Runtime) -> CollectorRegistry:
    """Serve the default registry (fallback/ and evidence metrics live there) plus this runtime's figures."""
    disable_created_metrics()  # *_created series only double the scrape for counters that never reset
    if not _installed:
        _installed["current"] = _current
        REGISTRY.register(_current)
    runtime.query_metrics = QueryMetrics()
    _current.runtime = runtime
    return REGISTRY


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
            if path == "/metrics" and not self._authorized(request):
                status, ctype, body = "401 Unauthorized", "text/plain", b"bearer token required\n"
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
