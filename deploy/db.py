"""Connections, quoting and catalog introspection shared by the deploy commands.

Every identifier that reaches generated SQL comes from here: names from the config are quoted with
`quote_ident`, type names come from `format_type()` read under `search_path = pg_catalog` (so they are
schema-qualified and do not depend on the session that later runs the SQL), and string constants are quoted
with `quote_literal`. Both quoting helpers return `Sql`, the only kind of value `render()` splices into a
template, so a raw config string cannot end up in SQL by mistake.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from pgcutover.core import quoting
from pgcutover.core.config import Config, Route
from pgcutover.core.connect import connect as core_connect
from pgcutover.core.failure import OperatorError

SCHEMA = "pgcutover"
NOTIFY_CHANNEL = "pgcutover_changes"
APPLICATION_NAME = "pgcutover-deploy"


class DeployError(OperatorError, RuntimeError):
    """A problem an operator can fix; the message says what and where (one line, exit code 1)."""


class Sql(str):
    """Text that is safe to splice into SQL: quoted identifiers, quoted literals, catalog type names."""

    __slots__ = ()


def quote_ident(name: str) -> Sql:
    """core.quoting's quote_ident, marked safe for render(); a bad name is the operator's to fix."""
    try:
        return Sql(quoting.quote_ident(name))
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def quote_literal(value: str) -> Sql:
    """core.quoting's quote_literal, marked safe for render()."""
    try:
        return Sql(quoting.quote_literal(value))
    except ValueError:
        raise DeployError("string constants cannot contain NUL") from None


def qualified(schema: str, name: str) -> Sql:
    return Sql(f"{quote_ident(schema)}.{quote_ident(name)}")


def sql_int(value: int) -> Sql:
    return Sql(str(int(value)))


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, values: dict[str, Sql]) -> str:
    """Fill `{{name}}` placeholders; every value must be `Sql` and every placeholder must be given."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        value = values[name]
        if not isinstance(value, Sql):
            raise TypeError(f"placeholder {name} must be Sql (quoted), got {type(value).__name__}")
        return value

    return _PLACEHOLDER.sub(substitute, template)


SQL_DIR = Path(__file__).resolve().parent / "sql"


def sql_file(name: str) -> str:
    # By path, not importlib.resources: under pytest the name `deploy` can be bound to tests/deploy.
    return (SQL_DIR / name).read_text()


async def connect(config: Config) -> asyncpg.Connection:
    return await core_connect(config, APPLICATION_NAME)


def select_routes(config: Config, table: str | None) -> list[Route]:
    if table is None:
        return list(config.routes)
    route = config.route_for(table)
    if route is None:
        known = ", ".join(r.table for r in config.routes) or "none"
        raise DeployError(f"--route {table!r}: no [[route]] with that table (configured: {known})")
    return [route]


# -- catalog introspection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    ident: Sql  # quoted column name
    type_sql: Sql  # schema-qualified type with its modifier, e.g. public.vector(1536)
    base_type: Sql  # without modifier, e.g. public.vector
    typname: str  # bare type name, e.g. vector, text, _float4
    typmod: int
    type_oid: int
    send_fn: Sql  # the type's binary output function, e.g. public.vector_send
    generated: bool
    identity_always: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: dict[str, Column]
    unique_keys: tuple[tuple[str, ...], ...]  # column lists of non-partial unique indexes

    @property
    def ident(self) -> Sql:
        return qualified(self.schema, self.name)

    @property
    def display(self) -> str:
        """`schema.table`, the spelling used in notices, bad_rows and checkpoints."""
        return f"{self.schema}.{self.name}"

    def column(self, name: str, what: str) -> Column:
        if name not in self.columns:
            raise DeployError(f"{self.display}: {what} column {name!r} does not exist")
        return self.columns[name]


def function_base(schema: str, name: str) -> str:
    """Stable per-table prefix for generated function names (<= 63 bytes with any suffix we add)."""
    digest = hashlib.sha1(f"{schema}.{name}".encode()).hexdigest()[:8]
    stem = name.encode()[:28].decode(errors="ignore")
    return f"{stem}_{digest}"


def table_ident_text(table: str) -> str:
    """Config spelling ("t" or "s.t") as a quoted name for to_regclass: config names are exact."""
    schema, _, name = table.rpartition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type_sql, format_type(a.atttypid, NULL) AS base_type,
       t.typname, a.atttypmod, a.atttypid, t.typsend::regproc::text AS send_fn,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_UNIQUE_SQL = """
SELECT array_agg(a.attname ORDER BY k.ord) AS cols
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


async def describe_table(conn: asyncpg.Connection, table: str) -> TableInfo | None:
    """Catalog facts about `table`; None when it does not exist. Type names come back schema-qualified."""
    async with conn.transaction(readonly=True):
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", table_ident_text(table))
        if oid is None:
            return None
        # Under this search_path format_type() and regproc qualify every non-catalog name.
        await conn.execute("SET LOCAL search_path = pg_catalog")
        row = await conn.fetchrow(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = $1",
            oid,
        )
        columns = {
            r["attname"]: Column(
                name=r["attname"],
                ident=quote_ident(r["attname"]),
                type_sql=Sql(r["type_sql"]),
                base_type=Sql(r["base_type"]),
                typname=r["typname"],
                typmod=r["atttypmod"],
                type_oid=r["atttypid"],
                send_fn=Sql(r["send_fn"]),
                generated=r["generated"],
                identity_always=r["identity_always"],
            )
            for r in await conn.fetch(_COLUMNS_SQL, oid)
        }
        unique = tuple(tuple(r["cols"]) for r in await conn.fetch(_UNIQUE_SQL, oid))
    return TableInfo(oid=oid, schema=row["nspname"], name=row["relname"], columns=columns, unique_keys=unique)


async def vector_schema(conn: asyncpg.Connection) -> Sql:
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    )
    if schema is None:
        raise DeployError("the vector extension is not installed in this database: CREATE EXTENSION vector")
    return quote_ident(schema)


async def relation_exists(conn: asyncpg.Connection, name: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)


# -- a route resolved against the catalog ----------------------------------------------------------------

LEGACY_TYPES = {
    "json": ("text", "varchar", "bpchar", "json", "jsonb"),
    "bytea_f32": ("bytea",),
    "bytea_f64": ("bytea",),
    "array": ("_float4", "_float8", "_numeric", "_int4", "_int8", "_int2"),
}
MAX_HNSW_VECTOR_DIMS = 2000
MAX_HNSW_HALFVEC_DIMS = 4000


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A `[[route]]` checked against the database: every name quoted, every type qualified."""

    route: Route
    table: TableInfo
    key: Column
    vector: Column
    dims: int
    legacy: Column | None
    shadow: TableInfo | None
    shadow_column: Column | None
    shadow_key: Column | None
    vs: Sql  # quoted schema of the vector extension

    @property
    def display(self) -> str:
        return self.table.display

    @property
    def display_lit(self) -> Sql:
        return quote_literal(self.table.display)

    @property
    def format_lit(self) -> Sql:
        return quote_literal(self.route.legacy_format)

    @property
    def function_base(self) -> str:
        return function_base(self.table.schema, self.table.name)

    def function(self, role: str) -> Sql:
        return qualified(SCHEMA, f"{self.function_base}_{role}")

    def legacy_as_text(self, ref: Sql) -> Sql:
        """A comparable form of the legacy value (json has no equality operator)."""
        assert self.legacy is not None
        return Sql(f"{ref}::text") if self.legacy.typname == "json" else ref

    def conversion(self, ref: Sql) -> Sql:
        """Expression turning the legacy value `ref` into the route's vector; raises on bad input.

        The typmod cast makes pgvector check the dimension count ("expected 1536 dimensions, not 1535").
        """
        vector_type = Sql(f"{self.vs}.vector({self.dims})")
        fmt = self.route.legacy_format
        if fmt == "json":
            return Sql(f"({ref})::text::{vector_type}")
        if fmt == "bytea_f32":
            return Sql(f"{SCHEMA}.f32le_to_float8({ref})::{vector_type}")
        if fmt == "bytea_f64":
            return Sql(f"{SCHEMA}.f64le_to_float8({ref})::{vector_type}")
        return Sql(f"({ref})::float8[]::{vector_type}")

    def safe_conversion(self, ref: Sql) -> Sql:
        """Like `conversion` but NULL for a bad value (one subtransaction per call: not for hot paths)."""
        return Sql(f"{SCHEMA}.try_vector({ref}, {self.format_lit}, {sql_int(self.dims)})")

    def vector_of(self, alias: str) -> Sql:
        """The row's vector: vector_column, else parsed from legacy_column (NULL when bad)."""
        vec = Sql(f"{alias}.{self.vector.ident}")
        if self.legacy is None:
            return vec
        return Sql(f"COALESCE({vec}, {self.safe_conversion(Sql(f'{alias}.{self.legacy.ident}'))})")


def _check_vector_column(route: Route, table: TableInfo) -> tuple[Column, int]:
    name = route.pg_vector_column
    if name not in table.columns:
        dims = route.dims or "N"
        raise DeployError(
            f"{table.display}: vector_column {name!r} does not exist; add it first, e.g. "
            f"ALTER TABLE {table.ident} ADD COLUMN {quote_ident(name)} vector({dims})"
        )
    vector = table.columns[name]
    if vector.typname != "vector":
        raise DeployError(f"{table.display}.{name} is {vector.type_sql}, expected a pgvector vector column")
    declared = vector.typmod if vector.typmod > 0 else None
    if route.dims is not None and declared is not None and route.dims != declared:
        raise DeployError(f"{table.display}: dims = {route.dims} but {name} is vector({declared})")
    dims = route.dims or declared
    if dims is None:
        raise DeployError(f"{table.display}: set dims in the route, or declare {name} as vector(N)")
    return vector, dims


def _check_legacy_column(route: Route, table: TableInfo) -> Column | None:
    if route.legacy_column is None:
        return None
    legacy = table.column(route.legacy_column, "legacy")
    allowed = LEGACY_TYPES[route.legacy_format]
    if legacy.typname not in allowed:
        raise DeployError(
            f"{table.display}.{legacy.name} is {legacy.type_sql}; legacy_format = {route.legacy_format!r} "
            f"needs one of {', '.join(t.lstrip('_') + ('[]' if t.startswith('_') else '') for t in allowed)}"
        )
    return legacy


def _check_unique(table: TableInfo, key: str, what: str) -> None:
    if (key,) not in table.unique_keys:
        raise DeployError(
            f"{table.display}: {what} key {key!r} needs a primary key or a unique index on exactly ({key})"
        )


async def resolve_route(conn: asyncpg.Connection, route: Route) -> ResolvedRoute:
    table = await describe_table(conn, route.table)
    if table is None:
        raise DeployError(f"[[route]] table {route.table!r} does not exist")
    vs = await vector_schema(conn)  # a missing extension first: without it no vector column can be added
    key = table.column(route.key, "key")
    _check_unique(table, route.key, "route")
    vector, dims = _check_vector_column(route, table)
    legacy = _check_legacy_column(route, table)
    shadow = shadow_column = shadow_key = None
    if route.shadow_table:
        shadow = await describe_table(conn, route.shadow_table)
        if shadow is None:
            raise DeployError(f"{table.display}: shadow_table {route.shadow_table!r} does not exist")
        shadow_column = shadow.column(route.pg_shadow_column, "shadow")
        shadow_key = shadow.column(route.key, "key")
        _check_unique(shadow, route.key, "shadow")
    return ResolvedRoute(
        route=route, table=table, key=key, vector=vector, dims=dims, legacy=legacy, shadow=shadow,
        shadow_column=shadow_column, shadow_key=shadow_key, vs=vs,
    )


# -- row-level security: the shadow must protect its rows as the source does ----------------------------------

_RLS_SQL = """
SELECT c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
       coalesce((SELECT jsonb_agg(jsonb_build_array(p.policyname, p.permissive, p.roles, p.cmd, p.qual,
                                                     p.with_check) ORDER BY p.policyname)
                 FROM pg_policies AS p WHERE p.schemaname = n.nspname AND p.tablename = c.relname), '[]') AS policies
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)
"""


async def rls_gap(conn: asyncpg.Connection, table: str, shadow: str) -> str | None:
    """What row-level security of `table` its `shadow` lacks (one phrase), or None when it protects its rows the
    same way (or the source has none). Policies compare by name, permissive/restrictive, roles, command and
    expressions (as pg_get_expr prints them); an extra PERMISSIVE policy on the shadow, which would let more
    rows through, counts as a difference too. Names are config spellings, values bound as parameters."""
    src = await conn.fetchrow(_RLS_SQL, table_ident_text(table))
    dst = await conn.fetchrow(_RLS_SQL, table_ident_text(shadow))
    if src is None or dst is None or not src["enabled"]:
        return None  # a missing table is reported elsewhere; policies of a table without RLS do nothing
    def policies(row: asyncpg.Record) -> dict[str, tuple]:
        return {p[0]: (p[1], sorted(p[2] or []), p[3], p[4], p[5]) for p in json.loads(row["policies"])}

    problems = []
    if not dst["enabled"]:
        problems.append("row level security is not enabled on the shadow")
    if src["forced"] and not dst["forced"]:
        problems.append("the shadow does not FORCE row level security")
    mine, theirs = policies(src), policies(dst)
    missing = sorted(name for name, policy in mine.items() if theirs.get(name) != policy)
    if missing:
        problems.append(f"policies missing or different on the shadow: {', '.join(missing)}")
    extra = sorted(name for name, policy in theirs.items() if name not in mine and policy[0] == "PERMISSIVE")
    if extra:
        problems.append(f"permissive policies only on the shadow: {', '.join(extra)}")
    return "; ".join(problems) or None


def as_json(value: Any) -> Any:
    """Values from the catalog/rows in a JSON-friendly form (datetimes as ISO text)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
