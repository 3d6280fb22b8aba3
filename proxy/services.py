"""The proxy's long-lived services, built in one place from the routes in force.

`Services` is a frozen container: the runtime holds one, sessions read it, and only `ServiceSupervisor` builds
and replaces it (at start, and after a reload whose new routes need a service that did not exist yet). No
service writes itself into the runtime.

Which service exists depends on the routes: a router and migration figures for any route, the fallback for a
route searching legacy rows in memory (legacy.needs_store), the mirror and the breaker for a route with a
shadow, the query metrics when `[proxy] metrics` is set. A reload may add routes: a service they need is
built then (the router without the catalog at first: it is read in the background); a service whose routes
were removed keeps running, idle, until the process ends (it looks at the routes in force at each step).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pgcutover.core.config import Config, Route
    from pgcutover.rewrite.catalog import Catalog
    from pgcutover.rewrite.router import Router

    from .breaker import Breaker
    from .legacy import FallbackService
    from .metrics import QueryMetrics
    from .migration_stats import MigrationStats
    from .mirror import Mirror
    from .runtime import Runtime

log = logging.getLogger("pgcutover")


class _Runs(Protocol):
    def run(self) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True, slots=True)
class Services:
    router: Router | None = None  # any route configured
    fallback: FallbackService | None = None  # a route searches legacy rows in memory
    mirror: Mirror | None = None  # a route has a shadow
    breaker: Breaker | None = None  # a route has a shadow
    migration: MigrationStats | None = None  # any route configured
    query_metrics: QueryMetrics | None = None  # [proxy] metrics is set


async def make_router(config: Config) -> Router | None:
    """The rewrite engine for the configured routes, with the upstream's catalog when it can be read."""
    if not config.routes:
        return None
    from pgcutover.rewrite.router import Router

    return Router(config.routes, await read_catalog(config, config.routes), cache_bytes=config.proxy.plan_cache_bytes)


async def read_catalog(config: Config, routes: Sequence[Route]) -> Catalog | None:
    """The upstream's catalog for `routes`, or None when it cannot be read (routing still works without it,
    minus index matching and SELECT * on shadows)."""
    from pgcutover.rewrite.catalog import load_catalog

    from .control import connect

    try:
        conn = await connect(config)
        try:
            return await load_catalog(conn, routes)
        finally:
            await conn.close()
    except Exception as exc:
        log.warning("could not read the upstream catalog (%s); routing without it", exc)
        return None


def build_services(runtime: Runtime, current: Services, router: Router | None) -> Services:
    """`current` plus every service the routes in force need and it lacks. The one place services are built."""
    from pgcutover.core.config import needs_store

    from .breaker import Breaker
    from .legacy import FallbackService
    from .metrics import QueryMetrics
    from .migration_stats import MigrationStats
    from .mirror import Mirror

    routes = runtime.routing.routes
    fallback, mirror, breaker = current.fallback, current.mirror, current.breaker
    if fallback is None and any(needs_store(route) for route in routes):
        fallback = FallbackService(runtime)
    if any(route.shadow_table for route in routes):
        mirror = mirror or Mirror(runtime)
        breaker = breaker or Breaker(runtime)
    return Services(
        router=router, fallback=fallback, mirror=mirror, breaker=breaker,
        migration=current.migration or (MigrationStats(runtime) if routes else None),
        query_metrics=current.query_metrics or (QueryMetrics() if runtime.config.proxy.metrics is not None else None))


def _catalog_tables(routes: Sequence[Route]) -> set[str]:
    return {table for route in routes for table in (route.table, route.shadow_table) if table}


class ServiceSupervisor:
    """Builds the runtime's services, runs their background tasks and closes them; the only writer of
    `runtime.services`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._tasks: list[asyncio.Task[None]] = []
        self._catalog_for = _catalog_tables(runtime.routing.routes)  # the tables the router's catalog describes

    async def start(self) -> Services:
        self._install(build_services(self.rt, Services(), await make_router(self.rt.config)))
        return self.rt.services

    def extend(self) -> Services:
        """After a reload: build what the routes now in force need (RELOAD and SIGHUP run on the loop)."""
        current, routes = self.rt.services, self.rt.routing.routes
        router = current.router
        if router is None and routes:
            from pgcutover.rewrite.router import Router

            router = Router(routes, None, cache_bytes=self.rt.config.proxy.plan_cache_bytes)
        tables = _catalog_tables(routes)
        if router is not None and tables - self._catalog_for:  # tables the catalog in use knows nothing of
            self._catalog_for = tables
            self._spawn(self._load_catalog(router), "catalog")
        self._install(build_services(self.rt, current, router))
        return self.rt.services

    async def _load_catalog(self, router: Router) -> None:
        catalog = await read_catalog(self.rt.config, self.rt.routing.routes)
        if catalog is not None:
            router.replace_routes(self.rt.routing.routes, catalog)

    def _install(self, new: Services) -> None:
        old, self.rt.services = self.rt.services, new
        if new.fallback is not None:
            new.fallback.start(self.rt.routing.routes)  # a store for each route that has none yet
        running: list[tuple[_Runs | None, _Runs | None, str]] = [
            (new.mirror, old.mirror, "mirror"), (new.breaker, old.breaker, "breaker"),
            (new.migration, old.migration, "migration")]
        for service, before, name in running:
            if service is not None and service is not before:
                self._spawn(service.run(), name)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]  # catalog reads end; reloads repeat
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=f"pgcutover {name}"))

    async def close(self) -> None:
        services = self.rt.services
        if services.mirror is not None:
            await services.mirror.close()  # writes the samples still queued
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)  # the breaker drops its connection as it ends
        if services.fallback is not None:
            await services.fallback.close()

