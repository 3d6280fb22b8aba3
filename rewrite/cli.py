"""`pgcutover explain --config FILE "SQL"`: the router's decision for one statement, and what each target gets.

The decision (Forward / Rewrite / Merge / Refuse) is rewrite/decision.py's `decide()`, the pure function whose
value the proxy applies to every execution, fed the same snapshot: the router's plan, the targets the split can
pick, whether the route has a fallback store (core/config.py's needs_store) and the merge's verdict on the shape
(fallback/merge.py's build_merge, as the proxy's merge cache calls it). Only what is known at execution
(the store not loaded yet, an unreadable vector value) can still turn a "merge" into a "refuse".

Works offline (no catalog: no index matching, `SELECT *` on the shadow passes through with reason
"star-needs-catalog"); `--live` reads the catalog from the configured upstream first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from pgcutover.core.config import Config, Route, load_config, needs_store
from pgcutover.core.connect import connect
from pgcutover.core.enums import Target
from pgcutover.fallback.merge import build_merge
from pgcutover.rewrite.analyze import Passthrough, SimilarityQuery, normalize_search_path
from pgcutover.rewrite.catalog import Catalog, load_catalog
from pgcutover.rewrite.decision import Decision, decide
from pgcutover.rewrite.plan import Plan
from pgcutover.rewrite.router import build_plan

UNCHANGED = "(the client's SQL, byte for byte)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = subparsers.add_parser(
        "explain", help="dry run: how a statement would be routed",
        description="Print the routing decision for SQL, the reason, and the SQL each target would receive.")
    explain.add_argument("--config", required=True, help="TOML file with the [[route]] entries")
    explain.add_argument("--search-path", default="public",
                         help='comma-separated search_path to resolve unqualified tables (default "public")')
    explain.add_argument("--live", action="store_true",
                         help="read table columns and vector indexes from the upstream first")
    explain.add_argument("sql", help='the statement; "-" reads it from stdin')
    explain.set_defaults(func=cmd_explain)


async def _live_catalog(config: Config) -> tuple[Catalog, bool]:
    """The catalog, and whether pgcutover.try_vector is installed (the merge needs it for bytea formats)."""
    conn = await connect(config, "pgcutover-explain")
    try:
        decoder = bool(await conn.fetchval(
            "SELECT to_regprocedure('pgcutover.try_vector(anyelement,text,integer)') IS NOT NULL"))
        return await load_catalog(conn, config.routes), decoder
    finally:
        await conn.close()


def decisions(plan: Plan, catalog: Catalog | None, server_decoder: bool = True) -> list[Decision]:
    """One decision per target the split can pick for this statement (both when 0 < split < 100)."""
    route = plan.route
    if route is None:
        return [decide(plan, None)]
    if plan.passthrough:  # a route is named only for a similarity query the router could not plan
        return [decide(plan, Target.PRIMARY, route, store=needs_store(route))]
    both = [Target.PRIMARY, Target.SHADOW]
    targets = both[:1] if route.split <= 0 else both[1:] if route.split >= 100 else both
    store = needs_store(route)
    out = []
    for target in targets:
        unmergeable = _unmergeable(plan, route, catalog, server_decoder) if target == Target.PRIMARY and store else None
        out.append(decide(plan, target, route, store=store, unmergeable=unmergeable))
    return out


def _unmergeable(plan: Plan, route: Route, catalog: Catalog | None, server_decoder: bool) -> str | None:
    assert plan.query is not None
    try:
        build_merge(plan.query, catalog, server_decoder=server_decoder)
    except Passthrough as exc:
        return exc.reason
    return None


def cmd_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = load_config(args.config)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    search_path = normalize_search_path(args.search_path.split(","))
    catalog = None
    decoder = True  # offline: assume install-triggers ran (bytea legacy formats need pgcutover.try_vector)
    catalog_note = "none (offline: no index matching, no SELECT * on shadows)"
    if args.live:
        try:
            catalog, decoder = asyncio.run(_live_catalog(config))
            catalog_note = f"loaded from {config.proxy.upstream.host}:{config.proxy.upstream.port}"
        except Exception as exc:  # a dry run still answers without the server
            catalog_note = f"unavailable ({exc}); planning without it"
    plan = build_plan(sql, config.routes, search_path, catalog)
    out.write(render(plan, search_path, catalog_note, decisions(plan, catalog, decoder)))
    return 0


def render(plan: Plan, search_path: tuple[str, ...], catalog_note: str,
           decided: list[Decision] | None = None) -> str:
    decided = decided or decisions(plan, None)
    lines = [f"search_path: {', '.join(search_path)}", f"catalog:     {catalog_note}"]
    if len(decided) == 1:
        lines.append(f"decision:    {decided[0].action}")
    else:
        lines.append("decision:    " + "; ".join(f"{d.action} ({d.target if d.action != 'merge' else 'primary'})"
                                                 for d in decided))
    if plan.passthrough:
        lines += [f"reason:      {plan.reason}", f"primary:     {UNCHANGED}", f"shadow:      {UNCHANGED}"]
        return "\n".join(lines) + "\n"
    query = plan.query
    route = plan.route
    assert query is not None and route is not None
    lines += [f"decided:     {d.describe()}" for d in decided]
    lines += [
        f"reason:      {plan.reason}",
        f"route:       {route.table} (column {route.column} -> {route.pg_vector_column}; "
        f"shadow {route.shadow_table or '-'}; split {route.split:g}% to shadow, sticky {route.sticky})",
        f"similarity:  {query.operator} ({query.metric}) in {', '.join(sorted({d.clause for d in query.distances}))}"
        f"; query vector {_vector(query)}; limit {_bound(query.limit_value, query.limit_param)}"
        f"; offset {_bound(query.offset_value, query.offset_param)}",
        f"primary:     {plan.primary_sql or UNCHANGED}",
        f"shadow:      {plan.shadow_sql if route.shadow_table else '(no shadow_table configured)'}",
    ]
    return "\n".join(lines) + "\n"


def _vector(query: SimilarityQuery) -> str:
    if query.param_index is not None:
        return f"${query.param_index}"
    if query.literal is not None:
        text = query.literal
        return f"literal {text[:40]}{'...' if len(text) > 40 else ''}"
    return "expression"


def _bound(value: int | None, param: int | None) -> str:
    if value is not None:
        return str(value)
    if param is not None:
        return f"${param}"
    return "-"
