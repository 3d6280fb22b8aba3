"""What the planner knows about the route tables, read from pg_catalog at start-up (and on reload).

Without a catalog the planner still works, but refuses what it cannot check: `SELECT *` on the shadow
(reason "star-needs-catalog"), returning a vector column from the shadow, and index-shape matching.
All catalog queries take typed parameters; names from the config never reach SQL text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp
from sqlglot.errors import SqlglotError

from pgcutover.core.quoting import quote_table
from pgcutover.rewrite.dialect import parse_one

if TYPE_CHECKING:
    import asyncpg

    from pgcutover.core.config import Route

FLOAT8 = "double precision"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: str  # format_type(atttypid, atttypmod), e.g. "vector(3)", "text", "ruvector_new.vector"


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """The first key of an index: a plain column or an expression, with the opclass' ordering operator."""

    name: str
    method: str  # hnsw, ivfflat, btree...
    key: str  # pg_get_indexdef(indexrelid, 1, true), e.g. "embedding" or "(embedding::halfvec(3072))"
    opclass: str
    order_operator: str | None  # the opclass' ordering operator ("<=>"), None for non-ordering opclasses
    partial: bool = False

    @property
    def column(self) -> str | None:
        """The indexed column when the key is a bare column."""
        node = _parse_key(self.key)
        while isinstance(node, exp.Paren):
            node = node.this
        return node.name if isinstance(node, exp.Column) and not node.table else None

    @property
    def cast(self) -> tuple[str, exp.DataType] | None:
        """(column, type) when the key is `column::type`, the shape used to index vectors above 2,000 dims."""
        node = _parse_key(self.key)
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Cast):
            return None
        column = node.this
        while isinstance(column, exp.Paren):
            column = column.this
        to = node.args.get("to")
        if isinstance(column, exp.Column) and not column.table and isinstance(to, exp.DataType):
            return column.name, to
        return None


@functools.lru_cache(maxsize=256)
def _parse_key(key: str) -> exp.Expr | None:
    # cached: planning asks for the same few index keys on every cache miss (callers copy before changing)
    try:
        return parse_one(key)
    except SqlglotError:
        return None


@dataclass(frozen=True, slots=True)
class TableInfo:
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    indexes: tuple[IndexInfo, ...] = ()

    def column(self, name: str) -> ColumnInfo | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @property
    def qualified(self) -> tuple[str, str]:
        return self.schema, self.name


@dataclass
class Catalog:
    """Tables keyed by (schema, name), every schema holding a relation of each route's name, and the result
    type of the shadow's distance operators."""

    tables: dict[tuple[str, str], TableInfo] = field(default_factory=dict)
    # relname -> schemas that hold a relation of that name (for search_path resolution)
    relations: dict[str, frozenset[str]] = field(default_factory=dict)
    # (shadow schema, shadow table) -> {operator: result type} for the shadow column's type
    operator_results: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    # config text of a table ("items", "public.items") -> where the server resolved it
    resolved: dict[str, tuple[str, str]] = field(default_factory=dict)

    def lookup(self, table: str) -> TableInfo | None:
        """The table a config entry names: resolved by the server at load time, or by its qualified name."""
        key = self.resolved.get(table)
        if key is None:
            schema, _, name = table.rpartition(".")
            key = (schema, name) if schema else None
        return self.tables.get(key) if key else None

    def schemas_with(self, relname: str) -> frozenset[str] | None:
        """Schemas holding a relation named `relname`, or None if the catalog never looked."""
        return self.relations.get(relname)

    @classmethod
    def build(cls, tables: Iterable[TableInfo], extra_relations: Iterable[tuple[str, str]] = (),
              operator_results: dict[tuple[str, str], dict[str, str]] | None = None) -> Catalog:
        """A catalog from hand-made table descriptions (tests, `explain` without a server)."""
        catalog = cls(operator_results=dict(operator_results or {}))
        pairs = [t.qualified for t in tables]
        for table in tables:
            catalog.tables[table.qualified] = table
            catalog.resolved.setdefault(f"{table.schema}.{table.name}", table.qualified)
        for schema, name in [*pairs, *extra_relations]:
            catalog.relations[name] = catalog.relations.get(name, frozenset()) | {schema}
        return catalog


_RESOLVE = """
SELECT c.oid, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1::text)
"""
_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_INDEXES = """
SELECT ic.relname, am.amname, pg_catalog.pg_get_indexdef(i.indexrelid, 1, true), opc.opcname,
       (SELECT o.oprname FROM pg_catalog.pg_amop ao JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr
        WHERE ao.amopfamily = opc.opcfamily AND ao.amoppurpose = 'o'
          AND ao.amoplefttype = opc.opcintype LIMIT 1),
       i.indpred IS NOT NULL
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
JOIN pg_catalog.pg_opclass opc ON opc.oid = i.indclass[0]
WHERE i.indrelid = $1::oid AND i.indisvalid AND i.indnkeyatts >= 1
ORDER BY ic.relname
"""
_RELATIONS = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'
"""
_OPERATORS = """
SELECT o.oprname, pg_catalog.format_type(o.oprresult, NULL)
FROM pg_catalog.pg_operator o
WHERE o.oprleft = $1::oid AND o.oprright = $1::oid AND o.oprname = ANY($2::text[])
"""
_DISTANCE_OPERATORS = ["<->", "<=>", "<#>", "<+>", "<~>", "<%>"]


async def _load_table(conn: asyncpg.Connection, table: str) -> tuple[TableInfo, dict[str, int]] | None:
    row = await conn.fetchrow(_RESOLVE, quote_table(table))
    if row is None:
        return None
    oid, schema, name = row
    column_rows = await conn.fetch(_COLUMNS, oid)
    index_rows = await conn.fetch(_INDEXES, oid)
    columns = tuple(ColumnInfo(r[0], r[1]) for r in column_rows)
    indexes = tuple(IndexInfo(name=r[0], method=r[1], key=r[2], opclass=r[3], order_operator=r[4], partial=r[5])
                    for r in index_rows)
    return TableInfo(schema, name, columns, indexes), {r[0]: r[2] for r in column_rows}


async def load_catalog(conn: asyncpg.Connection, routes: Sequence[Route]) -> Catalog:
    """Introspect every route's table and shadow table. Missing tables are simply absent from the catalog."""
    catalog = Catalog()
    names: set[str] = set()
    for route in routes:
        names.add(route.relname)
        loaded = await _load_table(conn, route.table)
        if loaded is not None:
            catalog.tables[loaded[0].qualified] = loaded[0]
            catalog.resolved[route.table] = loaded[0].qualified
        if not route.shadow_table:
            continue
        names.add(route.shadow_table.rpartition(".")[2])
        shadow = await _load_table(conn, route.shadow_table)
        if shadow is None:
            continue
        info, type_oids = shadow
        catalog.tables[info.qualified] = info
        catalog.resolved[route.shadow_table] = info.qualified
        type_oid = type_oids.get(route.pg_shadow_column)
        if type_oid is not None:
            rows = await conn.fetch(_OPERATORS, type_oid, _DISTANCE_OPERATORS)
            catalog.operator_results[info.qualified] = {r[0]: r[1] for r in rows}
    for schema, relname in await conn.fetch(_RELATIONS, sorted(names)):
        catalog.relations[relname] = catalog.relations.get(relname, frozenset()) | {schema}
    for name in names:
        catalog.relations.setdefault(name, frozenset())
    return catalog
