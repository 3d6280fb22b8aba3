"""What all sessions of one proxy process share: config, cancel keys, live sessions, counters."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pgcutover.core.config import Config, ConfigError, Route
from pgcutover.core.routing import Override, RoutingSnapshot, apply_overrides

from .services import Services

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgcutover.rewrite.router import Router

    from .admin import LocalChange
    from .breaker import Breaker
    from .legacy import FallbackService
    from .metrics import QueryMetrics
    from .migration_stats import MigrationStats
    from .mirror import Mirror
    from .session import Session


@dataclass
class Totals:
    """Counters of sessions that have ended; live sessions keep their own and are summed at scrape time.

    Plain ints on purpose: prometheus-client counters take a lock per increment, which the per-message
    path cannot afford. The metrics collector reads these when Prometheus asks.
    """

    client_connections: int = 0
    protocol_errors: int = 0
    upstream_errors: int = 0
    bytes_from_client: int = 0
    bytes_from_server: int = 0
    messages_from_client: int = 0
    queries: int = 0
    cancels_forwarded: int = 0
    reload_errors: int = 0


@dataclass
class Runtime:
    config: Config
    sessions: set[Session] = field(default_factory=set)
    totals: Totals = field(default_factory=Totals)
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    paused: bool = False
    upstream_ok: bool = False  # last known reachability, for /readyz
    routing: RoutingSnapshot = field(default_factory=lambda: RoutingSnapshot(()))
    overrides: list[Override] = field(default_factory=list)
    local_changes: dict[str, LocalChange] = field(default_factory=dict)  # made while the table was down
    routing_loaded: bool = False
    last_reload_error: str = ""
    routed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route table, target) -> queries
    failovers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route table, sqlstate) -> cycles
    services: Services = field(default_factory=Services)  # built by services.ServiceSupervisor, nothing else
    request_shutdown: Callable[[], None] | None = None  # set by serve(): the admin console's SHUTDOWN
    reload: Callable[[], str] | None = None  # set by serve(): the admin console's RELOAD

    def __post_init__(self) -> None:
        self.routing = RoutingSnapshot(self.config.routes)

    # -- the services, read-only (sessions, the admin console and the metrics read them here) -----------------
    @property
    def router(self) -> Router | None:
        return self.services.router

    @property
    def fallback(self) -> FallbackService | None:
        return self.services.fallback

    @property
    def mirror(self) -> Mirror | None:
        return self.services.mirror

    @property
    def breaker(self) -> Breaker | None:
        return self.services.breaker

    @property
    def migration(self) -> MigrationStats | None:
        return self.services.migration

    @property
    def query_metrics(self) -> QueryMetrics | None:
        return self.services.query_metrics

    @property
    def attention(self) -> bool:
        """Sessions must look at every ReadyForQuery (draining or paused)."""
        return self.shutting_down or self.paused

    def apply_routing(self, config: Config, overrides: list[Override]) -> None:
        """Swap in the TOML routes with the shared overrides, or keep what is in force. Raises ConfigError."""
        generation = max((o.generation for o in overrides), default=self.routing.generation)
        local = [change.override for change in self.local_changes.values()]  # last: they win until reconciled
        try:
            snapshot = apply_overrides(config.routes, [*overrides, *local], generation)
        except ConfigError as exc:
            self.totals.reload_errors += 1
            self.last_reload_error = str(exc)
            raise
        self.config = config
        self.overrides = list(overrides)
        previous, self.routing = self.routing, snapshot
        # Sessions read split and sticky from `routing` at each decision; cached plans only need dropping
        # when something else about a route changed.
        router = self.services.router
        if router is not None and _shape(previous.routes) != _shape(snapshot.routes):
            router.replace_routes(snapshot.routes, router.catalog)

    def apply_local_changes(self, changes: dict[str, LocalChange]) -> None:
        """Admin changes this replica applies alone while the shared routing table is unreachable."""
        previous, self.local_changes = self.local_changes, changes
        try:
            self.apply_routing(self.config, self.overrides)
        except ConfigError:
            self.local_changes = previous
            raise

    def count_routed(self, table: str, target: str) -> None:
        self.routed[(table, target)] += 1

    def count_failover(self, table: str, sqlstate: str) -> None:
        self.failovers[(table, sqlstate)] += 1

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        t = self.totals
        t.bytes_from_client += session.bytes_from_client
        t.bytes_from_server += session.bytes_from_server
        t.messages_from_client += session.messages_from_client
        t.queries += session.queries


def _shape(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    return tuple(replace(route, split=0.0, sticky="session") for route in routes)
