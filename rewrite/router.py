"""The router: SQL text in, Plan out. Pre-filter, then a cached plan; planning never raises.

    router = Router(config.routes, catalog)
    plan = router.plan(sql, search_path)           # microseconds on a cache hit or a pre-filter miss
    sql_to_send = plan.sql_for(target) or original  # target from rewrite.split

Plans are built once per (SQL text, search_path) and cached; the split decision is made per query by the
caller, so a cached plan serves every target and every split value.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp
from sqlglot.errors import SqlglotError

from rewrite.analyze import Passthrough, analyze, normalize_search_path
from rewrite.cache import PlanCache
from rewrite.dialect import parse, to_sql
from rewrite.plan import SIMILARITY, Plan, passthrough
from rewrite.prefilter import Prefilter
from rewrite.transforms import primary_changes, to_primary, to_shadow

if TYPE_CHECKING:
    from proxy.config import Route
    from rewrite.catalog import Catalog

log = logging.getLogger("pgcutover.rewrite")

DEFAULT_SEARCH_PATH = ("public",)
_PREFILTERED = passthrough("prefilter")


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
                 cache_bytes: int = 128 << 20) -> None:
        self._cache: PlanCache[Plan] = PlanCache(cache_size, cache_bytes)
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

    @property
    def stats(self) -> RouterStats:
        return RouterStats(self._cache.hits, self._cache.misses, len(self._cache), self._cache.bytes,
                           Counter(self._passthrough), Counter(self._rewritten))

    def plan(self, sql: str, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH) -> Plan:
        if not self._routes or not self._prefilter.might_match(sql):
            self._passthrough["prefilter"] += 1
            return _PREFILTERED
        key = (sql, search_path)
        plan = self._cache.get(key)
        if plan is None:
            plan = build_plan(sql, self._routes, search_path, self._catalog)
            self._cache.put(key, plan, _plan_bytes(sql, plan))
        if plan.query is None:
            self._passthrough[plan.reason] += 1
        else:
            self._rewritten[plan.query.route.table] += 1
        return plan


def _plan_bytes(sql: str, plan: Plan) -> int:
    """Rough memory held by a cache entry: the key text, the output texts, and the parsed statement."""
    if plan.query is None:
        return len(sql) + 200
    return 16_000 + 3 * len(sql) + len(plan.primary_sql or "") + len(plan.shadow_sql or "")


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
