"""status: where each route's migration stands, as a table for people or JSON for scripts and metrics.

All figures of one route come from one REPEATABLE READ snapshot, so they add up even while writers and a
backfill run (the triggers keep the shadow in the writer's transaction, so one snapshot sees them agree).

The shadow comparison walks the table's keys in ranges of `diff_batch` keys. For each range it compares one
checksum per side (md5 over each key and the binary form of its vector, in key order); only a range whose
checksums differ is compared key by key. The vector compared is what the shadow should hold: vector_column,
else the vector parsed from legacy_column, cast to the shadow column's type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from pgcutover.core.config import Config
from pgcutover.deploy.db import (
    SCHEMA,
    ResolvedRoute,
    Sql,
    as_json,
    connect,
    relation_exists,
    resolve_route,
    select_routes,
)
from pgcutover.deploy.triggers import (
    DUAL_WRITE_TRIGGER,
    NOTIFY_TRIGGERS,
    SHADOW_TRIGGERS,
    install_schema,
    installed_triggers,
)

ACTIVE_SECONDS = 60  # a slot updated this recently counts towards the current backfill rate


@dataclass(frozen=True, slots=True)
class StatusOptions:
    diff: bool = True
    diff_batch: int = 5000
    routing_table: str = f"{SCHEMA}.routing"  # where the live split lives (issue 6); a parameter for tests


def _range_sql(select: str, relation: Sql, key: Sql, keytype: Sql, lower: bool, upper: bool) -> str:
    conditions = ["true"]
    if lower:
        conditions.append(f"{key} > $1::text::{keytype}")
    if upper:
        conditions.append(f"{key} <= ${2 if lower else 1}::text::{keytype}")
    return f"SELECT {select} FROM {relation} WHERE {' AND '.join(conditions)}"


class ShadowDiff:
    """Counts keys whose (key, vector) differ between the table and its shadow."""

    def __init__(self, conn: asyncpg.Connection, r: ResolvedRoute, batch: int) -> None:
        assert r.shadow is not None and r.shadow_column is not None and r.shadow_key is not None
        self.conn, self.r, self.batch = conn, r, max(1, batch)
        scol = r.shadow_column
        send = scol.send_fn
        expected = Sql(f"({r.vector_of('t')})::{scol.type_sql}")
        self.sides = (
            (Sql(f"{r.table.ident} AS t"), Sql(f"t.{r.key.ident}"), r.key.type_sql, Sql(f"{send}({expected})")),
            (Sql(f"{r.shadow.ident} AS s"), Sql(f"s.{r.shadow_key.ident}"), r.shadow_key.type_sql,
             Sql(f"{send}(s.{scol.ident})")),
        )
        key = Sql(f"t.{r.key.ident}")
        self.next_bound_sql = (
            f"SELECT {key}::text AS k FROM {r.table.ident} AS t WHERE {key} > $1::text::{r.key.type_sql} "
            f"ORDER BY {key} OFFSET $2 LIMIT 1"
        )
        self.first_bound_sql = f"SELECT {key}::text AS k FROM {r.table.ident} AS t ORDER BY {key} OFFSET $1 LIMIT 1"

    @staticmethod
    def _digest(key: Sql, vector: Sql) -> str:
        return f"md5({key}::text || ':' || coalesce(md5({vector}), '-'))"

    async def _side(self, side: int, lo: str | None, hi: str | None, per_key: bool) -> Any:
        relation, key, keytype, vector = self.sides[side]
        digest = self._digest(key, vector)
        if per_key:
            select = f"{key}::text AS k, {digest} AS d"
        else:
            select = f"count(*) AS n, md5(string_agg({digest}, '' ORDER BY {key})) AS d"
        query = _range_sql(select, relation, key, keytype, lo is not None, hi is not None)
        args = [a for a in (lo, hi) if a is not None]
        if per_key:
            return {row["k"]: row["d"] for row in await self.conn.fetch(query, *args)}
        return tuple(await self.conn.fetchrow(query, *args))

    async def count(self) -> int:
        differing, lo = 0, None
        while True:
            if lo is None:
                hi = await self.conn.fetchval(self.first_bound_sql, self.batch - 1)
            else:
                hi = await self.conn.fetchval(self.next_bound_sql, lo, self.batch - 1)
            # hi None: the last range, unbounded above (also catches shadow keys beyond the table's last key).
            if await self._side(0, lo, hi, False) != await self._side(1, lo, hi, False):
                table, shadow = await self._side(0, lo, hi, True), await self._side(1, lo, hi, True)
                differing += sum(1 for k in table.keys() | shadow.keys() if table.get(k) != shadow.get(k))
            if hi is None:
                return differing
            lo = hi


async def _counts(conn: asyncpg.Connection, r: ResolvedRoute) -> dict[str, Any]:
    t, vec = r.table.ident, r.vector.ident
    legacy_only = f"{vec} IS NULL AND {r.legacy.ident} IS NOT NULL" if r.legacy else "false"
    row = await conn.fetchrow(
        f"SELECT count(*) AS total, count(*) FILTER (WHERE {vec} IS NOT NULL) AS migrated, "
        f"count(*) FILTER (WHERE {legacy_only}) AS legacy_only FROM {t}"
    )
    bad = 0
    if r.legacy is not None and await relation_exists(conn, f"{SCHEMA}.bad_rows"):
        # Only keys that are still there and still legacy-only: a fixed or deleted row is no longer bad. Joined
        # on the key's text (as recorded), never by casting the recorded text: whatever is in bad_rows, a key
        # that does not parse must not fail status.
        bad = await conn.fetchval(
            f"SELECT count(*) FROM {SCHEMA}.bad_rows AS b JOIN {t} AS t ON t.{r.key.ident}::text = b.key "
            f"WHERE b.table_name = $1 AND t.{vec} IS NULL AND t.{r.legacy.ident} IS NOT NULL",
            r.display,
        )
    with_vector = row["migrated"] + row["legacy_only"]
    return {
        "total_rows": row["total"],
        "migrated": row["migrated"],
        "legacy_only": row["legacy_only"],
        "bad_rows": bad,
        # Of the rows that have a vector in either form, the share already in vector_column.
        "percent_migrated": round(100.0 * row["migrated"] / with_vector, 3) if with_vector else 100.0,
    }


MISMATCH_SAMPLE = 10


async def _mismatch(conn: asyncpg.Connection, r: ResolvedRoute) -> dict[str, Any] | None:
    """Rows whose vector is not the one their legacy value gives: a vector left behind when the legacy value
    was set to NULL or changed without the dual-write trigger, or one a writer set itself. Legacy-only rows
    (no vector yet) and bad legacy values with no vector are not counted. Compared in binary form (the
    vector's send function), so no operator lookup depends on the search_path."""
    if r.legacy is None:
        return None
    t, key, vec, send = r.table.ident, r.key.ident, r.vector.ident, r.vector.send_fn
    legacy = Sql(f"t.{r.legacy.ident}")

    def query(conversion: Sql) -> str:
        return (
            f"SELECT t.{key}::text AS k, count(*) OVER () AS n FROM {t} AS t WHERE t.{vec} IS NOT NULL "
            f"AND {send}(t.{vec}) IS DISTINCT FROM {send}({conversion}) ORDER BY t.{key} LIMIT $1"
        )

    try:
        async with conn.transaction():  # a savepoint: one bad legacy value fails the fast form
            rows = await conn.fetch(query(r.conversion(legacy)), MISMATCH_SAMPLE)
    except (asyncpg.DataError, asyncpg.ProgramLimitExceededError):
        rows = await conn.fetch(query(r.safe_conversion(legacy)), MISMATCH_SAMPLE)
    return {"rows": rows[0]["n"] if rows else 0, "sample_keys": [row["k"] for row in rows]}


async def _backfill(conn: asyncpg.Connection, r: ResolvedRoute) -> dict[str, Any] | None:
    if not await relation_exists(conn, f"{SCHEMA}.backfill_checkpoint"):
        return None
    rows = await conn.fetch(
        f"SELECT *, updated_at > now() - make_interval(secs => $2) AS active FROM {SCHEMA}.backfill_checkpoint "
        "WHERE table_name = $1 ORDER BY slot", r.display, ACTIVE_SECONDS,
    )
    if not rows:
        return None
    finished = all(row["finished_at"] is not None for row in rows)
    return {
        "pass": max(row["pass"] for row in rows),
        "shadow": rows[0]["shadow"],
        "state": "finished" if finished else await _liveness(conn, r, rows),
        "rows_done": sum(row["rows_done"] for row in rows),
        "rows_bad": sum(row["rows_bad"] for row in rows),
        "rows_copied": sum(row["rows_copied"] for row in rows),
        "rows_total": sum(row["rows_total"] or 0 for row in rows),
        "rate": round(sum(row["rate"] or 0.0 for row in rows if row["active"] and row["finished_at"] is None), 1),
        "started_at": as_json(min(row["started_at"] for row in rows)),
        "updated_at": as_json(max(row["updated_at"] for row in rows)),
        "finished_at": as_json(max(row["finished_at"] for row in rows)) if finished else None,
        "slots": [{"slot": row["slot"], "lo": row["lo"], "hi": row["hi"], "last_key": row["last_key"],
                   "finished": row["finished_at"] is not None} for row in rows],
    }


async def _liveness(conn: asyncpg.Connection, r: ResolvedRoute, rows: list[asyncpg.Record]) -> str:
    """`running`, `stale` (its connections are there but nothing moved for ACTIVE_SECONDS: stuck on a lock or a
    hung client) or `interrupted` (no backfill connection left: the process is gone; run it again to resume)."""
    from pgcutover.deploy.backfill import heartbeat_name

    alive = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                                "AND pid <> pg_backend_pid()", heartbeat_name(r.display))
    if not alive:
        return "interrupted"
    return "running" if any(row["active"] for row in rows) else "stale"


_INDEXES_SQL = """
SELECT c.relname AS name, am.amname AS type, pg_relation_size(c.oid) AS size_bytes, i.indisvalid AS valid,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
WHERE i.indrelid = $1 AND am.amname IN ('hnsw', 'ivfflat')
ORDER BY c.relname
"""


async def _indexes(conn: asyncpg.Connection, oid: int) -> list[dict[str, Any]]:
    return [dict(row) for row in await conn.fetch(_INDEXES_SQL, oid)]


async def _split(conn: asyncpg.Connection, r: ResolvedRoute, routing_table: str) -> tuple[float, str]:
    """The split in force: the shared routing table (written by `route set`) when it has the table, else the
    config's."""
    oid = await conn.fetchval("SELECT to_regclass($1)::oid", routing_table)
    if oid is not None:
        relation = await conn.fetchval(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1", oid)
        columns = {row[0] for row in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped", oid)}
        order = "ORDER BY generation DESC" if "generation" in columns else ""
        split = await conn.fetchval(
            f"SELECT split FROM {relation} WHERE table_name = ANY($1::text[]) {order} LIMIT 1",
            [r.route.table, r.display],
        )
        if split is not None:
            return float(split), routing_table
    return r.route.split, "config"


async def route_status(conn: asyncpg.Connection, r: ResolvedRoute, options: StatusOptions) -> dict[str, Any]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        status: dict[str, Any] = {"table": r.display, **await _counts(conn, r)}
        status["vector_mismatch"] = await _mismatch(conn, r) if options.diff else None
        status["backfill"] = await _backfill(conn, r)
        status["shadow"] = None
        if r.shadow is not None:
            shadow_rows = await conn.fetchval(f"SELECT count(*) FROM {r.shadow.ident}")
            diff = await ShadowDiff(conn, r, options.diff_batch).count() if options.diff else None
            status["shadow"] = {"table": r.shadow.display, "rows": shadow_rows, "differing_keys": diff,
                                "indexes": await _indexes(conn, r.shadow.oid)}
        status["indexes"] = await _indexes(conn, r.table.oid)
        triggers = await installed_triggers(conn, r.table.oid)
        status["triggers"] = {
            "dual_write": DUAL_WRITE_TRIGGER in triggers,
            "shadow_sync": all(name in triggers for name in SHADOW_TRIGGERS),
            "notify": all(name in triggers for name in NOTIFY_TRIGGERS),
            "disabled": sorted(name for name, enabled in triggers.items() if not enabled),
        }
        split, source = await _split(conn, r, options.routing_table)
        status["split"], status["split_source"] = split, source
    return status


async def _helpers_ready(conn: asyncpg.Connection) -> bool:
    """The shadow comparison parses legacy values with pgcutover's functions: install them if missing."""
    if await conn.fetchval("SELECT to_regprocedure('pgcutover.try_vector(anyelement, text, integer)') IS NOT NULL"):
        return True
    try:
        await install_schema(conn)
        return True
    except asyncpg.InsufficientPrivilegeError:
        return False


async def status(config: Config, table: str | None = None, options: StatusOptions | None = None) -> list[dict]:
    options = options or StatusOptions()
    conn = await connect(config)
    try:
        if options.diff and any(route.shadow_table and route.legacy_column for route in config.routes):
            options = replace(options, diff=await _helpers_ready(conn))
        return [await route_status(conn, await resolve_route(conn, route), options)
                for route in select_routes(config, table)]
    finally:
        await conn.close()


def _finite(value: Any) -> Any:
    """NaN and infinities (a forged or corrupt row in pgcutover's tables) as null: --json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(statuses: list[dict]) -> str:
    return json.dumps({"routes": _finite(statuses)}, indent=2, default=str, allow_nan=False)


def _size(num: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num < 1024:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TB"


def _row(s: dict[str, Any]) -> list[str]:
    backfill = s["backfill"]
    if backfill is None:
        bf = "-"
    else:
        bf = f"pass {backfill['pass']} {backfill['state']}"
        if backfill["state"] == "running":
            bf += f" {backfill['rate']:,.0f}/s"
    shadow = s["shadow"]
    if shadow is None:
        sh = "-"
    else:
        diff = "?" if shadow["differing_keys"] is None else f"{shadow['differing_keys']:,}"
        sh = f"{shadow['rows']:,} rows, {diff} differ"
    indexes = ", ".join(f"{i['type']} {_size(i['size_bytes'])}{'' if i['valid'] else ' INVALID'}"
                        for i in s["indexes"]) or "none"
    trig = ",".join(name for name in ("dual_write", "shadow_sync", "notify") if s["triggers"][name]) or "none"
    mismatch = s.get("vector_mismatch")
    if mismatch is None:
        mm = "-"
    else:
        mm = f"{mismatch['rows']:,}"
        if mismatch["rows"]:
            keys = mismatch["sample_keys"][:3]
            mm += f" (keys {', '.join(keys)}{', ...' if mismatch['rows'] > len(keys) else ''})"
    return [s["table"], f"{s['total_rows']:,}", f"{s['migrated']:,}", f"{s['percent_migrated']:.1f}%",
            f"{s['legacy_only']:,}", f"{s['bad_rows']:,}", mm, bf, sh, indexes, trig, f"{s['split']:g}%"]


HEADERS = ["TABLE", "ROWS", "MIGRATED", "%", "LEGACY-ONLY", "BAD", "MISMATCHED", "BACKFILL", "SHADOW",
           "VECTOR INDEXES", "TRIGGERS", "SPLIT"]


def to_table(statuses: list[dict]) -> str:
    rows = [HEADERS, *(_row(s) for s in statuses)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
