"""SQL for mirrored comparisons: the client's similarity query, reduced to the route key and the distance.

A mirrored query must be compared on *keys*: the proxy does not capture the client's result bytes, and the
client's select list may not even hold the key. So, for each target, the route table's SELECT keeps its FROM,
WHERE, ORDER BY, LIMIT and OFFSET and its select list becomes `key, distance`; the last two columns of every
statement built here are always those two (`KEY_COLUMN`, `DISTANCE_COLUMN`).

Targets: "primary" (the rewrite the primary gets, index shape included), "shadow", and "exact", the primary's
statement without index-shape matching, which the mirror runs with index scans disabled (brute force).

>>> from pgcutover.core.config import Route
>>> from pgcutover.rewrite.router import build_plan
>>> route = Route(table="public.items", column="embedding", shadow_table="shadow.items")
>>> plan = build_plan("SELECT content FROM items ORDER BY embedding <-> $1 LIMIT 5", [route])
>>> print(*keys_sql(plan, "primary").partition(" FROM ")[::2], sep="\\nFROM ")
SELECT items.id AS pgcutover_key, CAST(embedding <-> $1 AS DOUBLE PRECISION) AS pgcutover_distance
FROM public.items ORDER BY embedding <-> $1 LIMIT 5
>>> print(*keys_sql(plan, "shadow").partition(" FROM ")[::2], sep="\\nFROM ")
SELECT items.id AS pgcutover_key, CAST(embedding <-> $1::vector AS DOUBLE PRECISION) AS pgcutover_distance
FROM shadow.items ORDER BY embedding <-> $1::vector LIMIT 5
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from sqlglot import exp

from pgcutover.core.enums import Target
from pgcutover.rewrite.analyze import MARK, TAG_ORDER_KEY, TAG_SCOPE, TAG_TABLE, Passthrough, norm
from pgcutover.rewrite.dialect import parse, to_sql
from pgcutover.rewrite.transforms import identifier, to_primary, to_shadow

if TYPE_CHECKING:
    from pgcutover.rewrite.analyze import SimilarityQuery
    from pgcutover.rewrite.catalog import Catalog
    from pgcutover.rewrite.plan import Plan

KEY_COLUMN = "pgcutover_key"
DISTANCE_COLUMN = "pgcutover_distance"
TARGETS = (Target.PRIMARY.value, Target.SHADOW.value, Target.EXACT.value)
MAX_K = 1000  # a mirrored comparison of more rows than this costs more than it tells

_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Lock, exp.Create, exp.Drop, exp.Command,
           exp.Alter, exp.TruncateTable, exp.Copy)


class Unsupported(Exception):
    """The query cannot be compared on keys; `reason` is the short label the mirror counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def keys_sql(plan: Plan, target: str, catalog: Catalog | None = None) -> str:
    """The statement returning (..., key, distance) of the query's top-k on `target`. Raises Unsupported."""
    statement = keys_statement(plan, target, catalog)
    sql = to_sql(statement)
    reparsed = parse(sql)
    if len(reparsed) != 1 or not is_read_only(reparsed[0]):
        raise Unsupported("unstable-sql")
    return sql


def keys_statement(plan: Plan, target: str, catalog: Catalog | None = None) -> exp.Expr:
    query = plan.query
    if query is None:
        raise Unsupported("passthrough")
    if not is_read_only(query.expression):
        raise Unsupported("not-read-only")
    check_shape(query)
    try:
        expression = _target_statement(query, target, catalog)
    except Passthrough as exc:
        raise Unsupported(f"rewrite:{exc.reason}") from exc
    tags = _Tags.of(expression)
    if target != Target.SHADOW:
        _qualify_route_table(tags.table, query)
    distance = _order_target(tags.scope, tags.order_key)
    key = exp.Column(this=identifier(query.route.key), table=identifier(query.table_alias))
    extra = [exp.Alias(this=key, alias=identifier(KEY_COLUMN)),
             exp.Alias(this=exp.Cast(this=distance.copy(), to=exp.DataType.build("double")),
                       alias=identifier(DISTANCE_COLUMN))]
    # Keep only key and distance (less to transfer) unless that would drop a $n that the select list alone
    # used: a gap in the numbering leaves a parameter whose type the server cannot infer.
    for keep_projections in (False, True):
        candidate = _with_outputs(expression, extra, keep_projections)
        statement = _standalone(candidate, query.top_level)
        if _parameters_dense(statement):
            return statement
    raise Unsupported("parameter-gap")


def check_shape(query: SimilarityQuery) -> None:
    """Only a top-k by distance can be compared on keys: ORDER BY the distance, with a LIMIT."""
    if not query.order_by_distance:
        raise Unsupported("no-order-by-distance")
    if query.aggregated:
        raise Unsupported("aggregated")
    if query.limit_value is None and query.limit_param is None:
        raise Unsupported("no-limit")
    if query.limit_value is not None and query.limit_value > MAX_K:
        raise Unsupported("limit-too-large")
    if query.offset is not None and query.offset_value is None and query.offset_param is None:
        raise Unsupported("offset-expression")


def is_read_only(statement: exp.Expr) -> bool:
    """A single query that reads: no DML anywhere (writable CTEs), no SELECT INTO, no row locks."""
    if not isinstance(statement, exp.Query):
        return False
    for node in statement.walk():
        if isinstance(node, _WRITES):
            return False
        if isinstance(node, exp.Select) and (node.args.get("into") or node.args.get("locks")):
            return False
    return True


# -- building blocks ------------------------------------------------------------------------------------------
class _Tags:
    """The nodes `analyze` tagged, found again in a transformed copy (sqlglot copies meta with the tree)."""

    def __init__(self, scope: exp.Select, table: exp.Table, order_key: exp.Ordered) -> None:
        self.scope = scope
        self.table = table
        self.order_key = order_key

    @classmethod
    def of(cls, expression: exp.Expr) -> _Tags:
        scope = table = order_key = None
        for node in expression.walk():
            mark = node.meta.get(MARK) if node._meta else None
            if mark == TAG_SCOPE:
                scope = node
            elif mark == TAG_TABLE:
                table = node
            elif isinstance(mark, tuple) and mark[0] == TAG_ORDER_KEY:
                order_key = node
        if scope is None or table is None or order_key is None:
            raise Unsupported("untagged")
        # analyze puts each tag on a node of this type
        return cls(cast(exp.Select, scope), cast(exp.Table, table), cast(exp.Ordered, order_key))


def _target_statement(query: SimilarityQuery, target: str, catalog: Catalog | None) -> exp.Expression:
    if target == Target.PRIMARY:
        return to_primary(query.expression, query, catalog)
    if target == Target.EXACT:
        # no index-shape matching: brute force must compute the distance on the vector column itself
        return to_primary(query.expression, query, None)
    if target == Target.SHADOW:
        if not query.route.shadow_table:
            raise Unsupported("no-shadow")
        return to_shadow(query.expression, query, catalog)
    raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def _qualify_route_table(table: exp.Table, query: SimilarityQuery) -> None:
    """The mirror's connection may have another search_path than the client's: name the schema the client's
    reference resolved to. The query keeps using the bare name (a schema-qualified FROM item exposes it)."""
    if query.table_schema and table.args.get("db") is None:
        table.set("db", identifier(query.table_schema))


def _output_index(select: exp.Select, key: exp.Expr) -> int | None:
    """The select-list position an ORDER BY key names (ordinal, or an output alias), as PostgreSQL resolves it."""
    if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
        index = int(key.this) - 1
        return index if 0 <= index < len(select.expressions) else None
    if isinstance(key, exp.Column) and key.args.get("table") is None and isinstance(key.this, exp.Identifier):
        name = norm(key.this)
        for i, projection in enumerate(select.expressions):
            if isinstance(projection, exp.Alias) and norm(projection.args.get("alias")) == name:
                return i
    return None


def _order_target(select: exp.Select, ordered: exp.Ordered) -> exp.Expr:
    key: exp.Expr = ordered.this
    index = _output_index(select, key)
    if index is None:
        return key
    projection: exp.Expr = select.expressions[index]
    return projection.this if isinstance(projection, exp.Alias) else projection


def _with_outputs(expression: exp.Expr, extra: Sequence[exp.Expr], keep_projections: bool) -> exp.Expr:
    """A copy of `expression` whose route SELECT returns (projections...,) key, distance."""
    copy = expression.copy()
    select = cast(exp.Select, next(n for n in copy.walk() if n._meta and n.meta.get(MARK) == TAG_SCOPE))
    if keep_projections:
        select.set("expressions", [*select.expressions, *(e.copy() for e in extra)])
        return copy
    order = select.args.get("order")
    for ordered in order.expressions if order is not None else []:
        # ORDER BY 2 or ORDER BY dist named the old select list: spell the expression out
        ordered.set("this", _order_target(select, ordered).copy())
    select.set("expressions", [e.copy() for e in extra])
    return copy


def _standalone(expression: exp.Expr, top_level: bool) -> exp.Expr:
    """The route SELECT as a statement of its own, with the CTEs of the levels around it still in scope.
    A correlated subquery does not survive this; the server then refuses it and the mirror drops the sample."""
    if top_level:
        return expression
    select = next(n for n in expression.walk() if n._meta and n.meta.get(MARK) == TAG_SCOPE)
    ctes: list[exp.Expr] = []
    parent = select.parent
    while parent is not None:
        with_ = parent.args.get("with_") if isinstance(parent, exp.Query) else None
        if with_ is not None:
            if with_.args.get("recursive"):
                raise Unsupported("recursive-cte")
            ctes[:0] = [cte.copy() for cte in with_.expressions]
        parent = parent.parent
    statement = select.copy()
    if ctes:
        if statement.args.get("with_") is not None:
            raise Unsupported("nested-with")
        statement.set("with_", exp.With(expressions=ctes))
    return statement


def _parameters_dense(statement: exp.Expr) -> bool:
    """$1..$n all referenced (or none at all)."""
    seen = set()
    for node in statement.find_all(exp.Parameter):
        if isinstance(node.this, exp.Literal) and node.this.this.isdigit():
            seen.add(int(node.this.this))
    return seen == set(range(1, len(seen) + 1))


def parameter_count(sql: str) -> int:
    """The highest $n in a statement built here."""
    statement = parse(sql)[0]
    return max((int(p.this.this) for p in statement.find_all(exp.Parameter)
                if isinstance(p.this, exp.Literal) and p.this.this.isdigit()), default=0)


# -- what a statement calls -----------------------------------------------------------------------------------
# Nodes that are SQL syntax rather than a call of a pg_proc function by their printed name. Each is either
# evaluated by the executor itself (CASE, COALESCE, NULLIF, GREATEST, LEAST, EXISTS, ARRAY[...]) or a SQL value
# function that is at most STABLE (CURRENT_TIMESTAMP and friends). Casts are judged database-wide instead
# (VOLATILE_ELSEWHERE_SQL): a cast may call a cast function or a type's I/O function without naming it.
_SYNTAX_NAMES = ("Cast", "Case", "If", "Coalesce", "Nullif", "Greatest", "Least", "Exists", "Array", "CurrentUser",
                 "SessionUser", "CurrentRole", "CurrentSchema", "CurrentCatalog", "CurrentTimestamp", "CurrentDate",
                 "CurrentTime", "Localtimestamp", "Localtime")
_SYNTAX = tuple(cls for cls in (getattr(exp, name, None) for name in _SYNTAX_NAMES) if isinstance(cls, type))
_CALL = re.compile(r'"?([A-Za-z_][A-Za-z0-9_$]*)"?\s*\(')

# Functions a statement may call without naming them: operators, casts, type I/O, the btree and hash support
# behind ORDER BY, DISTINCT, GROUP BY and joins, and aggregate support. (Other index methods' support functions,
# such as pgvector's hnsw_*_support, return planner metadata and are left at the default VOLATILE; adding
# any operator class needs a superuser.)
# The mirror refuses every statement while any of these is VOLATILE anywhere in the database (none is in a
# stock PostgreSQL + pgvector), so a per-statement check of named functions is enough.
VOLATILE_ELSEWHERE_SQL = """
SELECT EXISTS (SELECT FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode WHERE p.provolatile = 'v')
    OR EXISTS (SELECT FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc WHERE p.provolatile = 'v')
    OR EXISTS (SELECT FROM pg_type t JOIN pg_proc p ON p.oid IN (t.typinput, t.typoutput, t.typreceive, t.typsend)
               WHERE p.provolatile = 'v')
    OR EXISTS (SELECT FROM pg_amproc a JOIN pg_proc p ON p.oid = a.amproc
                 JOIN pg_opfamily f ON f.oid = a.amprocfamily JOIN pg_am m ON m.oid = f.opfmethod
               WHERE p.provolatile = 'v' AND m.amname IN ('btree', 'hash'))
    OR EXISTS (SELECT FROM pg_aggregate g JOIN pg_proc p
                 ON p.oid IN (g.aggtransfn, g.aggfinalfn, g.aggcombinefn, g.aggmtransfn, g.aggmfinalfn)
               WHERE p.provolatile = 'v')
"""
# Per name, over every schema and overload (a name the client resolves by its own search_path may be any of
# them): absent names are "unsure", any VOLATILE overload makes the name volatile.
VOLATILE_NAMES_SQL = ("SELECT lower(proname), bool_or(provolatile = 'v') FROM pg_proc "
                      "WHERE lower(proname) = ANY($1::text[]) GROUP BY 1")


def called_functions(sql: str) -> frozenset[str]:
    """Lower-cased names of the functions a statement built here calls by name. Raises Unsupported when a node
    cannot be told apart from a call (refuse when unsure).

    >>> sorted(called_functions("SELECT lower(c), count(*) FROM t WHERE now() > x ORDER BY e <-> $1 LIMIT 1"))
    ['count', 'lower']
    >>> sorted(called_functions("SELECT 1 FROM t WHERE pg_notify('x', 'y') IS NULL AND s.\\"F\\"(1)"))
    ['f', 'pg_notify']
    """
    names: set[str] = set()
    for statement in parse(sql):
        for node in statement.walk():
            if not isinstance(node, exp.Func) or isinstance(node, _SYNTAX):
                continue
            if isinstance(node, exp.Anonymous):
                names.add(node.name.lower())
                continue
            match = _CALL.match(to_sql(node))
            if match is None:
                raise Unsupported(f"unsure-function:{type(node).__name__}")
            names.add(match.group(1).lower())
    return frozenset(names)
