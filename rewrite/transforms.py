"""The rewrites, one rule per function: `rule(expression, query, ...) -> expression`.

Each rule takes a statement that `analyze` tagged (or a copy of it: sqlglot copies the tags) and returns the
same tree changed in place; `to_primary` and `to_shadow` copy the statement first and chain the rules. A rule
that cannot produce a query equivalent to the hand-written one on its target raises `Passthrough`.

Shared example setup for the doctests:

>>> from pgcutover.core.config import Route
>>> from pgcutover.rewrite.analyze import analyze
>>> from pgcutover.rewrite.dialect import to_sql
>>> route = Route(table="public.items", column="embedding", vector_column="embedding_vector",
...               shadow_table="ruvector_new.items", shadow_column="embedding", shadow_type="ruvector_new.vector")
>>> q = analyze("SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5", [route])
>>> to_sql(to_primary(q.expression, q))
'SELECT id FROM items WHERE embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $1 LIMIT 5'
>>> to_sql(to_shadow(q.expression, q))
'SELECT id FROM ruvector_new.items ORDER BY embedding <-> $1::ruvector_new.vector LIMIT 5'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from pgcutover.rewrite.analyze import (
    MARK,
    TAG_COLUMN,
    TAG_DISTANCE,
    TAG_ORDER_KEY,
    TAG_SCOPE,
    TAG_TABLE,
    Passthrough,
    SimilarityQuery,
    is_pgvector_type,
    norm,
    vector_subquery,
)
from pgcutover.rewrite.catalog import FLOAT8, IndexInfo
from pgcutover.rewrite.dialect import OPERATOR_NODES, VectorDistanceFunc, build_type

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.catalog import Catalog, TableInfo

_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
# PostgreSQL's reserved key words (Appendix C): they must be quoted as column or table names.
_RESERVED_WORDS = """
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation
column concurrently constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze
from full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references
returning right select session_user similar some symmetric system_user table tablesample then to trailing true union
unique user using variadic verbose when where window with
"""
_RESERVED = frozenset(_RESERVED_WORDS.split())


def identifier(name: str) -> exp.Identifier:
    """An identifier for an exact catalog name, quoted only when PostgreSQL would otherwise change it."""
    quoted = not _PLAIN_IDENT.fullmatch(name) or name in _RESERVED
    return exp.Identifier(this=name, quoted=quoted)


def table_parts(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return schema or None, name


@dataclass
class _Tags:
    table: exp.Table | None = None
    scope: exp.Select | None = None
    distances: dict[int, exp.Expression] = field(default_factory=dict)
    columns: dict[int, exp.Column] = field(default_factory=dict)
    order_key: exp.Ordered | None = None


def _tags(expression: exp.Expression) -> _Tags:
    tags = _Tags()
    for node in expression.walk():
        mark = node.meta.get(MARK) if node._meta else None
        if mark is None:
            continue
        if mark == TAG_TABLE:
            tags.table = node
        elif mark == TAG_SCOPE:
            tags.scope = node
        elif isinstance(mark, tuple) and mark[0] == TAG_DISTANCE:
            tags.distances[mark[1]] = node
        elif isinstance(mark, tuple) and mark[0] == TAG_COLUMN:
            tags.columns[mark[1]] = node
        elif isinstance(mark, tuple) and mark[0] == TAG_ORDER_KEY:
            tags.order_key = node
    return tags


def _operand_column(operand: exp.Expression) -> exp.Column:
    return operand.this if isinstance(operand, exp.Cast) else operand


def _column_like(original: exp.Column, name: str, query: SimilarityQuery, *, keep_db: bool) -> exp.Column:
    """`name` qualified the way `original` was; unqualified names get the table's name in multi-source scopes,
    where a new name might be ambiguous."""
    table = original.args.get("table")
    db = original.args.get("db") if keep_db else None
    if table is None and not query.single_source:
        table = identifier(query.table_alias)
    return exp.Column(this=identifier(name), table=table.copy() if table else None,
                      db=db.copy() if db else None)


# -- primary ------------------------------------------------------------------------------------------------
def retarget_primary(expression: exp.Expression, query: SimilarityQuery) -> exp.Expression:
    """Point every distance's route-column operand at `vector_column` (dropping a legacy `::vector` cast).

    >>> q = analyze("SELECT i.id FROM items i WHERE i.embedding::vector <=> $1 < 0.3", [route])
    >>> to_sql(retarget_primary(q.expression.copy(), q))
    'SELECT i.id FROM items AS i WHERE i.embedding_vector <=> $1 < 0.3'
    """
    tags = _tags(expression)
    for index, use in enumerate(query.distances):
        node = tags.distances[index]
        operand = node.args[use.column_arg]
        column = _operand_column(operand)
        target = query.route.pg_vector_column
        if operand is column and norm(column.this) == target:
            continue
        node.set(use.column_arg, _column_like(column, target, query, keep_db=True))
    return expression


def retarget_vector_subqueries(expression: exp.Expression, query: SimilarityQuery) -> exp.Expression:
    """`(SELECT embedding FROM items WHERE id = $1)` as a query vector reads the row's pgvector value, whatever
    the application calls the column (the fallback merge reads the legacy value too).

    >>> q = analyze("SELECT id FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = $1)", [route])
    >>> to_sql(retarget_vector_subqueries(q.expression.copy(), q))
    'SELECT id FROM items ORDER BY embedding <-> (SELECT embedding_vector FROM items WHERE id = $1)'
    """
    target = query.route.pg_vector_column
    for node in list(expression.find_all(exp.Subquery)):
        if vector_subquery(node) is not node:
            continue
        column = node.this.expressions[0]
        if isinstance(column, exp.Alias):  # `SELECT U0."embedding" AS "embedding"` (Django)
            column = column.this
        if norm(column.this) != target:
            column.replace(exp.Column(this=identifier(target), table=column.args.get("table")))
    return expression


def needs_not_null(query: SimilarityQuery) -> bool:
    """Rows without a pgvector value must not rank when the distance orders or filters rows and the
    application's column is not the vector column."""
    route = query.route
    if route.column == route.pg_vector_column:
        return False
    retargeted = [u for u in query.distances
                  if norm(_operand_column(u.node.args[u.column_arg]).this) == route.column]
    return any(u.ordering or u.clause == "where" for u in retargeted)


def add_vector_not_null(expression: exp.Expression, query: SimilarityQuery) -> exp.Expression:
    """AND `vector_column IS NOT NULL` into the WHERE of the route table's SELECT.

    >>> q = analyze("SELECT id FROM items WHERE a = 1 OR b = 2", [route])
    Traceback (most recent call last):
    ...
    pgcutover.rewrite.analyze.Passthrough: no-distance
    >>> q = analyze("SELECT id FROM items WHERE a = 1 OR b = 2 ORDER BY embedding <-> $1", [route])
    >>> to_sql(add_vector_not_null(q.expression.copy(), q))
    'SELECT id FROM items WHERE (a = 1 OR b = 2) AND embedding_vector IS NOT NULL ORDER BY embedding <-> $1'
    """
    select = _tags(expression).scope
    assert select is not None
    column = exp.Column(this=identifier(query.route.pg_vector_column),
                        table=None if query.single_source else identifier(query.table_alias))
    condition = exp.Is(this=column, expression=exp.Null(), negate=True)
    where = select.args.get("where")
    if where is None:
        select.set("where", exp.Where(this=condition))
    elif not any(part == condition for part in _conjuncts(where.this)):
        existing = where.this
        if isinstance(existing, exp.Or):
            existing = exp.Paren(this=existing)
        where.set("this", exp.And(this=existing, expression=condition))
    return expression


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def index_for(query: SimilarityQuery, catalog: Catalog | None) -> IndexInfo | None:
    """The expression index (`vector_column::type`) that can serve the ORDER BY, when no plain index on the
    vector column can."""
    # Under DISTINCT or GROUP BY an ORDER BY expression must match the select list: leave those alone.
    if catalog is None or not query.order_by_distance or query.function_form or query.aggregated:
        return None
    info = catalog.lookup(query.route.table)
    if info is None:
        return None
    column = query.route.pg_vector_column
    usable = [i for i in info.indexes if i.order_operator == query.operator and not i.partial]
    if any(i.column == column for i in usable):
        return None
    for index in usable:
        cast = index.cast
        if cast is not None and cast[0] == column:
            return index
    return None


def match_index_shape(expression: exp.Expression, query: SimilarityQuery, index: IndexInfo,
                      vector_type: str = "vector") -> exp.Expression:
    """Write the ORDER BY distance the way the expression index is defined, so the planner can use it.

    A bare parameter is cast to the vector column's type first (`$1::vector::halfvec(3072)`): the server then
    still describes $1 as that type, so clients that bind vectors in binary keep working.

    >>> from pgcutover.rewrite.catalog import Catalog, ColumnInfo, TableInfo
    >>> idx = IndexInfo("items_hnsw", "hnsw", "((embedding_vector)::halfvec(3072))", "halfvec_cosine_ops", "<=>")
    >>> table = TableInfo("public", "items", (ColumnInfo("id", "integer"),), (idx,))
    >>> q = analyze("SELECT id FROM items ORDER BY embedding_vector <=> $1 LIMIT 10", [route])
    >>> to_sql(match_index_shape(q.expression.copy(), q, idx))
    'SELECT id FROM items ORDER BY (embedding_vector::halfvec(3072)) <=> $1::vector::halfvec(3072) LIMIT 10'
    >>> q = analyze("SELECT id FROM items ORDER BY embedding_vector <=> '[1,2]' LIMIT 10", [route])
    >>> to_sql(match_index_shape(q.expression.copy(), q, idx))
    "SELECT id FROM items ORDER BY (embedding_vector::halfvec(3072)) <=> ('[1,2]')::halfvec(3072) LIMIT 10"
    """
    cast = index.cast
    assert cast is not None
    column_name, type_ = cast
    tags = _tags(expression)
    ordered = tags.order_key
    assert ordered is not None
    main = ordered.meta[MARK][1]
    use = query.distances[main]
    node = tags.distances[main]
    column = _column_like(_operand_column(node.args[use.column_arg]), column_name, query, keep_db=True)
    vector = node.args["expression" if use.column_arg == "this" else "this"].copy()
    if isinstance(vector, exp.Parameter):
        vector = exp.Cast(this=vector, to=build_type(vector_type))
    else:
        vector = exp.Paren(this=vector)
    left = exp.Paren(this=exp.Cast(this=column, to=type_.copy()))
    right = exp.Cast(this=vector, to=type_.copy())
    args = (left, right) if use.column_arg == "this" else (right, left)
    ordered.set("this", OPERATOR_NODES[query.operator](this=args[0], expression=args[1]))
    return expression


def primary_changes(query: SimilarityQuery, catalog: Catalog | None = None) -> bool:
    """Whether the primary needs anything but the client's own bytes."""
    column = query.route.pg_vector_column
    for use in query.distances:
        operand = use.node.args[use.column_arg]
        if isinstance(operand, exp.Cast) or norm(operand.this) != column:
            return True
        if use.vector_key is not None and column != query.route.column:
            return True
    return index_for(query, catalog) is not None


def to_primary(expression: exp.Expression, query: SimilarityQuery,
               catalog: Catalog | None = None) -> exp.Expression:
    """The statement for the table's own pgvector column (a copy; `expression` is not changed)."""
    expression = expression.copy()
    not_null = needs_not_null(query)
    retarget_vector_subqueries(expression, query)
    retarget_primary(expression, query)
    if not_null:
        add_vector_not_null(expression, query)
    index = index_for(query, catalog)
    if index is not None:
        match_index_shape(expression, query, index, _vector_type(query, catalog))
    return expression


def _vector_type(query: SimilarityQuery, catalog: Catalog | None) -> str:
    """The vector column's type without its typmod ("vector" when unknown)."""
    info = catalog.lookup(query.route.table) if catalog is not None else None
    column = info.column(query.route.pg_vector_column) if info is not None else None
    return column.type.split("(")[0] if column is not None else "vector"


# -- shadow -------------------------------------------------------------------------------------------------
def swap_to_shadow_table(expression: exp.Expression, query: SimilarityQuery) -> exp.Expression:
    """The route table becomes `shadow_table`; the query keeps using the name it used for it.

    >>> docs = Route(table="docs", column="emb", shadow_table="shadow.docs_v2")
    >>> q = analyze("SELECT docs.id FROM public.docs ORDER BY emb <-> $1", [docs])
    >>> to_sql(swap_to_shadow_table(q.expression.copy(), q))
    'SELECT docs.id FROM shadow.docs_v2 AS docs ORDER BY emb <-> $1'
    """
    route = query.route
    assert route.shadow_table
    table = _tags(expression).table
    assert table is not None
    schema, name = table_parts(route.shadow_table)
    table.set("this", identifier(name))
    table.set("db", identifier(schema) if schema else None)
    table.set("catalog", None)
    if table.args.get("alias") is None and name != query.table_alias:
        table.set("alias", exp.TableAlias(this=identifier(query.table_alias)))
    return expression


def shadow_vector(vector: exp.Expression, shadow_type: exp.DataType) -> exp.Expression:
    """The query vector cast to the shadow's type. A literal or parameter that was cast to a vector type is
    re-cast directly (`'[1,2]'::vector` -> `'[1,2]'::ruvector.vector`), since a cast between two vector
    extensions' types may not exist.

    >>> from pgcutover.rewrite.dialect import parse_one
    >>> to_sql(shadow_vector(parse_one("SELECT '[1,2]'::vector(2)").selects[0], build_type("ruvector.vector")))
    "'[1,2]'::ruvector.vector"
    """
    if isinstance(vector, exp.Cast) and isinstance(vector.this, (exp.Literal, exp.Parameter)):
        to = vector.args.get("to")
        if isinstance(to, exp.DataType) and to.this in (exp.DType.VECTOR, exp.DType.USERDEFINED, exp.DType.BIT):
            return exp.Cast(this=vector.this.copy(), to=shadow_type.copy())
    return exp.Cast(this=vector.copy(), to=shadow_type.copy())


def shadow_distance_type(route: Route, catalog: Catalog | None, use_function: bool, operator: str) -> str | None:
    """Result type of the distance on the shadow, None when unknown."""
    if is_pgvector_type(route.shadow_type):
        return FLOAT8
    if use_function:
        return None
    if catalog is not None and route.shadow_table:
        info = catalog.lookup(route.shadow_table)
        if info is not None:
            return catalog.operator_results.get(info.qualified, {}).get(operator)
    return None


def retarget_shadow(expression: exp.Expression, query: SimilarityQuery,
                    catalog: Catalog | None = None) -> exp.Expression:
    """Distances use `shadow_column` and the query vector cast to `shadow_type`, so the shadow's own operator
    runs; a distance the client receives keeps type double precision.

    >>> q = analyze("SELECT id, embedding <-> '[1,2]' AS d FROM items ORDER BY d", [route])
    >>> to_sql(retarget_shadow(q.expression.copy(), q))
    Traceback (most recent call last):
    ...
    pgcutover.rewrite.analyze.Passthrough: shadow-distance-type
    """
    route = query.route
    shadow_type = build_type(route.shadow_type)
    tags = _tags(expression)
    for index, use in enumerate(query.distances):
        node = tags.distances[index]
        result = shadow_distance_type(route, catalog, use.in_function, use.operator)
        if use.in_function and result is None:
            raise Passthrough("shadow-function-form")
        if use.clause == "select" and (result is None or (result != FLOAT8 and query.aggregated)):
            # unknown result type, or a cast back to float8 that DISTINCT/GROUP BY could no longer match
            raise Passthrough("shadow-distance-type")
        column = _operand_column(node.args[use.column_arg])
        other_arg = "expression" if use.column_arg == "this" else "this"
        node.set(use.column_arg, _column_like(column, route.pg_shadow_column, query, keep_db=False))
        node.set(other_arg, shadow_vector(node.args[other_arg], shadow_type))
        if use.clause == "select" and result != FLOAT8:
            replacement: exp.Expression = exp.Cast(this=node.copy(), to=exp.DataType.build("double"))
            if use.projection is not None and not isinstance(node.parent, exp.Alias):
                name = node.function if isinstance(node, VectorDistanceFunc) else "?column?"
                replacement = exp.Alias(this=replacement, alias=exp.Identifier(this=name, quoted=True))
            node.replace(replacement)
    return expression


def _shadow_tables(query: SimilarityQuery, catalog: Catalog | None) -> tuple[TableInfo | None, TableInfo | None]:
    if catalog is None or not query.route.shadow_table:
        return None, None
    return catalog.lookup(query.route.table), catalog.lookup(query.route.shadow_table)


def shadow_name(route: Route, name: str) -> str:
    """A route-table column's name in the shadow: the vector column is renamed, the rest keep their names."""
    return route.pg_shadow_column if name == route.pg_vector_column else name


def _check_shadow_column(query: SimilarityQuery, name: str, catalog: Catalog | None, *, type_matters: bool) -> str:
    route = query.route
    mapped = shadow_name(route, name)
    primary, shadow = _shadow_tables(query, catalog)
    if primary is None or shadow is None:
        # Without a catalog only a NULL test of the vector column is safe: its type on the shadow is unknown.
        if name in (route.column, route.pg_vector_column) and (name != route.pg_vector_column or type_matters):
            raise Passthrough("vector-column-needs-catalog", name)
        return mapped
    source, target = primary.column(name), shadow.column(mapped)
    if source is None or target is None:
        raise Passthrough("shadow-missing-column", mapped)
    if type_matters and source.type != target.type:
        raise Passthrough("shadow-column-type", f"{name}: {source.type} vs {target.type}")
    return mapped


def _cast_back(query: SimilarityQuery, name: str, catalog: Catalog | None) -> exp.DataType | None:
    """The primary's type of a returned route-table column whose shadow column has another vector type (a
    halfvec or RuVector shadow of a vector column): the shadow's value is cast back to it, so the client gets its
    own type. None when the types agree or are not both known."""
    primary, shadow = _shadow_tables(query, catalog)
    if primary is None or shadow is None:
        return None
    source, target = primary.column(name), shadow.column(shadow_name(query.route, name))
    if source is None or target is None or source.type == target.type:
        return None
    if not is_pgvector_type(source.type):
        return None
    return build_type(source.type)


def _check_uncertain_column(query: SimilarityQuery, name: str, catalog: Catalog | None) -> None:
    """A name that may or may not be the route table's keeps its spelling; if it is the route table's, the
    shadow must have it too, with the same type."""
    primary, shadow = _shadow_tables(query, catalog)
    if primary is None or shadow is None or primary.column(name) is None:
        return
    target = shadow.column(name)
    if target is None or target.type != primary.column(name).type:
        raise Passthrough("shadow-missing-column", name)


def rename_shadow_columns(expression: exp.Expression, query: SimilarityQuery,
                          catalog: Catalog | None = None) -> exp.Expression:
    """Other references to route-table columns: schema-qualified ones lose the schema (the table changed), the
    vector column is renamed, and a projection whose name changed gets its old name back as an alias.

    >>> q = analyze("SELECT id FROM items WHERE embedding_vector IS NOT NULL ORDER BY embedding <-> $1", [route])
    >>> to_sql(rename_shadow_columns(q.expression.copy(), q))
    'SELECT id FROM items WHERE embedding IS NOT NULL ORDER BY embedding <-> $1'
    """
    route = query.route
    tags = _tags(expression)
    for index, use in enumerate(query.columns):
        node = tags.columns[index]
        vectorish = use.name in (route.column, route.pg_vector_column)
        if not use.certain and (vectorish or shadow_name(route, use.name) != use.name):
            raise Passthrough("ambiguous-column", use.name)
        if not use.certain:
            _check_uncertain_column(query, use.name, catalog)
            continue
        cast = _cast_back(query, use.name, catalog) if use.clause == "select" else None
        mapped = _check_shadow_column(query, use.name, catalog, type_matters=not use.null_test and cast is None)
        column = _column_like(node, mapped, query, keep_db=False) if mapped != use.name or node.args.get("db") \
            else None
        if cast is not None:
            column = exp.Cast(this=column or node.copy(), to=cast)
        if column is None:
            continue
        node.replace(column)
        if use.output is not None and (mapped != use.name or cast is not None) and tags.scope is not None:
            # the projection was named after the column: keep that name for the client
            projection = tags.scope.expressions[use.output]
            projection.replace(exp.Alias(this=projection.copy(), alias=identifier(use.name)))
    return expression


def expand_route_star(expression: exp.Expression, query: SimilarityQuery,
                      catalog: Catalog | None = None) -> exp.Expression:
    """`*` and `alias.*` over the route table become its column list, named as on the primary.

    >>> q = analyze("SELECT * FROM items ORDER BY embedding <-> $1", [route])
    >>> to_sql(expand_route_star(q.expression.copy(), q))
    Traceback (most recent call last):
    ...
    pgcutover.rewrite.analyze.Passthrough: star-needs-catalog
    """
    if not query.star:
        return expression
    primary, shadow = _shadow_tables(query, catalog)
    if primary is None or shadow is None:
        raise Passthrough("star-needs-catalog")
    select = _tags(expression).scope
    assert select is not None
    refuse_star_joins(select)
    route_columns = []
    for column in primary.columns:
        cast = _cast_back(query, column.name, catalog)
        mapped = _check_shadow_column(query, column.name, catalog, type_matters=cast is None)
        node: exp.Expression = exp.Column(this=identifier(mapped),
                                          table=None if query.single_source else identifier(query.table_alias))
        if cast is not None:
            node = exp.Cast(this=node, to=cast)
        renamed = mapped != column.name or cast is not None
        route_columns.append(exp.Alias(this=node, alias=identifier(column.name)) if renamed else node)
    expand_stars(select, query.table_alias, route_columns, lambda source: source.alias_or_name)
    return expression


def refuse_star_joins(select: exp.Select, prefix: str = "") -> None:
    """`*` over JOIN ... USING or NATURAL JOIN merges columns: its expansion is not a plain list of columns."""
    for join in select.args.get("joins") or []:
        if join.args.get("using") or (join.args.get("method") or "").upper() == "NATURAL":
            raise Passthrough(f"{prefix}star-join-using")


def expand_stars(select: exp.Select, table_alias: str, route_columns: Sequence[exp.Expression],
                 source_name: Callable[[exp.Expression], str | None], prefix: str = "") -> None:
    """`*` and `<route alias>.*` in `select` become `route_columns` where the route table stands; `*` over any
    other FROM item becomes `name.*` (so the route table's columns can be rewritten and the rest stay as they
    are). Shared by the shadow rewrite (transforms) and the merged query (fallback/merge.py)."""
    expanded: list[exp.Expression] = []
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            for source in from_items(select):
                if source._meta and source.meta.get(MARK) == TAG_TABLE:
                    expanded.extend(c.copy() for c in route_columns)
                else:
                    name = source_name(source)
                    if not name:
                        raise Passthrough(f"{prefix}star-unnamed-source")
                    expanded.append(exp.Column(this=exp.Star(), table=identifier(name)))
        elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star) \
                and norm(projection.args.get("table")) == table_alias:
            expanded.extend(c.copy() for c in route_columns)
        else:
            expanded.append(projection)
    select.set("expressions", expanded)


def from_items(select: exp.Select) -> list[exp.Expression]:
    """The tables and subqueries a SELECT reads: its FROM item and every JOIN's."""
    items = []
    from_ = select.args.get("from_")
    if from_ is not None:
        items.append(from_.this)
    items.extend(join.this for join in select.args.get("joins") or [])
    return items


def to_shadow(expression: exp.Expression, query: SimilarityQuery,
              catalog: Catalog | None = None) -> exp.Expression:
    """The statement for the shadow copy (a copy; `expression` is not changed)."""
    if not query.route.shadow_table:
        raise Passthrough("no-shadow")
    expression = expression.copy()
    retarget_vector_subqueries(expression, query)
    rename_shadow_columns(expression, query, catalog)
    retarget_shadow(expression, query, catalog)
    expand_route_star(expression, query, catalog)
    swap_to_shadow_table(expression, query)
    return expression
