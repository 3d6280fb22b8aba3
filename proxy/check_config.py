"""`pgcutover check-config [--live]`: validate a config file for a CI pipeline, without starting anything.

Without --live: the schema (types, ranges, values, unknown keys, file:line for each problem, all at once).
With --live: the database the config names, per route: the vector extension, the table, its columns and their
types, the shadow table and its column type, SELECT grants for the upstream user, a vector index on each side,
and row-level security on the shadow matching the source's. Exit 0 when nothing is wrong (warnings allowed),
1 when the database disagrees, 2 when the file is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import asyncpg

from pgcutover.core.config import Config, Route, load_config

from . import control

VECTOR_TYPES = ("vector", "halfvec", "sparsevec", "bit")


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "error" | "warning" | "ok"
    route: str
    text: str


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check-config", help="validate the config file (and with --live, the database)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the TOML file `serve` uses (default: $PGCUTOVER_CONFIG)")
    parser.add_argument("--live", action="store_true",
                        help="also check tables, columns, types, extension, grants, indexes and RLS upstream")
    parser.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # raises ConfigError listing every problem: exit 2
    print(f"{args.config}: valid ({len(config.routes)} route(s), listen {config.proxy.listen}, upstream "
          f"{config.proxy.upstream.host}:{config.proxy.upstream.port})")
    if not args.live:
        return 0
    findings = asyncio.run(_live(config))
    for finding in findings:
        print(f"  {finding.level:<7} {finding.route}: {finding.text}")
    errors = sum(1 for f in findings if f.level == "error")
    warnings = sum(1 for f in findings if f.level == "warning")
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


async def _live(config: Config) -> list[Finding]:
    conn = await control.connect(config)
    try:
        findings: list[Finding] = []
        ext = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        if ext is None:
            findings.append(Finding("error", "(database)", "extension vector is not installed: "
                                    "CREATE EXTENSION vector (as a superuser or the database owner)"))
        else:
            findings.append(Finding("ok", "(database)", f"extension vector {ext}"))
        for route in config.routes:
            findings.extend(await check_route(conn, route, vector_installed=ext is not None))
        return findings
    finally:
        await conn.close()


_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, t.typname
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
"""
_VECTOR_INDEX_SQL = """
SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
WHERE i.indrelid = $1::oid AND am.amname IN ('hnsw', 'ivfflat') AND i.indisvalid
  AND (pg_get_indexdef(i.indexrelid) LIKE '%' || quote_ident($2) || '%'
       OR pg_get_indexdef(i.indexrelid) LIKE '%(' || $2 || '%')
"""


async def _relation(conn: asyncpg.Connection, name: str) -> int | None:
    return await conn.fetchval("SELECT to_regclass($1)::oid", name)


async def check_route(conn: asyncpg.Connection, route: Route, *, vector_installed: bool) -> list[Finding]:
    out: list[Finding] = []

    def add(level: str, text: str) -> None:
        out.append(Finding(level, route.table, text))

    oid = await _relation(conn, route.table)
    if oid is None:
        add("error", f"table {route.table} does not exist (check [[route]] table)")
        return out
    columns = {r["attname"]: (r["type"], r["typname"]) for r in await conn.fetch(_COLUMNS_SQL, oid)}
    for key, name in (("key", route.key), ("column", route.column), ("vector_column", route.pg_vector_column),
                      ("legacy_column", route.legacy_column)):
        if name and name not in columns:
            add("error", f"{key} = {name!r}: no such column in {route.table} (has {', '.join(sorted(columns))})")
    vector = columns.get(route.pg_vector_column)
    if vector is not None and vector[1] not in VECTOR_TYPES:
        hint = " (install the extension first: CREATE EXTENSION vector)" if not vector_installed else ""
        add("error" if not route.legacy_column or route.vector_column else "warning",
            f"{route.pg_vector_column} is {vector[0]}, not a pgvector type{hint}")
    if vector is not None and vector[1] in VECTOR_TYPES:
        add("ok", f"{route.pg_vector_column} {vector[0]}")
        if not await conn.fetchval(_VECTOR_INDEX_SQL, oid, route.pg_vector_column):
            add("warning", f"no valid HNSW/IVFFlat index on {route.pg_vector_column}: queries scan every row "
                           f"(pgcutover index --route {route.table})")
    if not await conn.fetchval("SELECT has_table_privilege($1::oid, 'SELECT')", oid):
        add("error", f"the upstream user may not SELECT from {route.table}: GRANT SELECT ON {route.table} TO ...")
    source_rls = await conn.fetchval("SELECT relrowsecurity FROM pg_class WHERE oid = $1", oid)
    if route.shadow_table:
        out.extend(await _check_shadow(conn, route, vector, source_rls))
    return out


async def _check_shadow(conn: asyncpg.Connection, route: Route, vector: tuple[str, str] | None,
                        source_rls: bool) -> list[Finding]:
    out: list[Finding] = []

    def add(level: str, text: str) -> None:
        out.append(Finding(level, route.table, text))

    shadow = route.shadow_table or ""
    oid = await _relation(conn, shadow)
    if oid is None:
        add("error", f"shadow_table {shadow} does not exist (create it with the same key and vector column)")
        return out
    columns = {r["attname"]: (r["type"], r["typname"]) for r in await conn.fetch(_COLUMNS_SQL, oid)}
    if route.key not in columns:
        add("error", f"shadow {shadow} has no key column {route.key!r}")
    column = columns.get(route.pg_shadow_column)
    if column is None:
        add("error", f"shadow_column {route.pg_shadow_column!r}: no such column in {shadow}")
    elif vector is not None and vector[1] in VECTOR_TYPES and column[0] != vector[0]:
        add("error", f"shadow {shadow}.{route.pg_shadow_column} is {column[0]} but {route.table}."
                     f"{route.pg_vector_column} is {vector[0]}: the same type and dimensions are needed")
    else:
        add("ok", f"shadow {shadow}.{route.pg_shadow_column} {column[0]}")
        if column[1] in VECTOR_TYPES and not await conn.fetchval(_VECTOR_INDEX_SQL, oid, route.pg_shadow_column):
            add("warning", f"no valid HNSW/IVFFlat index on shadow {shadow}.{route.pg_shadow_column}")
    if not await conn.fetchval("SELECT has_table_privilege($1::oid, 'SELECT')", oid):
        add("error", f"the upstream user may not SELECT from shadow {shadow}: GRANT SELECT ON {shadow} TO ...")
    shadow_rls = await conn.fetchval("SELECT relrowsecurity FROM pg_class WHERE oid = $1", oid)
    if bool(shadow_rls) != bool(source_rls):
        add("error", f"row-level security is {'on' if source_rls else 'off'} on {route.table} but "
                     f"{'on' if shadow_rls else 'off'} on shadow {shadow}: clients would see different rows "
                     f"(ALTER TABLE ... {'ENABLE' if source_rls else 'DISABLE'} ROW LEVEL SECURITY and copy the "
                     f"policies)")
    return out
