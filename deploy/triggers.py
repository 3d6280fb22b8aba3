"""install-triggers / uninstall-triggers: dual write, shadow sync and change notices, one transaction per route.

Per route the generated objects are plain PL/pgSQL with static, quoted identifiers (no EXECUTE per row, so
plans are cached) rendered from the templates in deploy/sql/. Installing is idempotent: the route's triggers
are dropped and recreated and its functions replaced in a single transaction, so writers see either the old
set or the new one; a route whose config lost its shadow_table loses the shadow triggers on the next install.

Privileges (issue 12): every trigger function is SECURITY DEFINER with a pinned search_path, checks that it runs
for the table it was made for, and like everything else in schema pgcutover is not executable by PUBLIC, so an
application role can neither call our helpers nor attach our functions to a table of its own. Writers need only
their privileges on the table. `--grant-to ROLE` gives roles that query through the proxy what the fallback's
merged queries call (privileges.sql).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import asyncpg

from pgcutover.core.config import Config
from pgcutover.core.enums import BadVectorMode
from pgcutover.deploy.db import (
    NOTIFY_CHANNEL,
    SCHEMA,
    DeployError,
    ResolvedRoute,
    Sql,
    connect,
    describe_table,
    function_base,
    qualified,
    quote_ident,
    quote_literal,
    relation_exists,
    render,
    resolve_route,
    rls_gap,
    select_routes,
    sql_file,
    sql_int,
    vector_schema,
)

DUAL_WRITE_TRIGGER = "pgcutover_dual_write"
SHADOW_TRIGGERS = tuple(f"pgcutover_shadow_{op}" for op in ("insert", "update", "delete", "truncate"))
NOTIFY_TRIGGERS = tuple(f"pgcutover_notify_{op}" for op in ("insert", "update", "delete", "truncate"))
ALL_TRIGGERS = (DUAL_WRITE_TRIGGER, *SHADOW_TRIGGERS, *NOTIFY_TRIGGERS)
FUNCTION_ROLES = ("dual_write", *(t.removeprefix("pgcutover_") for t in SHADOW_TRIGGERS + NOTIFY_TRIGGERS))

INSTALL_LOCK = "pgcutover:install"  # one installer at a time: shared functions are replaced too
LOCK_TIMEOUT = "5s"  # DDL waits behind long transactions; never queue writers behind us for longer
LOCK_RETRIES = 5

_SECTION = re.compile(r"^-- @section (\w+)\s*$", re.MULTILINE)


def sections(name: str) -> dict[str, str]:
    """A template file cut at its `-- @section NAME` lines."""
    parts = _SECTION.split(sql_file(name))
    return {parts[i]: parts[i + 1].strip("\n") + "\n" for i in range(1, len(parts), 2)}


@dataclass
class RoutePlan:
    """Everything install does for one route, as SQL statements (printed by --dry-run)."""

    route: ResolvedRoute
    statements: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def guard_sql(r: ResolvedRoute) -> Sql:
    """The check at the top of every trigger function: run only for the table it was made for."""
    return Sql(render(sections("privileges.sql")["guard"], {
        "table_oid": sql_int(r.table.oid), "schema_lit": quote_literal(r.table.schema),
        "name_lit": quote_literal(r.table.name), "display_lit": r.display_lit,
    }))


def privileges_sql(grant_to: tuple[str, ...] = ()) -> list[str]:
    """Close schema pgcutover to PUBLIC, then grant roles that query through the proxy what they call."""
    parts = sections("privileges.sql")
    return [parts["lockdown"], *(render(parts["query_role"], {"role": quote_ident(role)}) for role in grant_to)]


def _dual_write_sql(r: ResolvedRoute) -> list[str]:
    assert r.legacy is not None
    parts = sections("dual_write.sql")
    values = {
        "guard": guard_sql(r),
        "vs": r.vs,
        "fn": r.function("dual_write"),
        "table": r.table.ident,
        "legacy": r.legacy.ident,
        "vec": r.vector.ident,
        "key": r.key.ident,
        "vector_type": r.vector.type_sql,
        "legacy_new": r.legacy_as_text(Sql(f"NEW.{r.legacy.ident}")),
        "legacy_old": r.legacy_as_text(Sql(f"OLD.{r.legacy.ident}")),
        "conversion": r.conversion(Sql(f"NEW.{r.legacy.ident}")),
        "display_lit": r.display_lit,
        "legacy_lit": quote_literal(r.legacy.name),
    }
    handler = parts["on_bad_skip" if r.route.on_bad_vector == BadVectorMode.SKIP else "on_bad_error"]
    values["on_bad"] = Sql(render(handler, values).rstrip("\n"))
    return [render(parts["function"], values), render(parts["trigger"], values)]


def shadow_values(r: ResolvedRoute) -> dict[str, Sql]:
    assert r.shadow is not None and r.shadow_column is not None and r.shadow_key is not None
    shadow = r.shadow
    copied = [
        name for name, col in r.table.columns.items()
        if name in shadow.columns and name != r.shadow_column.name and not shadow.columns[name].generated
    ]
    if r.key.name not in copied:
        raise DeployError(f"{shadow.display}: key column {r.key.name!r} cannot be written")
    idents = [quote_ident(name) for name in copied]
    vector_value = Sql(f"({r.vector_of('n')})::{r.shadow_column.type_sql}")
    assignments = [f"{i} = EXCLUDED.{i}" for i in idents if i != r.key.ident]
    assignments.append(f"{r.shadow_column.ident} = EXCLUDED.{r.shadow_column.ident}")
    identity = any(shadow.columns[name].identity_always for name in copied)
    return {
        "shadow": shadow.ident,
        "shadow_key": r.shadow_key.ident,
        "columns": Sql(", ".join([*idents, r.shadow_column.ident])),
        "values": Sql(", ".join([*(f"n.{i}" for i in idents), vector_value])),
        "assignments": Sql(", ".join(assignments)),
        "overriding": Sql(" OVERRIDING SYSTEM VALUE" if identity else ""),
    }


def _statement_triggers_sql(r: ResolvedRoute, template: str, prefix: str, values: dict[str, Sql]) -> list[str]:
    parts = sections(template)
    ops = ("insert", "update", "delete", "truncate")
    names = {f"fn_{op}": r.function(f"{prefix}_{op}") for op in ops}
    statements = [render(parts[op], {**values, "fn": names[f"fn_{op}"]}) for op in ops]
    statements.append(render(parts["triggers"], {**values, **names}))
    return statements


def plan_route(r: ResolvedRoute) -> RoutePlan:
    plan = RoutePlan(route=r)
    common = {"table": r.table.ident, "key": r.key.ident, "vec": r.vector.ident, "display_lit": r.display_lit,
              "vs": r.vs, "guard": guard_sql(r)}
    if r.legacy is not None:
        plan.statements += _dual_write_sql(r)
        plan.triggers.append(DUAL_WRITE_TRIGGER)
        plan.functions.append("dual_write")
    if r.shadow is not None:
        plan.statements += _statement_triggers_sql(r, "shadow_sync.sql", "shadow", {**common, **shadow_values(r)})
        plan.triggers += SHADOW_TRIGGERS
        plan.functions += [t.removeprefix("pgcutover_") for t in SHADOW_TRIGGERS]
    if r.legacy is not None:
        legacy = {
            "legacy": r.legacy.ident,
            "legacy_new": r.legacy_as_text(Sql(f"n.{r.legacy.ident}")),
            "legacy_old": r.legacy_as_text(Sql(f"o.{r.legacy.ident}")),
        }
        plan.statements += _statement_triggers_sql(r, "notify.sql", "notify", {**common, **legacy})
        plan.triggers += NOTIFY_TRIGGERS
        plan.functions += [t.removeprefix("pgcutover_") for t in NOTIFY_TRIGGERS]
    return plan


def drop_triggers_sql(table_ident: Sql) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote_ident(name)} ON {table_ident}" for name in ALL_TRIGGERS]


def drop_functions_sql(function_base: str, keep: tuple[str, ...] = ()) -> list[str]:
    return [
        f"DROP FUNCTION IF EXISTS {qualified(SCHEMA, f'{function_base}_{role}')}()"
        for role in FUNCTION_ROLES if role not in keep
    ]


def route_record(r: ResolvedRoute) -> str:
    route = r.route
    return json.dumps({
        "table": route.table, "key": route.key, "vector_column": route.pg_vector_column,
        "legacy_column": route.legacy_column, "legacy_format": route.legacy_format, "dims": r.dims,
        "shadow_table": route.shadow_table, "shadow_column": route.pg_shadow_column if route.shadow_table else None,
        "on_bad_vector": route.on_bad_vector,
    })


async def _check_shadow_cast(conn: asyncpg.Connection, r: ResolvedRoute) -> None:
    if r.shadow_column is None:
        return
    try:
        await conn.execute(f"SELECT NULL::{r.vector.type_sql}::{r.shadow_column.type_sql}")
    except asyncpg.PostgresError as exc:
        raise DeployError(
            f"{r.display}: the vector cannot be cast to the shadow column's type {r.shadow_column.type_sql}: {exc}"
        ) from exc


async def _with_lock_retries(conn: asyncpg.Connection, work) -> None:
    """Run `work(conn)` in a transaction with a short lock_timeout, retrying when a lock is not granted."""
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {quote_literal(LOCK_TIMEOUT)}")
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", INSTALL_LOCK)
                await work(conn)
            return
        except asyncpg.LockNotAvailableError:
            if attempt == LOCK_RETRIES:
                raise DeployError(
                    f"could not get the table lock within {LOCK_TIMEOUT} after {LOCK_RETRIES} attempts: a long "
                    "transaction holds it; retry when it is done"
                ) from None
            await asyncio.sleep(attempt)


async def _apply_privileges(conn: asyncpg.Connection, grant_to: tuple[str, ...]) -> None:
    for statement in privileges_sql(grant_to):
        try:
            await conn.execute(statement)
        except asyncpg.UndefinedObjectError as exc:  # GRANT to a role that does not exist
            raise DeployError(f"--grant-to: {exc}") from None


async def _channel_literal(conn: asyncpg.Connection, channel: str | None) -> Sql:
    """The notices' channel: the one given (install-triggers, from the config), else the one installed before
    (backfill and status re-install the schema and must not reset it), else the default."""
    if channel is None and await conn.fetchval("SELECT to_regprocedure('pgcutover.notify_channel()') IS NOT NULL"):
        channel = await conn.fetchval("SELECT pgcutover.notify_channel()")
    return quote_literal(channel or NOTIFY_CHANNEL)


async def install_schema(conn: asyncpg.Connection, grant_to: tuple[str, ...] = (), channel: str | None = None) -> None:
    """The shared schema, tables and functions (also used by backfill and status), closed to PUBLIC, and the
    grants for `grant_to`. Idempotent."""
    vs = await vector_schema(conn)
    channel_lit = await _channel_literal(conn, channel)

    async def work(c: asyncpg.Connection) -> None:
        await c.execute(render(sql_file("schema.sql"), {"vs": vs, "channel": channel_lit}))
        await _apply_privileges(c, grant_to)

    await _with_lock_retries(conn, work)


async def install_route(conn: asyncpg.Connection, r: ResolvedRoute) -> RoutePlan:
    plan = plan_route(r)
    await _check_shadow_cast(conn, r)

    channel_lit = await _channel_literal(conn, None)  # install_schema ran just before with the config's

    async def work(c: asyncpg.Connection) -> None:
        await c.execute(render(sql_file("schema.sql"), {"vs": r.vs, "channel": channel_lit}))
        for statement in drop_triggers_sql(r.table.ident):
            await c.execute(statement)
        for statement in drop_functions_sql(r.function_base, keep=tuple(plan.functions)):
            await c.execute(statement)
        for statement in plan.statements:
            await c.execute(statement)
        await c.execute(
            "INSERT INTO pgcutover.installed (table_name, table_oid, function_base, route, installed_at) "
            "VALUES ($1, $2, $3, $4::jsonb, now()) ON CONFLICT (table_name) DO UPDATE SET "
            "table_oid = EXCLUDED.table_oid, function_base = EXCLUDED.function_base, route = EXCLUDED.route, "
            "installed_at = EXCLUDED.installed_at",
            r.display, r.table.oid, r.function_base, route_record(r),
        )
        await _apply_privileges(c, ())

    await _with_lock_retries(conn, work)
    return plan


async def _uninstall_table(conn: asyncpg.Connection, display: str, oid: int | None, bases: set[str]) -> bool:
    """Drop our triggers and functions for one table. True when anything of ours was there."""
    found = False

    async def work(c: asyncpg.Connection) -> None:
        nonlocal found
        table_ident = None
        if oid is not None:
            row = await c.fetchrow(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = $1", oid,
            )
            table_ident = qualified(row["nspname"], row["relname"]) if row else None
        if table_ident is not None:
            found |= bool(await c.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1 AND tgname = ANY($2::text[])",
                oid, list(ALL_TRIGGERS),
            ))
            for statement in drop_triggers_sql(table_ident):
                await c.execute(statement)
        for base in sorted(bases):
            for statement in drop_functions_sql(base):
                await c.execute(statement)
        if await relation_exists(c, "pgcutover.installed"):
            found |= (await c.execute("DELETE FROM pgcutover.installed WHERE table_name = $1", display)) != "DELETE 0"

    await _with_lock_retries(conn, work)
    return found


async def _registry(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    if not await relation_exists(conn, "pgcutover.installed"):
        return {}
    rows = await conn.fetch("SELECT table_name, table_oid, function_base FROM pgcutover.installed")
    return {r["table_name"]: (r["table_oid"], r["function_base"]) for r in rows}


async def check_rls(conn: asyncpg.Connection, r: ResolvedRoute) -> None:
    """Refuse to sync into a shadow that would serve rows the source's row-level security hides (issue 12)."""
    if r.shadow is None:
        return
    gap = await rls_gap(conn, r.route.table, r.route.shadow_table or "")
    if gap:
        raise DeployError(
            f"{r.display} has row-level security its shadow {r.shadow.display} lacks ({gap}): copy the policies "
            "to the shadow and ENABLE ROW LEVEL SECURITY on it, or pass --force"
        )


async def install(config: Config, table: str | None = None, *, dry_run: bool = False,
                  grant_to: tuple[str, ...] = (), force: bool = False) -> list[RoutePlan]:
    routes = select_routes(config, table)
    conn = await connect(config)
    try:
        resolved = [await resolve_route(conn, route) for route in routes]
        if not force:
            for r in resolved:
                await check_rls(conn, r)
        if dry_run:
            return [plan_route(r) for r in resolved]
        await install_schema(conn, grant_to, config.proxy.notify_channel)
        return [await install_route(conn, r) for r in resolved]
    finally:
        await conn.close()


async def uninstall(config: Config, table: str | None = None) -> list[tuple[str, bool]]:
    """Remove triggers and functions of the selected routes; without --route also of any route that is
    recorded as installed but no longer configured. Returns (table, had anything) pairs."""
    routes = select_routes(config, table)
    conn = await connect(config)
    try:
        registry = await _registry(conn)
        done: list[tuple[str, bool]] = []
        seen: set[str] = set()
        for route in routes:
            info = await describe_table(conn, route.table)
            display = info.display if info else route.table
            oid, base = registry.get(display, (info.oid if info else None, None))
            computed = function_base(info.schema, info.name) if info else None
            bases = {b for b in (base, computed) if b}
            done.append((display, await _uninstall_table(conn, display, oid, bases)))
            seen.add(display)
        if table is None:
            for display, (oid, base) in registry.items():
                if display not in seen:
                    done.append((display, await _uninstall_table(conn, display, oid, {base})))
        return done
    finally:
        await conn.close()


async def installed_triggers(conn: asyncpg.Connection, oid: int) -> dict[str, bool]:
    """Our triggers present on a table -> enabled?"""
    rows = await conn.fetch(
        "SELECT tgname, tgenabled <> 'D' AS enabled FROM pg_trigger WHERE tgrelid = $1 AND tgname = ANY($2::text[])",
        oid, list(ALL_TRIGGERS),
    )
    return {r["tgname"]: r["enabled"] for r in rows}
