"""The router: SQL text in, Plan out. Pre-filter, then a cached plan; planning never raises.

    router = Router(config.routes, catalog)
    plan = router.plan(sql, search_path)           # microseconds on a cache hit or a pre-filter miss
    sql_to_send = plan.sql_for(target) or original  # target from rewrite.split

Plans are built once per (SQL text, search_path) and cached; the split decision is made per query by the
caller, so a cached plan serves every target and every split value.

Planning a cache miss costs milliseconds of pure Python (tens of milliseconds with a large vector literal), too
long for the event loop every session shares: one client sending distinct similarity queries would stall all
the others. So the proxy calls `lookup()` (hits and pre-filter misses only, microseconds) and, on a miss,
`await plan_async()`, which plans on one background thread. The session holds that client's later messages
while its statement is planned (so each client has at most one planning in flight, and the executor's FIFO
takes clients in turn), and texts above MAX_PLAN_SQL bytes are not planned at all. sqlglot holds the GIL while
it works, so the thread competes with the event loop for it: PLANNER_SWITCH_INTERVAL makes it hand the GIL
back often, and PLANNER_NICE makes the OS run it last when CPUs are busy (bench/security.py measures another
client's latency during a flood).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp
from sqlglot.errors import SqlglotError

from pgcutover.rewrite.analyze import Passthrough, analyze, normalize_search_path
from pgcutover.rewrite.cache import PlanCache
from pgcutover.rewrite.dialect import parse, to_sql
from pgcutover.rewrite.plan import SIMILARITY, Plan, passthrough
from pgcutover.rewrite.prefilter import Prefilter
from pgcutover.rewrite.transforms import primary_changes, to_primary, to_shadow

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.catalog import Catalog

log = logging.getLogger("pgcutover.rewrite")

DEFAULT_SEARCH_PATH = ("public",)
_PREFILTERED = passthrough("prefilter")
MAX_PLAN_SQL = 1 << 20  # bytes; 16,000 dimensions (pgvector's maximum) in text are ~300 kB: larger is not planned
_TOO_LARGE = passthrough("too-large")
PLANNER_SWITCH_INTERVAL = 0.0005  # seconds a thread may keep the GIL while another waits (Python's default: 5 ms)
PLANNER_NICE = 10  # the planner thread's niceness: on a busy host its CPU goes last, after the event loop's


def _lower_priority() -> None:
    """Linux schedules threads as tasks: a nicer planner thread yields the CPU to the event loop (and to the
    database on the same host). Raising one's own niceness needs no privilege."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PLANNER_NICE)


@dataclass
class RouterStats:
    hits: int = 0
    misses: int = 0
    cached: int = 0  # entries
    cached_bytes: int = 0  # estimate
    passthrough: Counter[str] = field(default_factory=Counter)  # reason -> queries
    rewritten: Counter[str] = field(default_factory=Counter)  # route table -> queries


class Router:
    def __init__(self, routes: Sequence[Route], catalog: Catalog | None = None, cache_size: int = 4096,
                 cache_bytes: int = 128 << 20, max_sql: int = MAX_PLAN_SQL) -> None:
        self._cache: PlanCache[Plan] = PlanCache(cache_size, cache_bytes)
        self.max_sql = max_sql
        self._executor: ThreadPoolExecutor | None = None  # created on the first off-loop planning
        self._generation = 0  # replace_routes() bumps it: a plan made for older routes is not cached
        # Plans kept alive by sessions' prepared statements (they outlive their cache entry), counted once per
        # plan however many sessions hold it, and bounded like the cache: a client that prepares distinct
        # statements on many connections cannot grow the proxy past it (statements.SessionLimit).
        self._held: dict[int, list[Any]] = {}  # id(plan) -> [plan, holders, bytes]
        self.held_bytes = 0
        self.max_held_bytes = cache_bytes
        self._passthrough: Counter[str] = Counter()
        self._rewritten: Counter[str] = Counter()
        self.replace_routes(routes, catalog)

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    def replace_routes(self, routes: Sequence[Route], catalog: Catalog | None = None) -> None:
        """Live reload: new routes (and catalog) apply to the next plan; cached plans are dropped."""
        self._routes = tuple(routes)
        self._catalog = catalog
        self._prefilter = Prefilter(self._routes)
        self._cache.clear()
        self._generation += 1

    def _too_large(self, sql: str) -> Plan:
        """Too large to plan, yet it may be a similarity query (it passed the pre-filter): name a route it
        mentions, one with a fallback first, so that a route with legacy rows refuses it loudly (on_inexact)
        rather than answer from pgvector rows only. Rare, so a plain scan per route is fine."""
        mentioned = [route for route in self._routes
                     if re.search(r"(?<![\w$])" + re.escape(route.relname) + r"(?![\w$])", sql, re.IGNORECASE)]
        mentioned.sort(key=lambda route: not (route.fallback and route.legacy_column))
        return passthrough("too-large", mentioned[0]) if mentioned else _TOO_LARGE

    @property
    def stats(self) -> RouterStats:
        return RouterStats(self._cache.hits, self._cache.misses, len(self._cache), self._cache.bytes,
                           Counter(self._passthrough), Counter(self._rewritten))

    def plan(self, sql: str, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH) -> Plan:
        """Synchronous: plans a miss right here (CLI commands, tests). The proxy uses lookup/plan_async."""
        plan = self.lookup(sql, search_path)
        if plan is None:
            plan = build_plan(sql, self._routes, search_path, self._catalog)
            self._cache.put((sql, search_path), plan, plan_bytes(sql, plan))
            self._count(plan)
        return plan

    def lookup(self, sql: str, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH) -> Plan | None:
        """The plan when it costs nothing to know (pre-filter miss, cache hit, too large); None: plan_async()."""
        if not self._routes or not self._prefilter.might_match(sql):
            self._passthrough["prefilter"] += 1
            return _PREFILTERED
        if len(sql) > self.max_sql:
            self._passthrough["too-large"] += 1
            return self._too_large(sql)
        plan = self._cache.get((sql, search_path))
        if plan is not None:
            self._count(plan)
        return plan

    async def plan_async(self, sql: str, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH) -> Plan:
        """Plan a miss on the planner thread and cache it."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcutover-planner",
                                                initializer=_lower_priority)
            if sys.getswitchinterval() > PLANNER_SWITCH_INTERVAL:
                sys.setswitchinterval(PLANNER_SWITCH_INTERVAL)
        generation, routes, catalog = self._generation, self._routes, self._catalog
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(self._executor, build_plan, sql, routes, search_path, catalog)
        if generation == self._generation:
            self._cache.put((sql, search_path), plan, plan_bytes(sql, plan))
        self._count(plan)
        return plan

    def hold(self, plan: Plan, sql: str) -> bool:
        """A prepared statement keeps `plan`; False when that would pass max_held_bytes."""
        entry = self._held.get(id(plan))
        if entry is not None:
            entry[1] += 1
            return True
        size = plan_bytes(sql, plan)
        if self.held_bytes + size > self.max_held_bytes:
            return False
        self._held[id(plan)] = [plan, 1, size]
        self.held_bytes += size
        return True

    def release(self, plan: Plan) -> None:
        entry = self._held.get(id(plan))
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._held[id(plan)]
                self.held_bytes -= entry[2]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _count(self, plan: Plan) -> None:
        if plan.query is None:
            self._passthrough[plan.reason] += 1
        else:
            self._rewritten[plan.query.route.table] += 1


def plan_bytes(sql: str, plan: Plan) -> int:
    """Memory held by a cache entry: the key text, the output texts, and the parsed statement. Measured with
    tracemalloc (bench/security.py's literal flood): 46 kB for a small similarity query, 101 kB with a
    1,536-dimension literal, 544 kB with 8,000; this errs on the high side."""
    if plan.query is None:
        return len(sql) + 200
    return 40_000 + 3 * len(sql) + len(plan.primary_sql or "") + len(plan.shadow_sql or "")



def build_plan(sql: str, routes: Sequence[Route], search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH,
               catalog: Catalog | None = None) -> Plan:
    """Parse, recognise and rewrite `sql` (no cache, no pre-filter). Never raises."""
    query = None
    try:
        search_path = normalize_search_path(search_path)
        query = analyze(sql, routes, search_path, catalog)
        _check_stable(query.expression)
        primary_sql = None
        if primary_changes(query, catalog):
            primary_sql = _checked_sql(to_primary(query.expression, query, catalog))
        shadow_sql = None
        if query.route.shadow_table:
            shadow_sql = _checked_sql(to_shadow(query.expression, query, catalog))
        return Plan(route=query.route, reason=SIMILARITY, primary_sql=primary_sql, shadow_sql=shadow_sql,
                    query=query)
    except Passthrough as decision:
        return passthrough(decision.reason, decision.route or (query.route if query is not None else None))
    except SqlglotError as exc:
        log.debug("sqlglot could not handle %r: %s", sql[:200], exc)
        return passthrough("parse-error")
    except Exception:  # planning must never take the proxy down: forward the client's bytes instead
        log.exception("internal error while planning %r", sql[:200])
        return passthrough("internal-error")


def _check_stable(expression: exp.Expression) -> None:
    """What sqlglot prints for the untouched statement must parse back to the same tree; otherwise printing a
    rewrite of it could change its meaning."""
    reparsed = parse(to_sql(expression))
    if len(reparsed) != 1 or reparsed[0] != expression:
        raise Passthrough("unstable-sql")


def _checked_sql(expression: exp.Expression) -> str:
    sql = to_sql(expression)
    if len(parse(sql)) != 1:
        raise Passthrough("unstable-sql")
    return sql
