"""`pgcutover init`, `route list|set|history` and `rollback`: the operator's side of the shared routing table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from pgcutover.core.config import STICKY_MODES, Config, load_config
from pgcutover.core.routing import apply_overrides

from . import control


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("PGCUTOVER_CONFIG"),
                        required="PGCUTOVER_CONFIG" not in os.environ,
                        help="the TOML file `serve` uses (default: $PGCUTOVER_CONFIG)")


def _run(args: argparse.Namespace, action: Callable[[object, Config], Awaitable[int]]) -> int:
    config = load_config(args.config)

    async def main() -> int:
        conn = await control.connect(config)
        try:
            return await action(conn, config)
        finally:
            await conn.close()

    return asyncio.run(main())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def cmd_init(args: argparse.Namespace) -> int:
    async def action(conn, config: Config) -> int:
        await control.init_schema(conn)
        print("schema pgcutover ready (routing, routing_history)")
        return 0

    return _run(args, action)


def cmd_route_list(args: argparse.Namespace) -> int:
    async def action(conn, config: Config) -> int:
        overrides = await control.load_overrides(conn)
        generation = max((o.generation for o in overrides), default=0)
        snapshot = apply_overrides(config.routes, overrides, generation)
        rows = []
        for route in snapshot.routes:
            override = snapshot.overrides.get(route.table)
            rows.append({
                "table": route.table, "split": route.split, "sticky": route.sticky,
                "shadow_table": route.shadow_table, "generation": override.generation if override else 0,
                "changed_by": override.changed_by if override else "config file",
                "changed_at": override.changed_at if override else None,
            })
        if args.json:
            print(json.dumps({"generation": generation, "routes": rows}, indent=2))
        else:
            print_table(["table", "split", "sticky", "shadow", "generation", "changed by", "changed at"],
                        [[r["table"], f"{r['split']:g}", r["sticky"], r["shadow_table"], r["generation"],
                          r["changed_by"], r["changed_at"]] for r in rows])
        return 0

    return _run(args, action)


def cmd_route_set(args: argparse.Namespace) -> int:
    async def action(conn, config: Config) -> int:
        change = await control.set_route(conn, config, args.table, args.split, sticky=args.sticky,
                                         actor=control.default_actor("route set"), reason=args.reason)
        print(f"{change.table}: split {change.previous_split:g} -> {change.split:g}"
              f"{f', sticky {change.sticky}' if change.sticky else ''} (generation {change.generation})")
        return 0

    return _run(args, action)


def cmd_rollback(args: argparse.Namespace) -> int:
    if not args.all and not args.table:
        print("pgcutover rollback: name a TABLE or --all", file=sys.stderr)
        return 2

    async def action(conn, config: Config) -> int:
        changes = await control.rollback(conn, config, None if args.all else [args.table],
                                         actor=control.default_actor("rollback"), reason=args.reason)
        for change in changes:
            print(f"{change.table}: split {change.previous_split:g} -> 0 (generation {change.generation})")
        return 0

    return _run(args, action)


def cmd_route_history(args: argparse.Namespace) -> int:
    async def action(conn, config: Config) -> int:
        rows = await control.history(conn, config, args.table)
        print_table(["generation", "split", "previous", "sticky", "changed by", "changed at", "reason"],
                    [[r["generation"], f"{r['split']:g}",
                      "" if r["previous_split"] is None else f"{r['previous_split']:g}", r["sticky"],
                      r["changed_by"], r["changed_at"], r["reason"]] for r in rows])
        return 0

    return _run(args, action)


def register(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser("init", help="create the pgcutover schema for shared routing (idempotent)")
    _config_arg(init)
    init.set_defaults(func=cmd_init)

    route = sub.add_parser("route", help="list, change and audit the routing every proxy replica follows")
    route_sub = route.add_subparsers(dest="route_command", required=True)
    listing = route_sub.add_parser("list", help="routes in force: split, sticky mode, generation, who changed it")
    _config_arg(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_route_list)
    setting = route_sub.add_parser("set", help="change a route's split (and sticky mode) on every replica",
                                   description="Validated, then written with a new generation and an audit "
                                               "row; every proxy applies it within a second.")
    setting.add_argument("table", help="route table, as in [[route]] table (schema optional)")
    setting.add_argument("--split", type=float, required=True, help="percent of similarity queries to the shadow")
    setting.add_argument("--sticky", choices=STICKY_MODES, help="query | session | application_name")
    setting.add_argument("--reason", default="", help="recorded in the audit trail")
    _config_arg(setting)
    setting.set_defaults(func=cmd_route_set)
    hist = route_sub.add_parser("history", help="every change of a route: generation, split, who, when, why")
    hist.add_argument("table")
    _config_arg(hist)
    hist.set_defaults(func=cmd_route_history)

    back = sub.add_parser("rollback", help="split to 0 now, on every replica (one route, or --all)")
    back.add_argument("table", nargs="?", help="route table (schema optional)")
    back.add_argument("--all", action="store_true", help="every configured route")
    back.add_argument("--reason", default="rollback", help="recorded in the audit trail")
    _config_arg(back)
    back.set_defaults(func=cmd_rollback)
