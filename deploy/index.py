"""index: build the HNSW index a route needs, concurrently, idempotently.

Up to 2,000 dimensions the index is on the vector column itself; above that (pgvector's HNSW limit for
`vector`) it is an expression index on `(vector_column::halfvec(dims))`, which pgvector indexes up to 4,000
dimensions and which the rewrite engine recognizes (`USING hnsw ((embedding_vector::halfvec(3072))
halfvec_cosine_ops)`). A column declared without dimensions is indexed as `(column::vector(dims))`.

Idempotent: an equivalent valid index (same access method, operator class and key) means there is nothing
to do; an INVALID one, left by a failed or killed concurrent build, is dropped concurrently and rebuilt.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from pgcutover.core.config import Config
from pgcutover.deploy.db import (
    MAX_HNSW_HALFVEC_DIMS,
    MAX_HNSW_VECTOR_DIMS,
    DeployError,
    ResolvedRoute,
    Sql,
    connect,
    quote_ident,
    quote_literal,
    resolve_route,
    select_routes,
)

OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}


@dataclass(frozen=True, slots=True)
class IndexOptions:
    metric: str | None = None  # None: the route's metric
    maintenance_work_mem: str = "1GB"
    parallel_workers: int = 2
    m: int | None = None
    ef_construction: int | None = None


@dataclass(frozen=True, slots=True)
class IndexPlan:
    route: ResolvedRoute
    name: str
    opclass: str  # bare operator class name, e.g. halfvec_cosine_ops
    key_text: str  # the key as pg_get_indexdef prints it, normalized (see _normalize)
    settings: tuple[tuple[str, str], ...]
    create_sql: str

    @property
    def table(self) -> str:
        return self.route.display

    def script(self) -> str:
        """The DDL as an operator would run it by hand (what --dry-run prints)."""
        lines = [f"SET {name} = {quote_literal(value)};" for name, value in self.settings]
        lines.append(self.create_sql + ";")
        return "\n".join(lines)


def _index_name(r: ResolvedRoute, metric: str) -> str:
    name = f"{r.table.name}_{r.vector.name}_hnsw_{metric}"
    if len(name.encode()) > 63:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[:54].decode(errors="ignore") + "_" + digest
    return name


def _normalize(text: str) -> str:
    """Compare index keys loosely: no quotes, parentheses, spaces or schema prefixes on the vector types."""
    text = re.sub(r'[\s"()]', "", text)
    # the type's schema prefix, whatever its name (quotes and spaces are already gone)
    return re.sub(r"(?<=::)[^:]*?\.(?=(halfvec|vector)\d)", "", text)


def plan_index(r: ResolvedRoute, options: IndexOptions) -> IndexPlan:
    metric = options.metric or r.route.metric
    if metric not in OPS:
        raise DeployError(f"metric {metric!r} must be one of {', '.join(OPS)}")
    col = r.vector.ident
    if r.dims > MAX_HNSW_HALFVEC_DIMS:
        raise DeployError(
            f"{r.display}: {r.dims} dimensions is over HNSW's limit ({MAX_HNSW_HALFVEC_DIMS} for halfvec)"
        )
    if r.dims > MAX_HNSW_VECTOR_DIMS:
        opclass = f"halfvec_{OPS[metric]}"
        key = Sql(f"(({col})::{r.vs}.halfvec({r.dims}))")
        key_text = f"{r.vector.name}::halfvec{r.dims}"
    elif r.vector.typmod <= 0:
        opclass = f"vector_{OPS[metric]}"
        key = Sql(f"(({col})::{r.vs}.vector({r.dims}))")
        key_text = f"{r.vector.name}::vector{r.dims}"
    else:
        opclass = f"vector_{OPS[metric]}"
        key = col
        key_text = r.vector.name
    with_params = [f"{name} = {int(value)}" for name, value in (("m", options.m),
                   ("ef_construction", options.ef_construction)) if value is not None]
    name = _index_name(r, metric)
    create = (
        f"CREATE INDEX CONCURRENTLY {quote_ident(name)} ON {r.table.ident} USING hnsw "
        f"({key} {r.vs}.{quote_ident(opclass)})" + (f" WITH ({', '.join(with_params)})" if with_params else "")
    )
    settings = (
        ("maintenance_work_mem", options.maintenance_work_mem),
        ("max_parallel_maintenance_workers", str(int(options.parallel_workers))),
    )
    return IndexPlan(route=r, name=name, opclass=opclass, key_text=_normalize(key_text), settings=settings,
                     create_sql=create)


_EXISTING_SQL = """
SELECT c.relname AS name, n.nspname AS schema, i.indisvalid AS valid, am.amname AS am, opc.opcname AS opclass,
       pg_get_indexdef(i.indexrelid, 1, true) AS keydef, i.indnatts AS natts, i.indpred IS NOT NULL AS partial
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
JOIN pg_opclass opc ON opc.oid = i.indclass[0]
WHERE i.indrelid = $1
"""


def _equivalent(row: asyncpg.Record, plan: IndexPlan) -> bool:
    return (row["am"] == "hnsw" and row["opclass"] == plan.opclass and row["natts"] == 1
            and not row["partial"] and _normalize(row["keydef"]) == plan.key_text)


async def _existing(conn: asyncpg.Connection, plan: IndexPlan) -> list[asyncpg.Record]:
    """Indexes equivalent to the plan (valid or not), and any index with the plan's name."""
    rows = await conn.fetch(_EXISTING_SQL, plan.route.table.oid)
    return [row for row in rows if _equivalent(row, plan) or row["name"] == plan.name]


async def _watch(conn: asyncpg.Connection, pid: int, label: str, stream: TextIO) -> None:
    """Print the build's phase from pg_stat_progress_create_index every few seconds."""
    while True:
        await asyncio.sleep(10)
        row = await conn.fetchrow(
            "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
            "FROM pg_stat_progress_create_index WHERE pid = $1", pid,
        )
        if row:
            stream.write(f"{label}: {row['phase']} (blocks {row['blocks_done']}/{row['blocks_total']}, "
                         f"tuples {row['tuples_done']}/{row['tuples_total']})\n")
            stream.flush()


async def build(conn: asyncpg.Connection, watch: asyncpg.Connection | None, plan: IndexPlan,
                stream: TextIO) -> str:
    """Create the index unless an equivalent valid one exists. Returns what happened, for the operator."""
    existing = await _existing(conn, plan)
    for row in existing:
        if row["valid"] and _equivalent(row, plan):
            return f"{plan.table}: index {row['name']} already exists and is valid; nothing to do"
    for row in existing:
        if row["valid"]:
            raise DeployError(
                f"{plan.table}: index {plan.name} exists with a different definition ({row['am']} "
                f"{row['keydef']} {row['opclass']}); drop it first"
            )
    for row in existing:  # only INVALID ones are left: leftovers of a failed concurrent build
        stream.write(f"{plan.table}: dropping INVALID index {row['name']} left by a failed build\n")
        index = f"{quote_ident(row['schema'])}.{quote_ident(row['name'])}"
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    for name, value in plan.settings:
        await conn.execute("SELECT set_config($1, $2, false)", name, value)
    stream.write(plan.script() + "\n")
    stream.flush()
    watcher = None
    if watch is not None:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        watcher = asyncio.create_task(_watch(watch, pid, plan.table, stream))
    try:
        await conn.execute(plan.create_sql)
    finally:
        if watcher is not None:
            watcher.cancel()
    # Names as values, compared with the catalog's own (a ::regnamespace cast would parse the schema name as
    # an identifier: a mixed-case or quoted schema would not be found).
    size = await conn.fetchval(
        "SELECT pg_size_pretty(pg_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND n.nspname = $2", plan.name, plan.route.table.schema,
    )
    return f"{plan.table}: built index {plan.name} ({size})"


async def _dry_run(conn: asyncpg.Connection, plan: IndexPlan) -> str:
    """What `build` would do, without doing it: nothing for an equivalent valid index, else the DDL."""
    for row in await _existing(conn, plan):
        if row["valid"] and _equivalent(row, plan):
            return f"-- {plan.table}: index {row['name']} already exists and is valid; nothing to do"
    return plan.script()


async def create_indexes(config: Config, table: str | None = None, options: IndexOptions | None = None,
                         *, dry_run: bool = False, stream: TextIO = sys.stdout) -> list[str]:
    options = options or IndexOptions()
    conn = await connect(config)
    watch = None
    try:
        plans = [plan_index(await resolve_route(conn, route), options) for route in select_routes(config, table)]
        if dry_run:
            return [await _dry_run(conn, plan) for plan in plans]
        watch = await connect(config)
        return [await build(conn, watch, plan, stream) for plan in plans]
    finally:
        await conn.close()
        if watch is not None:
            await watch.close()
