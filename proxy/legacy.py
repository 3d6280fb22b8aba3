"""The running proxy's legacy-vector stores: loaded at start, kept fresh, searched for every session.

One LegacyStore per route with `legacy_column` and `fallback = true`, shared by all sessions; one
BatchSearcher, so concurrent fallback searches become one matrix product. Loading runs in the background:
/readyz stays false until every store is loaded (its body says which store and why), and a query that arrives
earlier waits for its store at most the route's fallback_wait_ms, then gets the route's on_inexact treatment
(proxy/statements.py) rather than an answer that leaves legacy rows out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import asyncpg

from pgcutover.core.config import Route, needs_store
from pgcutover.core.connect import connect
from pgcutover.fallback.knn import BatchSearcher
from pgcutover.fallback.store import LegacyStore

from .merged import MergeCache

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("pgcutover.legacy")


class FallbackService:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.stores: dict[str, LegacyStore] = {}
        self.searcher = BatchSearcher()
        self.tasks: list[asyncio.Task[None]] = []
        self.failed: dict[str, str] = {}
        self.merges = MergeCache(self)
        self.server_decoder = False  # pgcutover.try_vector is installed (bytea legacy formats need it)
        # (route, reason code) -> executions not merged: refused with 0A000 or answered from pgvector rows only
        # (on_inexact); pgcutover_fallback_unmerged_total, SHOW STATS, SHOW FALLBACK. Bounded: reasons are codes.
        self.unmerged: dict[tuple[str, str], int] = {}

    def count_unmerged(self, table: str, reason: str) -> None:
        key = (table, reason)
        self.unmerged[key] = self.unmerged.get(key, 0) + 1

    def not_ready(self) -> list[str]:
        """Why readiness waits, one line per store not loaded yet (route and its last load error)."""
        lines = []
        for table, store in self.stores.items():
            if not store.loaded:
                failed = self.failed.get(table)
                lines.append(f"fallback store {table}: " + (f"load failed: {failed}" if failed else "loading"))
        return lines

    @property
    def ready(self) -> bool:
        return all(store.loaded for store in self.stores.values())

    async def _connect(self) -> asyncpg.Connection:
        config = self.rt.config
        return await connect(config, "pgcutover-fallback")

    def start(self, routes: Iterable[Route]) -> None:
        """A store, loading in the background, for each route that needs one and has none yet."""
        loop = asyncio.get_running_loop()
        for route in routes:
            if needs_store(route) and route.table not in self.stores:
                store = LegacyStore(route, dtype=route.fallback_storage,
                                    channel=self.rt.config.proxy.notify_channel)
                self.stores[route.table] = store
                self.tasks.append(loop.create_task(self._keep(store), name=f"fallback {route.table}"))

    async def _keep(self, store: LegacyStore) -> None:
        """Load (retrying while the upstream is away), then follow change notices for good."""
        table = store.route.table
        while not store.loaded:
            try:
                conn = await self._connect()
                try:
                    self.server_decoder = bool(await conn.fetchval(
                        "SELECT to_regprocedure('pgcutover.try_vector(anyelement,text,integer)') IS NOT NULL"))
                finally:
                    await conn.close()
                report = await store.load(self._connect)
                log.info("fallback %s: %s", table, report)
                self.failed.pop(table, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store that cannot load must not take the proxy down
                self.failed[table] = str(exc)
                log.warning("fallback %s: load failed (%s); retrying", table, exc)
                await asyncio.sleep(2.0)
        await store.follow(self._connect)

    def store_for(self, table: str) -> LegacyStore | None:
        return self.stores.get(table)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
