"""Recognise similarity queries on a configured route, or say precisely why a statement passes through.

A statement is a similarity query when it is one SELECT (CTEs, subqueries, joins allowed) that references
exactly one route table once, and computes a pgvector distance between that table's route column and a query
vector in the select list, WHERE or ORDER BY of the SELECT whose FROM holds the table. Everything the rewrite
needs is resolved here with PostgreSQL's rules (identifier case folding, search_path, CTE visibility, column
scoping, ORDER BY output names); anything that cannot be resolved with certainty raises `Passthrough` with a
short reason, so the proxy forwards the client's bytes untouched. Never guess.

Nodes the rewrite must touch are tagged in their `meta` (sqlglot copies meta with the tree), so transforms work
on a copy of the parsed statement without re-analysing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp
from sqlglot.errors import SqlglotError

from pgcutover.core.enums import Metric
from pgcutover.rewrite.dialect import DISTANCE_NODES, VectorDistance, VectorDistanceFunc, distance_operator, parse

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.catalog import Catalog, TableInfo

MARK = "pgcutover"  # meta key of the tags below
TAG_TABLE = "route-table"
TAG_SCOPE = "route-scope"
TAG_STAR = "route-star"
TAG_DISTANCE = "distance"  # meta[MARK] = ("distance", index into SimilarityQuery.distances)
TAG_COLUMN = "column"  # meta[MARK] = ("column", index into SimilarityQuery.columns)
TAG_ORDER_KEY = "order-key"  # the Ordered node whose key is the main distance (directly or by output name)
TAG_VECTOR_SUBQUERY = "vector-subquery"  # `(SELECT embedding FROM <route table> WHERE key = $n)` as a query vector

_LEADING = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/|\()*(select|with)\b",
                      re.IGNORECASE)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_PGVECTOR_TYPES = {"vector", "halfvec", "sparsevec", "bit"}


class Passthrough(Exception):
    """The statement is forwarded untouched; `reason` is the short label counted in metrics. `route` names the
    route when the statement computes a distance on a route's column but cannot be planned (a similarity query
    the router does not understand): on a route with legacy rows the proxy refuses it rather than answer from
    pgvector rows only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.route: Route | None = None


@dataclass(frozen=True, slots=True)
class DistanceUse:
    """One distance between the route column and a query vector."""

    node: exp.Expression  # the distance node (operator or function form)
    operator: str  # "<->", "<=>", ... or the function name ("l2_distance", ...)
    metric: str  # a core.enums.Metric: l2 | cosine | ip (negated, `<#>`) | ip_positive (inner_product()) | l1 | ...
    clause: str  # "order" | "select" | "where"
    column_arg: str  # "this" or "expression": which operand is the route column
    query_vector: exp.Expression
    param_index: int | None  # n when the query vector is $n (possibly cast)
    literal: str | None  # the vector text when the query vector is a string literal (possibly cast)
    projection: int | None  # index in the select list when the distance is (the whole of) a projection
    in_function: bool  # function form (l2_distance(...)) rather than an operator
    ordering: bool  # it sorts rows: in ORDER BY, or a projection that an ORDER BY key names
    vector_key: exp.Expression | None = None  # the query vector is the route row with this key ($n or literal)

    @property
    def nearest_first_desc(self) -> bool:
        """Whether nearest-first order is DESC (the positive inner product is a similarity, not a distance)."""
        return self.metric == Metric.IP_POSITIVE


@dataclass(frozen=True, slots=True)
class Ranking:
    """The first ORDER BY key is a strictly monotone function of one distance (the distance itself, a
    parenthesised or aliased one, an ordinal, or a score such as `1 - (embedding <=> $1)`): rows come in
    ascending (or, `descending`, descending) order of that distance's value."""

    distance: int  # index into SimilarityQuery.distances
    descending: bool  # largest distance value first
    only_key: bool  # the ORDER BY has no other key (ties may be broken any way)
    nulls_first: bool  # NULL values of the key come first (DESC's default, or NULLS FIRST)


@dataclass(frozen=True, slots=True)
class ColumnUse:
    """A reference to a route-table column outside a distance operand."""

    node: exp.Column
    name: str  # normalized column name
    certain: bool  # False: it may also resolve to another source
    clause: str
    output: int | None  # projection index when the projection's name comes from this column
    null_test: bool  # the direct operand of IS [NOT] NULL


@dataclass(frozen=True, slots=True)
class SimilarityQuery:
    """Everything the rewrites and the fallback merge need. The AST is shared with the plan cache: `.copy()`
    it before changing anything."""

    route: Route
    expression: exp.Expression  # the whole statement
    select: exp.Select  # the SELECT whose FROM holds the route table
    table: exp.Table  # the route table reference
    table_alias: str  # the name the query uses for it (alias or relation name)
    table_schema: str | None  # where the reference resolved (None: unqualified route without catalog)
    top_level: bool  # `select` is the statement itself
    single_source: bool  # the route table is the only FROM item of `select`
    operator: str
    metric: str
    function_form: bool
    query_vector: exp.Expression
    param_index: int | None
    literal: str | None
    order_by_distance: bool  # first ORDER BY key is the main distance, nearest first (ASC; DESC for inner_product())
    pure_order: bool  # ORDER BY is exactly that key, ASC NULLS LAST
    rank: Ranking | None  # how the first ORDER BY key ranks rows by a distance (None: it does not)
    limit: exp.Expression | None
    offset: exp.Expression | None
    where: exp.Expression | None
    projections: tuple[exp.Expression, ...]
    distances: tuple[DistanceUse, ...]
    columns: tuple[ColumnUse, ...]
    star: bool  # the select list expands the route table with `*` or `alias.*`
    aggregated: bool  # DISTINCT, GROUP BY, HAVING or aggregates in `select`

    @property
    def limit_value(self) -> int | None:
        return _int_literal(self.limit)

    @property
    def limit_param(self) -> int | None:
        return _param_index(self.limit)

    @property
    def offset_value(self) -> int | None:
        return _int_literal(self.offset)

    @property
    def offset_param(self) -> int | None:
        return _param_index(self.offset)

    @property
    def vector_params(self) -> frozenset[int]:
        return frozenset(d.param_index for d in self.distances if d.param_index is not None)


def _int_literal(node: exp.Expression | None) -> int | None:
    while isinstance(node, exp.Cast):  # `LIMIT 5::integer`
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    return None


def _param_index(node: exp.Expression | None) -> int | None:
    while isinstance(node, exp.Cast):
        node = node.this
    if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) and node.this.this.isdigit():
        return int(node.this.this)
    return None


def norm(identifier: exp.Identifier | str | None) -> str | None:
    """PostgreSQL's spelling of a name: unquoted identifiers fold ASCII letters to lower case."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return identifier
    if not isinstance(identifier, exp.Identifier):
        return None
    return identifier.this if identifier.quoted else identifier.this.translate(_ASCII_LOWER)


def normalize_search_path(search_path: Iterable[str]) -> tuple[str, ...]:
    out = []
    for entry in search_path:
        entry = entry.strip()
        if len(entry) >= 2 and entry[0] == entry[-1] == '"':
            entry = entry[1:-1].replace('""', '"')
        if entry:
            out.append(entry)
    return tuple(out)


# -- scopes ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Source:
    name: str | None
    kind: str  # route | table | derived | opaque
    node: exp.Expression
    columns: frozenset[str] | None = None
    route: Route | None = None
    nullable: bool = False
    schema: str | None = None
    relname: str | None = None
    aliased: bool = False


@dataclass(eq=False)
class _Scope:
    select: exp.Select
    parent: _Scope | None
    sources: list[_Source] = field(default_factory=list)
    has_using_join: bool = False


@dataclass
class _Found:
    columns: list[tuple[exp.Column, _Scope]] = field(default_factory=list)
    distances: list[tuple[exp.Expression, _Scope]] = field(default_factory=list)
    stars: list[tuple[exp.Expression, _Scope]] = field(default_factory=list)
    route_refs: list[tuple[_Scope, _Source]] = field(default_factory=list)


def _output_names(query: exp.Expression) -> frozenset[str] | None:
    """Output column names of a query, or None when they cannot be known without a catalog."""
    while isinstance(query, exp.Subquery):
        query = query.this
    if isinstance(query, exp.SetOperation):
        return _output_names(query.this)
    if not isinstance(query, exp.Select):
        return None
    names = set()
    for projection in query.expressions:
        if isinstance(projection, exp.Alias):
            names.add(norm(projection.args.get("alias")))
            continue
        inner = projection
        while isinstance(inner, exp.Cast):
            inner = inner.this
        if isinstance(inner, exp.Column) and isinstance(inner.this, exp.Identifier):
            names.add(norm(inner.this))
        else:
            return None
    return frozenset(n for n in names if n is not None)


def _alias_columns(node: exp.Expression) -> list[str]:
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        return [norm(c) or "" for c in alias.args.get("columns") or []]
    return []


class _Walker:
    """Builds the scope tree of one statement and collects columns, distances, stars and route references."""

    def __init__(self, resolver: _TableResolver) -> None:
        self.resolver = resolver
        self.found = _Found()

    # queries ---------------------------------------------------------------------------------------------
    def query(self, node: exp.Expression, parent: _Scope | None, ctes: dict[str, frozenset[str] | None]) -> None:
        if isinstance(node, exp.Subquery):
            if any(node.args.get(k) for k in ("order", "limit", "offset")):
                raise Passthrough("parenthesized-query")
            self.query(node.this, parent, ctes)
        elif isinstance(node, exp.Select):
            self.select(node, parent, ctes)
        elif isinstance(node, exp.SetOperation):
            ctes = self.with_(node, parent, ctes)
            self.query(node.this, parent, ctes)
            self.query(node.expression, parent, ctes)
            for key in ("order", "limit", "offset"):
                if node.args.get(key) is not None:
                    self.expressions(node.args[key], None, ctes, parent)
        elif isinstance(node, exp.Values):
            self.expressions(node, None, ctes, parent)
        elif isinstance(node, _WRITES):
            raise Passthrough("writes")
        else:
            raise Passthrough("unsupported-query", type(node).__name__)

    def with_(self, node: exp.Expression, parent: _Scope | None,
              ctes: dict[str, frozenset[str] | None]) -> dict[str, frozenset[str] | None]:
        with_ = node.args.get("with_")
        if not with_:
            return ctes
        if with_.args.get("recursive"):
            raise Passthrough("recursive-cte")
        visible = dict(ctes)
        for cte in with_.expressions:
            self.query(cte.this, parent, visible)
            names = _alias_columns(cte)
            columns = frozenset(names) if names else _output_names(cte.this)
            visible[norm(cte.args["alias"].this)] = columns
        return visible

    def select(self, select: exp.Select, parent: _Scope | None, ctes: dict[str, frozenset[str] | None]) -> None:
        if select.args.get("into"):
            raise Passthrough("select-into")
        if select.args.get("locks"):
            raise Passthrough("locking")
        ctes = self.with_(select, parent, ctes)
        scope = _Scope(select, parent)
        from_ = select.args.get("from_")
        if from_ is not None:
            self.source(from_.this, scope, ctes, None)
        for join in select.args.get("joins") or []:
            self.source(join.this, scope, ctes, join)
        for key, value in select.args.items():
            if key in ("with_", "from_") or value is None:
                continue
            if key == "joins":
                for join in value:
                    for jkey in ("on", "using", "match_condition"):
                        value_ = join.args.get(jkey)
                        for part in value_ if isinstance(value_, list) else [value_]:
                            if isinstance(part, exp.Expression):
                                self.expressions(part, scope, ctes, scope)
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, exp.Expression):
                    self.expressions(item, scope, ctes, scope)

    def source(self, node: exp.Expression, scope: _Scope, ctes: dict[str, frozenset[str] | None],
               join: exp.Join | None) -> None:
        if join is not None:
            side = (join.args.get("side") or "").upper()
            if join.args.get("using") or (join.args.get("method") or "").upper() == "NATURAL":
                scope.has_using_join = True
            if side in ("RIGHT", "FULL"):
                for previous in scope.sources:
                    previous.nullable = True
        nullable = join is not None and (join.args.get("side") or "").upper() in ("LEFT", "FULL")
        alias = node.args.get("alias") if isinstance(node, exp.Expression) else None
        alias_name = norm(alias.this) if isinstance(alias, exp.TableAlias) and alias.this else None
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            if node.args.get("joins"):
                raise Passthrough("nested-join")
            self.table(node, scope, ctes, alias_name, nullable)
            return
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Query):
            if node.args.get("joins"):
                raise Passthrough("nested-join")
            # A derived table sees the enclosing query levels, not its siblings (no LATERAL here).
            self.query(node.this, scope.parent, ctes)
            names = _alias_columns(node)
            columns = frozenset(names) if names else _output_names(node.this)
            scope.sources.append(_Source(alias_name, "derived", node, columns, nullable=nullable))
            return
        if isinstance(node, exp.Subquery):
            raise Passthrough("nested-join")
        # Functions, VALUES, LATERAL, UNNEST: opaque, but what they contain may see this level.
        names = _alias_columns(node)
        name = alias_name
        if name is None and isinstance(node, exp.Table):
            name = node.alias_or_name or None
        scope.sources.append(_Source(name, "opaque", node, frozenset(names) if names else None, nullable=nullable))
        self.expressions(node, scope, ctes, scope)

    def table(self, node: exp.Table, scope: _Scope, ctes: dict[str, frozenset[str] | None],
              alias_name: str | None, nullable: bool) -> None:
        name = norm(node.this)
        db = norm(node.args.get("db"))
        if node.args.get("catalog") is not None:
            if name in self.resolver.relnames:
                raise Passthrough("catalog-qualified")
            scope.sources.append(_Source(alias_name or name, "table", node, nullable=nullable))
            return
        if db is None and name in ctes:
            names = _alias_columns(node)
            columns = frozenset(names) if names else ctes[name]
            scope.sources.append(_Source(alias_name or name, "derived", node, columns, nullable=nullable))
            return
        route, schema = self.resolver.resolve(db, name)
        source = _Source(alias_name or name, "route" if route else "table", node, route=route, nullable=nullable,
                         schema=schema, relname=name, aliased=alias_name is not None)
        if route is not None:
            if _alias_columns(node):
                raise Passthrough("column-alias-list")
            self.found.route_refs.append((scope, source))
        else:
            info = self.resolver.table_info(schema, name) if schema else None
            if info is not None:
                source.columns = frozenset(c.name for c in info.columns)
        scope.sources.append(source)

    # expressions -----------------------------------------------------------------------------------------
    def expressions(self, node: exp.Expression, scope: _Scope | None, ctes: dict[str, frozenset[str] | None],
                    query_parent: _Scope | None) -> None:
        """Walk an expression owned by `scope`; nested queries become child scopes of `query_parent`."""
        stack = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, _WRITES):
                raise Passthrough("writes")
            if isinstance(current, exp.Query) and current is not node:
                self.query(current, query_parent, ctes)
                continue
            if isinstance(current, exp.Subquery) and isinstance(current.this, exp.Query):
                self.query(current, query_parent, ctes)
                continue
            if scope is not None:
                if isinstance(current, exp.Column):
                    if isinstance(current.this, exp.Star):
                        self.found.stars.append((current, scope))
                    else:
                        self.found.columns.append((current, scope))
                    continue
                if isinstance(current, exp.Star):
                    self.found.stars.append((current, scope))
                elif isinstance(current, DISTANCE_NODES):
                    self.found.distances.append((current, scope))
            stack.extend(current.iter_expressions())


class _TableResolver:
    """Which route, if any, a table reference names, following search_path."""

    def __init__(self, routes: Sequence[Route], search_path: tuple[str, ...], catalog: Catalog | None) -> None:
        self.routes = routes
        self.search_path = normalize_search_path(search_path)
        self.catalog = catalog
        self.relnames = {r.relname for r in routes}
        self.known: set[tuple[str, str]] = set()
        for route in routes:
            for table in (route.table, route.shadow_table):
                schema, _, name = (table or "").rpartition(".")
                if schema:
                    self.known.add((schema, name))

    def route_schema(self, route: Route) -> str | None:
        if route.schema:
            return route.schema
        if self.catalog is not None and route.table in self.catalog.resolved:
            return self.catalog.resolved[route.table][0]
        return None

    def table_info(self, schema: str, name: str) -> TableInfo | None:
        return self.catalog.tables.get((schema, name)) if self.catalog is not None else None

    def _exists(self, schema: str, name: str) -> bool | None:
        if self.catalog is not None:
            schemas = self.catalog.schemas_with(name)
            if schemas is not None:
                return schema in schemas
        return True if (schema, name) in self.known else None

    def search(self, name: str) -> str | None:
        """The schema an unqualified `name` resolves to; None if nowhere. `$user` entries are skipped: the
        caller substitutes the session user when it knows it."""
        for entry in self.search_path:
            if entry == "$user":
                continue
            exists = self._exists(entry, name)
            if exists is None:
                raise Passthrough("search-path-ambiguous", f"{entry}.{name}")
            if exists:
                return entry
        return None

    def resolve(self, db: str | None, name: str) -> tuple[Route | None, str | None]:
        candidates = [r for r in self.routes if r.relname == name]
        if not candidates:
            return None, db
        unqualified_routes = [r for r in candidates if self.route_schema(r) is None]
        if db is None and unqualified_routes:
            return unqualified_routes[0], None
        schema = db if db is not None else self.search(name)
        for route in candidates:
            route_schema = self.route_schema(route)
            if route_schema is None:
                first = next((e for e in self.search_path if e != "$user"), None)
                if schema == first:
                    return route, schema
            elif route_schema == schema:
                return route, schema
        return None, schema


# -- the analysis ---------------------------------------------------------------------------------------------
def analyze(sql: str | exp.Expression, routes: Sequence[Route], search_path: tuple[str, ...] = ("public",),
            catalog: Catalog | None = None) -> SimilarityQuery:
    """The similarity query in `sql`, or raise Passthrough(reason)."""
    if isinstance(sql, str):
        if not _LEADING.match(sql):
            raise Passthrough("not-select")
        try:
            statements = parse(sql)
        except SqlglotError as exc:
            raise Passthrough("parse-error", str(exc).splitlines()[0] if str(exc) else "") from None
        if len(statements) != 1:
            raise Passthrough("multi-statement" if statements else "empty")
        expression = statements[0]
    else:
        expression = sql
        for node in expression.walk():
            if node._meta:
                node._meta.pop(MARK, None)
    if not isinstance(expression, exp.Query):
        raise Passthrough("not-select")
    if expression.find(*_WRITES):
        raise Passthrough("writes")
    resolver = _TableResolver(routes, search_path, catalog)
    walker = _Walker(resolver)
    walker.query(expression, None, {})
    try:
        return _Recognizer(expression, walker.found, resolver, catalog).run()
    except Passthrough as exc:
        exc.route = exc.route or _similarity_route(walker.found)
        raise


def _similarity_route(found: _Found) -> Route | None:
    """The route whose table the statement reads and whose column a distance in it takes, if any."""
    for _, source in found.route_refs:
        route = source.route
        assert route is not None
        names = {route.column, route.pg_vector_column}
        for node, _ in found.distances:
            for arg in ("this", "expression"):
                operand = node.args.get(arg)
                while isinstance(operand, exp.Cast | exp.Paren):
                    operand = operand.this
                if isinstance(operand, exp.Column) and norm(operand.this) in names:
                    return route
    return None


class _Recognizer:
    def __init__(self, expression: exp.Expression, found: _Found, resolver: _TableResolver,
                 catalog: Catalog | None) -> None:
        self.expression = expression
        self.found = found
        self.resolver = resolver
        self.catalog = catalog
        self._owners: dict[int, _Scope] | None = None

    def run(self) -> SimilarityQuery:
        refs = self.found.route_refs
        if not refs:
            raise Passthrough("no-route")
        if len({id(source.route) for _, source in refs}) > 1:
            raise Passthrough("multiple-routes")
        if len(refs) > 1:
            refs = [(scope, source) for scope, source in refs if not self._vector_subquery(scope, source)]
            if len(refs) != 1:
                raise Passthrough("route-table-repeated")
        self.scope, self.source = refs[0]
        self.route = self.source.route
        assert self.route is not None
        if self.source.nullable:
            raise Passthrough("outer-join")
        select = self.scope.select
        self.outputs = self._output_map(select)
        distances = self._distances(self._ordering_targets(select))
        if not distances:
            raise Passthrough("no-distance")
        columns = self._columns(distances)
        star = self._stars()
        return self._build(select, distances, columns, star)

    def _vector_subquery(self, scope: _Scope, source: _Source) -> bool:
        """`(SELECT <route column> FROM <route table> WHERE <key> = $n | literal)` as the vector operand of a
        distance (pgvector's "rows similar to row X"): tagged, it is not the route reference of the query."""
        route = source.route
        assert route is not None
        select = scope.select
        node: exp.Expression | None = select.parent
        if not isinstance(node, exp.Subquery) or any(node.args.get(k) for k in ("order", "limit", "offset")):
            return False
        operand: exp.Expression = node
        while isinstance(operand.parent, exp.Cast | exp.Paren):
            operand = operand.parent
        if not isinstance(operand.parent, DISTANCE_NODES) or operand.arg_key not in ("this", "expression"):
            return False
        allowed = {"expressions", "from_", "where"}
        limit = select.args.get("limit")  # Django writes `[:1]`: the key selects one row anyway
        if limit is not None and not (isinstance(limit, exp.Limit) and (_int_literal(limit.expression) or 0) >= 1):
            return False
        if any(value for key, value in select.args.items() if key not in allowed | {"limit"}) \
                or len(scope.sources) != 1:
            return False
        projection = _unalias(select.expressions[0]) if len(select.expressions) == 1 else None
        if not isinstance(projection, exp.Column) or norm(projection.this) not in (route.column,
                                                                                   route.pg_vector_column):
            return False
        where = select.args.get("where")
        test = where.this if where is not None else None
        if not isinstance(test, exp.EQ):
            return False
        for column, value in ((test.this, test.expression), (test.expression, test.this)):
            if isinstance(column, exp.Column) and norm(column.this) == route.key \
                    and norm(column.args.get("table")) in (None, source.name) and column.args.get("db") is None \
                    and (_param_index(value) is not None or (isinstance(value, exp.Literal))):
                if norm(projection.args.get("table")) not in (None, source.name) or projection.args.get("db"):
                    return False
                node.meta[MARK] = TAG_VECTOR_SUBQUERY
                return True
        return False

    # column resolution ----------------------------------------------------------------------------------
    def _has_column(self, source: _Source, name: str) -> bool | None:
        if source.kind == "route":
            info = self.catalog.lookup(self.route.table) if self.catalog is not None else None
            if info is not None:
                return info.column(name) is not None
            if name in (self.route.column, self.route.pg_vector_column):
                return True
            return None
        return None if source.columns is None else name in source.columns

    def resolve(self, column: exp.Column, scope: _Scope) -> tuple[_Source | None, bool]:
        """(source, certain) for a column reference; source None when it cannot be the route table."""
        name = norm(column.this)
        table = norm(column.args.get("table"))
        db = norm(column.args.get("db"))
        if column.args.get("catalog") is not None:
            raise Passthrough("catalog-qualified")
        current: _Scope | None = scope
        while current is not None:
            if table is not None:
                for source in current.sources:
                    if db is not None:
                        if source.kind in ("route", "table") and not source.aliased and source.relname == table \
                                and source.schema == db:
                            return source, True
                    elif source.name == table:
                        return source, True
            else:
                hits = {id(s): self._has_column(s, name) for s in current.sources}
                others = [h for s in current.sources if s is not self.source for h in [hits[id(s)]]]
                if any(s is self.source for s in current.sources):
                    route_hit = hits[id(self.source)]
                    if route_hit is False:
                        return None, True  # the route table is here and has no such column
                    if route_hit is True and not any(h is not False for h in others):
                        return self.source, True
                    return self.source, False
                if any(h is True for h in others):
                    return None, True
                if any(h is None for h in others):
                    # It may resolve here, or, if no source here has it, further out: possibly the route table.
                    return (self.source, False) if self._route_outside(current) else (None, True)
            current = current.parent
        return None, True

    def _route_outside(self, scope: _Scope) -> bool:
        """Whether the route table is a source of a scope enclosing `scope` (so a column could resolve to it)."""
        current = scope.parent
        while current is not None:
            if current is self.scope:
                return True
            current = current.parent
        return False

    def _route_ref(self, node: exp.Expression) -> tuple[bool, bool]:
        """(is a reference to the route table's column, certain) for a Column node."""
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            return False, True
        scope = self._owner(node)
        if scope is None:
            return False, True
        source, certain = self.resolve(node, scope)
        return source is self.source, certain

    def _owner(self, node: exp.Expression) -> _Scope | None:
        if self._owners is None:
            self._owners = {id(column): scope for column, scope in self.found.columns}
        return self._owners.get(id(node))

    # distances --------------------------------------------------------------------------------------------
    def _operand(self, node: exp.Expression) -> tuple[str, bool] | None:
        """('column'|'cast', certain) when `node` is the route column (or the legacy column cast to vector)."""
        route = self.route
        vector_names = {route.column, route.pg_vector_column}
        if isinstance(node, exp.Column):
            is_ref, certain = self._route_ref(node)
            if is_ref and norm(node.this) in vector_names:
                return "column", certain
            return None
        if isinstance(node, exp.Cast) and isinstance(node.this, exp.Column):
            is_ref, certain = self._route_ref(node.this)
            if not is_ref or norm(node.this.this) not in vector_names:
                return None
            to = node.args.get("to")
            if route.column != route.pg_vector_column and norm(node.this.this) == route.column \
                    and isinstance(to, exp.DataType) and to.this is exp.DType.VECTOR:
                return "cast", certain
            raise Passthrough("distance-shape", "cast of the route column")
        return None

    def _clause(self, node: exp.Expression, select: exp.Select) -> tuple[str, exp.Expression]:
        """The clause of `select` that holds `node`, and the clause's direct child on the path."""
        child = node
        parent = node.parent
        while parent is not None and parent is not select:
            child, parent = parent, parent.parent
        if parent is None:
            raise Passthrough("distance-position")
        return child.arg_key or "", child

    def _ordering_targets(self, select: exp.Select) -> set[int]:
        order = select.args.get("order")
        if order is None:
            return set()
        return {id(self._order_target(key, select)) for key in order.expressions}

    def _distances(self, ordering_targets: set[int]) -> list[DistanceUse]:
        uses: list[DistanceUse] = []
        for node, scope in self.found.distances:
            sides = {arg: self._operand(node.args.get(arg)) for arg in ("this", "expression")}
            hits = [arg for arg, hit in sides.items() if hit]
            if not hits:
                continue
            if len(hits) == 2:
                raise Passthrough("distance-shape", "route column on both sides")
            column_arg = hits[0]
            if not sides[column_arg][1]:
                raise Passthrough("ambiguous-column", norm(node.args[column_arg].find(exp.Column).this) or "")
            if scope is not self.scope:
                raise Passthrough("distance-position", "outside the route table's SELECT")
            key, top = self._clause(node, self.scope.select)
            clause = {"expressions": "select", "where": "where", "order": "order"}.get(key)
            if clause is None:
                raise Passthrough("distance-position", key)
            other = node.args["expression" if column_arg == "this" else "this"]
            vector_names = {self.route.column, self.route.pg_vector_column}
            for column in other.find_all(exp.Column):
                is_ref, certain = self._route_ref(column)
                # an uncertain ordinary column (`id` in a subquery on an uncatalogued table) reads the same on
                # either target; a certain reference or a vector column makes the query vector row-dependent
                if is_ref and (certain or norm(column.this) in vector_names):
                    raise Passthrough("distance-shape", "query vector uses the route table")
            projection = None
            if clause == "select":
                inner = _unparen(top.this if isinstance(top, exp.Alias) else top)
                if inner is node:
                    projection = top.index
            uses.append(DistanceUse(
                node=node, operator=distance_operator(node), metric=node.metric, clause=clause,
                column_arg=column_arg, query_vector=other, param_index=_param_index(other),
                literal=_literal_text(other), projection=projection,
                in_function=isinstance(node, VectorDistanceFunc),
                ordering=clause == "order" or _within(node, ordering_targets, self.scope.select),
                vector_key=_vector_key(other),
            ))
        return uses

    # other columns -------------------------------------------------------------------------------------
    def _columns(self, distances: list[DistanceUse]) -> list[ColumnUse]:
        operands = set()
        for use in distances:
            operand = use.node.args[use.column_arg]
            operands.add(id(operand.this if isinstance(operand, exp.Cast) else operand))
        uses = []
        for column, scope in self.found.columns:
            if id(column) in operands:
                continue
            name = norm(column.this)
            if column.args.get("table") is None and name == self.source.name and self._visible(scope) \
                    and self._has_column(self.source, name) is not True:
                # `SELECT items FROM items` is the whole row, whose type is the table's own
                raise Passthrough("whole-row-reference")
            if scope is self.scope and self._is_output_name(column):
                continue
            source, certain = self.resolve(column, scope)
            if source is not self.source:
                continue
            clause, output = "nested", None
            if scope is self.scope:
                key, top = self._clause(column, self.scope.select)
                clause = {"expressions": "select", "where": "where", "order": "order"}.get(key, key)
                if clause == "select" and not isinstance(top, exp.Alias):
                    inner = top
                    while isinstance(inner, exp.Cast):
                        inner = inner.this
                    if inner is column:
                        output = top.index
            null_test = isinstance(column.parent, exp.Is) and column.arg_key == "this" \
                and isinstance(column.parent.expression, exp.Null)
            uses.append(ColumnUse(column, name or "", certain, clause, output, null_test))
        return uses

    def _is_output_name(self, column: exp.Column) -> bool:
        """A bare ORDER BY key naming a select-list alias refers to that output column, not to a table."""
        ordered = column.parent
        return (isinstance(ordered, exp.Ordered) and column.arg_key == "this"
                and isinstance(ordered.parent, exp.Order) and ordered.parent.parent is self.scope.select
                and column.args.get("table") is None and (norm(column.this) or "") in self.outputs)

    def _visible(self, scope: _Scope) -> bool:
        current: _Scope | None = scope
        while current is not None:
            if current is self.scope:
                return True
            current = current.parent
        return False

    def _stars(self) -> bool:
        star = False
        for node, scope in self.found.stars:
            if isinstance(node.parent, exp.Func):
                continue  # count(*)
            table = norm(node.args.get("table")) if isinstance(node, exp.Column) else None
            refers = (table is None and self._visible(scope) and scope is self.scope) or (
                table is not None and self._visible(scope) and self._star_source(table, scope) is self.source)
            if not refers:
                continue
            if scope is not self.scope or node.parent is not self.scope.select:
                raise Passthrough("whole-row-reference")
            star = True
        return star

    def _star_source(self, table: str, scope: _Scope) -> _Source | None:
        current: _Scope | None = scope
        while current is not None:
            for source in current.sources:
                if source.name == table:
                    return source
            current = current.parent
        return None

    # ORDER BY / LIMIT -------------------------------------------------------------------------------
    def _output_map(self, select: exp.Select) -> dict[str, int]:
        names: dict[str, int] = {}
        for i, projection in enumerate(select.expressions):
            if isinstance(projection, exp.Alias):
                name = norm(projection.args.get("alias"))
                if name is not None:
                    names.setdefault(name, i)
        return names

    def _order_target(self, ordered: exp.Ordered, select: exp.Select) -> exp.Expression:
        """What an ORDER BY key sorts by: output names and ordinals refer to the select list."""
        key = ordered.this
        if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
            if any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
                   for p in select.expressions):
                return key  # a position among the columns `*` expands to: unknown here
            index = int(key.this) - 1
            if 0 <= index < len(select.expressions):
                return _unparen(_unalias(select.expressions[index]))
        if isinstance(key, exp.Column) and key.args.get("table") is None and isinstance(key.this, exp.Identifier):
            index = self.outputs.get(norm(key.this) or "")
            if index is not None:
                return _unparen(_unalias(select.expressions[index]))
        return _unparen(key)

    def _ranking(self, select: exp.Select, distances: list[DistanceUse]) -> Ranking | None:
        order = select.args.get("order")
        if order is None or not order.expressions:
            return None
        first = order.expressions[0]
        found = _monotone(self._order_target(first, select))
        if found is None:
            return None
        node, increasing = found
        index = next((i for i, u in enumerate(distances) if u.node is node), None)
        if index is None:
            return None
        desc = bool(first.args.get("desc"))
        nulls_first = first.args.get("nulls_first")
        return Ranking(distance=index, descending=desc == increasing, only_key=len(order.expressions) == 1,
                       nulls_first=bool(nulls_first) if nulls_first is not None else desc)

    def _build(self, select: exp.Select, distances: list[DistanceUse], columns: list[ColumnUse],
               star: bool) -> SimilarityQuery:
        route = self.route
        main: DistanceUse | None = None
        order_by_distance = pure_order = False
        order = select.args.get("order")
        if order is not None and order.expressions:
            first = order.expressions[0]
            target = self._order_target(first, select)
            for use in distances:
                if use.node is target:
                    if bool(first.args.get("desc")) != use.nearest_first_desc:
                        break  # farthest first: a ranking (see `rank`), but not the index order
                    main = use
                    order_by_distance = True
                    pure_order = len(order.expressions) == 1 and not first.args.get("nulls_first")
                    first.meta[MARK] = (TAG_ORDER_KEY, distances.index(use))
        rank = self._ranking(select, distances)
        if main is None and rank is not None:
            main = distances[rank.distance]
        if main is None:
            main = next((u for u in distances if u.clause == "select"), None) or distances[0]
        for i, use in enumerate(distances):
            use.node.meta[MARK] = (TAG_DISTANCE, i)
        for i, use in enumerate(columns):
            use.node.meta[MARK] = (TAG_COLUMN, i)
        limit = select.args.get("limit")
        if isinstance(limit, exp.Fetch):
            raise Passthrough("fetch-first")
        limit_expr = limit.expression if isinstance(limit, exp.Limit) else None
        offset = select.args.get("offset")
        offset_expr = offset.expression if isinstance(offset, exp.Offset) else None
        for value in (limit_expr, offset_expr):
            if value is not None and _int_literal(value) is None and _param_index(value) is None \
                    and not isinstance(value, exp.Null) and not (isinstance(value, exp.Var) and value.name == "ALL"):
                raise Passthrough("limit-expression")
        self.source.node.meta[MARK] = TAG_TABLE
        select.meta[MARK] = TAG_SCOPE
        where = select.args.get("where")
        aggregated = bool(select.args.get("distinct") or select.args.get("group") or select.args.get("having")) \
            or any(_aggregates(p) for p in select.expressions)
        return SimilarityQuery(
            route=route, expression=self.expression, select=select, table=self.source.node,
            table_alias=self.source.name or route.relname, table_schema=self.source.schema,
            top_level=select is self.expression, single_source=len(self.scope.sources) == 1,
            operator=main.operator, metric=main.metric, function_form=main.in_function,
            query_vector=main.query_vector, param_index=main.param_index, literal=main.literal,
            order_by_distance=order_by_distance, pure_order=pure_order, rank=rank,
            limit=limit_expr, offset=offset_expr, where=where.this if where is not None else None,
            projections=tuple(select.expressions), distances=tuple(distances), columns=tuple(columns),
            star=star, aggregated=aggregated,
        )


def _unalias(node: exp.Expression) -> exp.Expression:
    return node.this if isinstance(node, exp.Alias) else node


def vector_subquery(node: exp.Expression) -> exp.Subquery | None:
    """The tagged vector subquery that a distance's vector operand is (through casts and parentheses)."""
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    if isinstance(node, exp.Subquery) and node._meta and node.meta.get(MARK) == TAG_VECTOR_SUBQUERY:
        return node
    return None


def _vector_key(node: exp.Expression) -> exp.Expression | None:
    subquery = vector_subquery(node)
    if subquery is None:
        return None
    test = subquery.this.args["where"].this
    return test.expression if isinstance(test.this, exp.Column) and not isinstance(test.expression, exp.Column) \
        else test.this


def _aggregates(node: exp.Expression) -> bool:
    """Whether an aggregate of this query level is in `node` (one inside a subquery aggregates that subquery)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, exp.AggFunc):
            return True
        if current is not node and isinstance(current, exp.Query | exp.Subquery):
            continue
        stack.extend(current.iter_expressions())
    return False


def _within(node: exp.Expression, targets: set[int], stop: exp.Expression) -> bool:
    """Whether `node` or an enclosing expression below `stop` is one of `targets` (ids)."""
    current: exp.Expression | None = node
    while current is not None and current is not stop:
        if id(current) in targets:
            return True
        current = current.parent
    return False


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _positive_number(node: exp.Expression) -> bool | None:
    """True/False for a positive/negative numeric literal (or its negation), None otherwise (or zero)."""
    node = _unparen(node)
    sign = 1
    while isinstance(node, exp.Neg):
        sign, node = -sign, _unparen(node.this)
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    try:
        value = float(node.this) * sign
    except ValueError:
        return None
    return None if value == 0 else value > 0


def _monotone(node: exp.Expression) -> tuple[exp.Expression, bool] | None:
    """(distance node, increasing) when `node` is a strictly monotone function of one distance built from
    constants: `d`, `-d`, `c + d`, `c - d`, `d - c`, `c * d`, `d / c` (c a non-zero numeric literal)."""
    node = _unparen(node)
    if isinstance(node, DISTANCE_NODES):
        return node, True
    if isinstance(node, exp.Neg):
        inner = _monotone(node.this)
        return (inner[0], not inner[1]) if inner else None
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = node.this, node.expression
        for variable, constant, on_left in ((left, right, True), (right, left, False)):
            sign = _positive_number(constant)
            if sign is None:
                continue
            inner = _monotone(variable)
            if inner is None:
                return None
            distance, increasing = inner
            if isinstance(node, exp.Add):
                return distance, increasing
            if isinstance(node, exp.Sub):
                return distance, increasing if on_left else not increasing
            if isinstance(node, exp.Mul):
                return distance, increasing == sign
            return (distance, increasing == sign) if on_left else None  # c / d is not monotone over signs
    return None


def _literal_text(node: exp.Expression) -> str | None:
    while isinstance(node, exp.Cast):
        node = node.this
    if isinstance(node, exp.Literal) and node.is_string:
        return node.this
    return None


def is_pgvector_type(type_sql: str) -> bool:
    """Whether a configured type name is one of pgvector's own (unqualified) types, whose operators and
    functions are known to return double precision."""
    base = type_sql.strip().split("(")[0].strip().lower()
    return base in _PGVECTOR_TYPES


__all__ = [
    "ColumnUse", "DistanceUse", "Passthrough", "Ranking", "SimilarityQuery", "VectorDistance", "VectorDistanceFunc",
    "analyze", "is_pgvector_type", "norm", "normalize_search_path",
]
