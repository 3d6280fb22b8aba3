"""The merged query: a similarity query answered exactly over pgvector rows and legacy-only rows at once.

Built once per SQL text (cached per route and text, bounded in bytes, by proxy/merged.py's MergeCache) from the
`SimilarityQuery` that `rewrite.analyze` found; at execution the proxy only supplies the legacy candidates that
the numpy search (`fallback.knn`, or `fallback.scan` for l1 and farthest-first) returned.

Design
------
A route keeps pgvector values in `vector_column` and unmigrated ones in `legacy_column`; a row is legacy-only when
`vector_column IS NULL AND legacy_column IS NOT NULL`. Let `L(row)` be the legacy value converted to a vector by
the server itself (NULL when it is not a valid vector of `dims` dimensions, see "Decoders") and

    D(row) = COALESCE(alias.vector_column, L(row)) <op> q

with `q` the query vector exactly as the client wrote it (literal, `$n`, cast). The merged query is the client's
own statement with

1. every distance on the route column (select list, WHERE, ORDER BY) replaced by D, so output names, types and
   order are those of the client's query (`embedding <-> $1` stays "?column?", an alias stays);
2. one conjunct added to its WHERE, `alias.key = ANY(ARRAY(<union>))`, where <union> is

       (SELECT alias.key FROM <FROM/JOINs> WHERE (<WHERE>) AND alias.vector_column IS NOT NULL
        ORDER BY alias.vector_column <op> q LIMIT k+n)             -- pgvector branch: `to_primary`'s shape, so
                                                                   -- the vector index (or its expression form)
                                                                   -- serves it
       UNION ALL SELECT alias.key FROM <route table> WHERE alias.key = ANY(<candidate keys>)
                 AND (alias.vector_column IS NOT NULL OR V(row))   -- legacy candidates from the numpy search
       UNION ALL (SELECT alias.key FROM <FROM/JOINs> WHERE (<WHERE>) AND <legacy-only> AND V(row)
                  AND <bound> IS DISTINCT FROM 'Infinity'
                  AND NOT COALESCE((SELECT count(*) FROM <FROM/JOINs> WHERE (<WHERE>) AND <legacy-only>
                                    AND alias.key = ANY(<candidate keys>) AND D <= <bound>) >= k+n, FALSE))
                                                                   -- the guard

   with V(row) "the legacy value is a valid vector" (L without pgvector's parse). Every key of the union thus has
   a non-NULL D: rows with neither a vector nor a valid legacy value never rank, as the primary rewrite's
   `vector_column IS NOT NULL` says, and the outer query computes D once per row (ORDER BY and an identical
   select-list entry share it);
3. ORDER BY, LIMIT k and OFFSET n as the client had them. k+n is a number when both are literals, else
   `(limit + COALESCE(offset, 0))` with bare parameters cast to bigint (what PostgreSQL infers for LIMIT/OFFSET,
   so the client's parameters keep the types the server would give them).

`= ANY(ARRAY(...))` rather than `IN (...)`: the union runs once as an InitPlan and the outer scan becomes an index
scan on the key (`Index Cond: key = ANY($n)`), so D, whose legacy part parses text, is only ever computed for the
few rows of the union; with `IN` the planner may choose a hash semi-join over a full scan that evaluates D on
every row. The route key must therefore be indexed (it is the primary key). The guard's condition has no column
reference: PostgreSQL runs it once, as a One-Time Filter, and skips the branch's scan when it is false.

Why this is exact. Any superset of the true top-(k+n) rows, ranked by the server's own D, yields the true top-k
after OFFSET. The pgvector branch holds the pgvector top-(k+n) under the client's filters (as exact as the
primary itself: exact without an ANN index). For legacy rows, let the candidates be the nearest legacy rows of
the store's snapshot and `bound` a distance such that every snapshot row outside them is at server distance
>= bound (`guard_bound`). If at least k+n rows among the candidates pass the client's filters, are still
legacy-only and are within `bound` *by their current value*, no legacy row outside the candidates can be in the
top-(k+n); otherwise the guard branch adds every legacy-only row that passes the filters. Deleted candidates are
gone from the table, migrated ones are ranked by their vector, changed ones by their current value (and only
counted if still within `bound`), and the server recomputes every distance from the current row. Joins that
repeat a route row are counted as the outer LIMIT counts them, in result rows.

Design choices, and why:
- The guard counts only candidates with `D <= bound`, not all of them. Without it, a candidate whose legacy value
  changed to something far away (the store not yet refreshed) still counts as one of the k+n nearest, the guard
  stays off, and a legacy row just outside the candidates is missed: a wrong answer.
- `bound = +Infinity` says "the candidates are every legacy row of the snapshot" and turns the guard off; without
  that, a selective filter on a (nearly) fully migrated table would scan all legacy-only rows on every query.
  `bound = NULL` means "unknown": the guard then always runs (exact, slower). Hence a second extra parameter.
- `pg_input_is_valid(x, 'vector')` cannot be used: pgvector 0.8's `vector_in` raises hard errors (NaN, wrong
  dimensions, bad syntax), which `pg_input_is_valid` passes through. The decoders below are plain SQL instead.
- The candidates branch reads the table (by key) instead of `unnest`-ing the keys: it drops candidates that no
  longer rank, so no `D IS NOT NULL` filter (a second computation of D per row) is needed in the outer query.

What is not covered: a legacy row inserted, or changed to come nearer, after the store's snapshot and not yet in
it is found only by the guard. The proxy may add any keys to the candidates (e.g. keys with change notices in
flight): extra keys are harmless.

Shapes (issue 10). The argument above needs only that the first ORDER BY key ranks rows by one distance D
(`rewrite.analyze.Ranking`): the distance itself, parenthesised, aliased, an ordinal, or a strictly monotone
score of it (`1 - (embedding <=> $1)`, `-d`, `2 * d`), ascending or descending. Descending on a distance (or
ascending on `inner_product()`, a similarity) asks for the farthest rows: the candidates are the store's
farthest (fallback/scan.py) and the guard counts candidates at or beyond the bound. The bound is passed in the
search's units (`<#>`'s for inner_product(), whose value is its negation). Other ORDER BY keys after the first
(`ORDER BY d, id`) are copied to the pgvector branch and make the guard's count strict (`D < bound`): a row at
the bound outside the candidates could win a tie. All four float metrics and their function forms are merged;
l1 (`<+>`) has no matrix-product screening, so its candidates come from the exact scan too.

The selected vector column reads `COALESCE(vector_column, L(row))` (select list, WHERE, ORDER BY, `SELECT *`
expanded from the catalog): legacy rows come back with their vector, as if migrated. A query vector written as
`(SELECT embedding FROM <route table> WHERE key = X)` becomes the row's server-side value
`(SELECT COALESCE(vector_column, L) FROM ... WHERE key = X)`; the proxy searches with its own copy of that row and
passes it as a third parameter: the candidates count only where the server's value is the same vector (else the
guard reads every legacy row), so the answer stays exact, and a row the client may not see leaks nothing.

What has no top-k bound (an ORDER BY that is not a ranking of one distance, such as a weighted hybrid score;
window functions; aggregates; nested queries; no LIMIT) gets `build_universal`: every legacy distance shipped.

Decoders, `CASE` expressions that return NULL for a bad value and never raise (they read the value once):
- json: the comma count, then a regular expression accepting decimal numbers that cannot overflow float4 (the
  common case), then `legacy::text::vector(dims)`. Otherwise a regular expression accepting exactly the numbers
  pgvector's parser (strtof) accepts, decimal and hex, minus NaN/infinity, between brackets with pgvector's six
  whitespace characters, and the elements parsed as double precision[] and compared with float4's overflow
  threshold (`pg_input_is_valid`: PostgreSQL 16 or later).
- array (real[] / double precision[]): 1-D, `dims` elements, no NULL, no NaN/infinity, and for double precision
  arrays printing an exponent of 38 or more, every element below float4's overflow threshold; then
  `legacy::vector(dims)`.
- bytea_f32 / bytea_f64: `pgcutover.try_vector(legacy, format, dims)`, the function the deploy schema installs
  (`server_decoder=True`); without it the plan is refused ("fallback-needs-decoder").
They agree with `pgcutover.try_vector` (the backfill's own conversion) on every input the tests throw at them;
the only known difference: a json text with hex, a 28-digit integer part or an exponent of 10 or more that also
holds a number below float8's range (1e-400) is refused here and read as 0 by pgvector.

Protocol. `sql_with_param` appends two parameters after the client's highest `$n`: `$N::<key type>[]` (candidate
keys) and `$N+1::double precision` (bound); `sql_with_params_from(N)` numbers them from any N, for a client whose
Parse declares more parameters than its SQL uses. The proxy adds their values to the Bind (and, when the client's
Parse lists parameter types, two more OIDs or zeros). The merged statement is prepared under a name of the proxy's
own, so a client's Describe of its statement is answered by its own statement, untouched. A simple Query is sent
as an unnamed extended statement of ours with these values bound, never as literals, so a tenant never sees other
tenants' candidate keys in `current_query()` (issue 12). `sql_with_literal(keys, bound)` writes both as safely
quoted literals: for tests only, the proxy never sends it. Per query: `search_k(limit, offset)`
rows from the numpy search, then
`extra_params(result.keys, guard_bound(result.distances, search_k(limit, offset)))`.

>>> from pgcutover.core.config import Route
>>> from pgcutover.rewrite.analyze import analyze
>>> route = Route(table="public.items", column="embedding", vector_column="embedding_vector",
...               legacy_column="embedding", legacy_format="bytea_f32", dims=3)
>>> q = analyze("SELECT id FROM items WHERE category = $1 ORDER BY embedding <-> $2 LIMIT 5", [route])
>>> plan = build_merge(q, server_decoder=True)
>>> (plan.metric, plan.vector_param_index, plan.limit_value, plan.keys_param_index, plan.extra_param_types)
('l2', 2, 5, 3, ('bigint[]', 'double precision'))
>>> print(plan.sql_with_param)  # doctest: +NORMALIZE_WHITESPACE
SELECT id FROM items WHERE (category = $1) AND items.id = ANY(ARRAY((SELECT items.id FROM items WHERE category =
 $1 AND embedding_vector IS NOT NULL ORDER BY embedding_vector <-> $2 LIMIT 5) UNION ALL SELECT items.id FROM
 items WHERE items.id = ANY ($3::bigint[]) AND (items.embedding_vector IS NOT NULL OR
 pgcutover.try_vector(items.embedding, 'bytea_f32', 3) IS NOT NULL) UNION ALL (SELECT items.id FROM items WHERE
 (category = $1) AND items.embedding_vector IS NULL AND items.embedding IS NOT NULL AND ($4::double precision) IS
 DISTINCT FROM CAST('Infinity' AS DOUBLE PRECISION) AND NOT COALESCE((SELECT COUNT(*) FROM items WHERE (category
 = $1) AND items.embedding_vector IS NULL AND items.embedding IS NOT NULL AND items.id = ANY ($3::bigint[]) AND
 COALESCE(items.embedding_vector, pgcutover.try_vector(items.embedding, 'bytea_f32', 3)) <-> $2 <= ($4::double
 precision)) >= 5, FALSE) AND pgcutover.try_vector(items.embedding, 'bytea_f32', 3) IS NOT NULL))) ORDER BY
 COALESCE(items.embedding_vector, pgcutover.try_vector(items.embedding, 'bytea_f32', 3)) <-> $2 LIMIT 5
"""

from __future__ import annotations

import functools
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp
from sqlglot.errors import SqlglotError

from pgcutover.core.enums import LegacyFormat, Metric
from pgcutover.core.quoting import quote_literal
from pgcutover.rewrite.analyze import (
    MARK,
    TAG_COLUMN,
    TAG_DISTANCE,
    TAG_ORDER_KEY,
    TAG_SCOPE,
    TAG_TABLE,
    Passthrough,
    SimilarityQuery,
    norm,
    vector_subquery,
)
from pgcutover.rewrite.dialect import DISTANCE_NODES, parse, parse_one, to_sql
from pgcutover.rewrite.transforms import (
    add_vector_not_null,
    expand_stars,
    from_items,
    identifier,
    refuse_star_joins,
    to_primary,
)

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.catalog import Catalog, ColumnInfo

METRICS = {"<->": "l2", "<=>": "cosine", "<#>": "ip"}  # operator -> fallback.knn metric
# analyze's metric -> (the legacy search's metric, sign): the distance's value is sign * the search's distance.
# inner_product() (ip_positive) is pgvector's `<#>` negated, so its largest values are the search's nearest rows.
SEARCH_METRICS = {Metric.L2: ("l2", 1), Metric.COSINE: ("cosine", 1), Metric.IP: ("ip", 1),
                  Metric.IP_POSITIVE: ("ip", -1), Metric.L1: ("l1", 1)}
KNN_METRICS = frozenset(METRICS.values())  # what fallback.knn searches (nearest first); others: fallback.scan
INT8_MAX = 2**63 - 1
BOUND_TYPE = "double precision"
_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint", "int2", "int4", "int8"})
_PLACEHOLDER = "pgcutover_legacy_value"

# The legacy-text syntax pgvector's vector_in accepts (strtof numbers between brackets, its six whitespace
# characters), minus NaN and infinity. No backslashes: the literals read the same whatever
# standard_conforming_strings says.
_WS = "[ \t\n\r\x0b\x0c]"
_DEC = "[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?"
_HEX = "[+-]?0[xX]([0-9a-fA-F]+[.]?[0-9a-fA-F]*|[.][0-9a-fA-F]+)([pP][+-]?[0-9]+)?"
_NUM = f"({_HEX}|{_DEC})"
# Decimal numbers that cannot overflow float4: at most 27 integer digits and a positive exponent below 10, so
# below 1e36 in magnitude. A text made of those alone needs no range check (the common case: one regex pass).
_SAFE = "[+-]?([0-9]{1,27}([.][0-9]*)?|[.][0-9]+)([eE]([-][0-9]+|[+]?0*[0-9]))?"


def _bracketed(number: str) -> str:
    return f"^{_WS}*[[]{_WS}*{number}({_WS}*,{_WS}*{number})*{_WS}*[]]{_WS}*$"


JSON_SYNTAX = _bracketed(_NUM)
JSON_SAFE = _bracketed(_SAFE)
ARRAY_RISKY = "e[+]?0*(3[89]|[4-9][0-9]|[1-9][0-9][0-9])"  # float8out's exponent form of |x| >= 1e38
# Half-way between float4's largest value and 2^128: at or beyond it, a float8 rounds to float4 infinity.
FLOAT4_OVERFLOW = "CAST('3.4028235677973366e38' AS DOUBLE PRECISION)"

# The decoders read the legacy value once: every reference to a TOASTed column detoasts it again (a 1536-dim JSON
# text costs ~0.1 ms per detoast), so the value is copied into a fenced subquery (`OFFSET 0` keeps the planner
# from inlining it back) and the checks read the copy. `pgcutover_l` and `u` are our own scope names. `{valid}` is
# what a valid value yields: the vector (L) or TRUE (the validity test V, which skips pgvector's parse).
_JSON_DECODER = """
(SELECT CASE
  WHEN NOT OCTET_LENGTH(pgcutover_l.v) - OCTET_LENGTH(REPLACE(pgcutover_l.v, ',', '')) = {commas} THEN NULL
  WHEN pgcutover_l.v ~ '{safe}' THEN {valid}
  WHEN NOT pgcutover_l.v ~ '{syntax}' THEN NULL
  WHEN NOT pg_catalog.pg_input_is_valid(TRANSLATE(pgcutover_l.v, '[]', '{{}}'), 'double precision[]') THEN NULL
  WHEN (SELECT BOOL_AND(ABS(u.x) < {overflow})
        FROM UNNEST(CAST(TRANSLATE(pgcutover_l.v, '[]', '{{}}') AS DOUBLE PRECISION[])) AS u(x)) THEN {valid}
 END
 FROM (SELECT CAST({L} AS TEXT) || '' AS v OFFSET 0) AS pgcutover_l)
"""
# real[] elements cannot overflow float4; double precision[] ones can (pgvector's cast then yields infinity and
# raises): those print with an exponent of at least 38, and only then are the elements compared one by one. The
# CASE order matters: array_position refuses multi-D arrays. array_cat with an empty array returns a detoasted copy.
_ARRAY_DECODER = """
(SELECT CASE
  WHEN ARRAY_NDIMS(pgcutover_l.v) IS DISTINCT FROM 1 OR CARDINALITY(pgcutover_l.v) <> {dims} THEN NULL
  WHEN ARRAY_POSITION(pgcutover_l.v, NULL) IS NOT NULL THEN NULL
  WHEN pgcutover_l.v && '{{NaN,Infinity,-Infinity}}' THEN NULL
  {range_check}
  ELSE {valid}
 END
 FROM (SELECT ARRAY_CAT({L}, '{{}}') AS v OFFSET 0) AS pgcutover_l)
"""
_ARRAY_RANGE_CHECK = """WHEN CAST(pgcutover_l.v AS TEXT) ~ '{risky}'
    AND NOT (SELECT BOOL_AND(ABS(u.x) < {overflow}) FROM UNNEST(pgcutover_l.v) AS u(x)) THEN NULL"""
_BYTEA_DECODER = "pgcutover.try_vector({L}, '{format}', {dims})"


@dataclass(frozen=True, slots=True)
class MergePlan:
    """The merged query of one SQL text, and what the proxy needs to run the numpy search for it."""

    route: Route
    operator: str  # "<->" | "<=>" | "<#>" | "<+>" or a function name ("l2_distance", "inner_product", ...)
    metric: str  # "l2" | "cosine" | "ip" | "l1": the legacy search's metric (fallback.knn's names, and l1)
    farthest: bool  # the legacy candidates are the search's farthest rows, not its nearest
    vector_param_index: int | None  # $n holding the query vector (possibly cast)
    vector_literal: str | None  # or the literal vector text
    limit_value: int | None
    limit_param: int | None
    offset_value: int | None  # None with offset_param None: no OFFSET
    offset_param: int | None
    param_count: int  # the client's highest $n (0 without parameters)
    key_type: str  # SQL type of the route key, e.g. "bigint"
    key_type_assumed: bool  # no catalog entry: "bigint" is a guess
    dims: int
    sql_with_param: str
    parts: tuple[str, ...]  # the merged SQL cut at the extra values; slots[i] goes between parts[i], parts[i+1]
    slots: tuple[str, ...]  # "keys" | "bound" | "vector"
    # the query vector is the route row with this key (`(SELECT embedding FROM t WHERE id = $n)`): the proxy
    # passes the vector it searched with as a third parameter, and the merged query only trusts the candidates
    # when the server's own value of that row agrees (else the guard reads every legacy row: still exact)
    vector_key_param: int | None = None
    vector_key_literal: str | None = None
    # the universal merge (`build_universal`): every legacy row's distance is shipped (keys, distances, xmins)
    universal: bool = False
    value_sign: int = 1  # the distance's value is value_sign * the search's distance (inner_product(): -1)
    # the universal merge's other distances' vectors ($n or literal): at execution they must equal the first
    other_vectors: tuple[tuple[int | None, str | None], ...] = ()

    @property
    def vector_from_row(self) -> bool:
        return "vector" in self.slots

    @property
    def extra_count(self) -> int:
        return 2 + self.vector_from_row + self.universal

    @property
    def keys_param_index(self) -> int:
        return self.param_count + 1

    @property
    def bound_param_index(self) -> int:
        return self.param_count + 2

    @property
    def extra_param_type(self) -> str:
        return f"{self.key_type}[]"

    @property
    def extra_param_types(self) -> tuple[str, str]:
        """Types of the two parameters `sql_with_param` appends: candidate keys, bound."""
        return self.extra_param_type, BOUND_TYPE

    @property
    def total_value(self) -> int | None:
        """k + n when both are literals."""
        if self.limit_param is not None or self.offset_param is not None:
            return None
        return self.total(self.limit_value, self.offset_value)

    def total(self, limit: int | None, offset: int | None) -> int | None:
        """k + n for the given LIMIT and OFFSET values (None: no limit, every row is wanted)."""
        if limit is None:
            return None
        return min(max(limit, 0) + max(offset or 0, 0), INT8_MAX)

    def search_k(self, limit: int | None, offset: int | None) -> int | None:
        """How many nearest legacy rows to ask the numpy search for: k + n + 1, the extra row giving the bound."""
        total = self.total(limit, offset)
        return None if total is None else min(total + 1, INT8_MAX)

    def extra_params(self, keys: Sequence[Any], bound: float | None) -> tuple[list[Any], float | None]:
        """Values of the two appended parameters, as Python objects a driver encodes (numpy ints become int)."""
        if self.key_type in _INTEGER_TYPES:
            return [_int_key(k) for k in keys], None if bound is None else float(bound)
        return [k.item() if hasattr(k, "item") else k for k in keys], None if bound is None else float(bound)

    def sql_with_params_from(self, first: int) -> str:
        """The merged query with the keys in `$first` and the bound in `$first+1`: for a client whose Parse
        declares more parameter types than its SQL uses (`sql_with_param` is this with param_count + 1)."""
        if first <= self.param_count:
            raise ValueError(f"${first} is one of the client's parameters (it uses up to ${self.param_count})")
        return _join(self.parts, self.slots, _param_slots(first, self.key_type, self.dims, self.universal))

    def sql_with_literal(self, keys: Sequence[Any], bound: float | None) -> str:
        """The merged query with the candidates and the bound written as literals (simple Query protocol)."""
        return _join(self.parts, self.slots, {"keys": self._keys_literal(keys), "bound": _bound_literal(bound),
                                              "vector": "(NULL::vector)"})

    def _keys_literal(self, keys: Sequence[Any]) -> str:
        array_type = self.extra_param_type
        if len(keys) == 0:
            return f"('{{}}'::{array_type})"
        if self.key_type in _INTEGER_TYPES:
            items = ",".join(str(_int_key(k)) for k in keys)
        else:
            items = ",".join(quote_literal(_text_key(k)) for k in keys)
        return f"(ARRAY[{items}]::{array_type})"


def _int_key(key: Any) -> int:
    if isinstance(key, bool) or not hasattr(key, "__index__"):
        raise TypeError(f"candidate key {key!r} is not an integer")
    return int(key.__index__())


def _text_key(key: Any) -> str:
    if isinstance(key, bytes | bytearray | memoryview):
        raise TypeError("bytea keys have no literal form here; use sql_with_param")
    return str(key.item() if hasattr(key, "item") else key)


def _bound_literal(bound: float | None) -> str:
    if bound is None:
        return f"(NULL::{BOUND_TYPE})"
    bound = float(bound)
    if math.isnan(bound):
        text = "NaN"
    elif math.isinf(bound):
        text = "Infinity" if bound > 0 else "-Infinity"
    else:
        text = repr(bound)  # shortest round-trip form, which float8in reads back exactly
    return f"('{text}'::{BOUND_TYPE})"


def guard_bound(distances: Sequence[float], asked: int | None) -> float | None:
    """The bound for the candidates of a numpy search asked for `asked` rows (normally `MergePlan.search_k`).

    `distances` are the search's distances, nearest first (`fallback.knn.SearchResult.distances`, exact float64,
    in the SQL operator's units). The search returns every row within its error bound of the exact asked-th
    distance, so every row it left out is, by the server's float32 arithmetic too, at least that far: the asked-th
    distance is a valid bound. Fewer rows than asked means the store holds no others: +Infinity. Asking for fewer
    than k+n+1 rows (a capped search) stays exact: the guard then runs. No search (`asked` None): None, unknown.

    >>> guard_bound([0.1, 0.2, 0.3], 3), guard_bound([0.1, 0.2], 3), guard_bound([], 5), guard_bound([0.1], None)
    (0.3, inf, inf, None)
    """
    if asked is None:
        return None
    if len(distances) < asked:
        return math.inf
    return float(distances[asked - 1])


# -- building ----------------------------------------------------------------------------------------------
# Shapes the top-k merge cannot bound that the universal merge answers (every legacy distance shipped).
UNIVERSAL_REASONS = frozenset({"fallback-order", "fallback-window", "fallback-aggregate", "fallback-nested",
                               "fallback-needs-limit", "fallback-offset", "fallback-alias"})


def build_merge(query: SimilarityQuery, catalog: Catalog | None = None, *, server_decoder: bool = False) -> MergePlan:
    """The merged query for `query`, or raise Passthrough(reason) for a shape it cannot answer exactly
    (the proxy then refuses it, or answers from pgvector rows only: `on_inexact`). `query.expression` is not
    changed. A shape the top-k merge cannot bound gets the universal merge (`build_universal`)."""
    route = query.route
    _check_route(route)
    try:
        _check_shape(query)
    except Passthrough as exc:
        if exc.reason not in UNIVERSAL_REASONS:
            raise
        return build_universal(query, catalog, server_decoder=server_decoder)
    dims, key_type, assumed = _route_columns(route, catalog, server_decoder)
    builder = _Builder(query, catalog, dims)
    expression = builder.build()
    sql = to_sql(expression)
    parts, slots = _cut(sql, builder)
    param_count = _param_count(query.expression)
    assert query.rank is not None
    use = query.distances[query.rank.distance]
    metric, sign = SEARCH_METRICS[use.metric]
    plan = MergePlan(
        route=route, operator=use.operator, metric=metric, farthest=(sign > 0) == query.rank.descending,
        vector_param_index=use.param_index, vector_literal=use.literal if use.param_index is None else None,
        limit_value=query.limit_value, limit_param=query.limit_param,
        offset_value=query.offset_value, offset_param=query.offset_param,
        param_count=param_count, key_type=key_type, key_type_assumed=assumed, dims=dims,
        sql_with_param=_join(parts, slots, _param_slots(param_count + 1, key_type, dims)), parts=parts, slots=slots,
        vector_key_param=_param_index_of(use.vector_key),
        vector_key_literal=_literal_of(use.vector_key),
    )
    _check_parses(plan)
    return plan


def _param_slots(first: int, key_type: str, dims: int, universal: bool = False) -> dict[str, str]:
    return {"keys": f"(${first}::{key_type}[])", "bound": f"(${first + 1}::{BOUND_TYPE})",
            "vector": f"(${first + (3 if universal else 2)}::vector({dims}))",
            "ukeys": f"(${first}::{key_type}[])", "udist": f"(${first + 1}::{BOUND_TYPE}[])",
            "uxmin": f"(${first + 2}::bigint[])"}


def build_universal(query: SimilarityQuery, catalog: Catalog | None = None, *,
                    server_decoder: bool = False) -> MergePlan:
    """The universal merge: the client's own statement, evaluated by the server over every row, with each
    distance on the route column read as

        COALESCE(<vector column> <op> q, <shipped legacy distance>, L(<legacy column>) <op> q)

    The proxy computes every legacy row's distance with numpy (fallback/scan.py) and ships them as three array
    parameters, joined to the route table by key and row version: `(<table> LEFT JOIN unnest($keys, $distances,
    $xmins) AS pgcutover_u(...) ON <key and xmin match>)`. A row migrated
    since the store's snapshot has its vector; a row changed since (another xmin) or added since is computed by
    the server from its current legacy value. So any expression of the distance is exact (weighted hybrid
    scores, window functions, aggregates, no LIMIT), at the cost of shipping every legacy row's distance: the
    proxy refuses above the route's `max_shipped_rows`. The shipped distances are float64 (pgvector computes in
    float32: values may differ in the last digits)."""
    route = query.route
    _check_route(route)
    if query.aggregated and query.star:
        raise Passthrough("universal-star-aggregate")
    uses = query.distances
    first = uses[0]
    if any(u.metric != first.metric for u in uses):
        raise Passthrough("universal-distances", "distances of different metrics")
    if first.metric not in SEARCH_METRICS:
        raise Passthrough("fallback-operator", first.operator)
    if any(u.param_index is None and u.literal is None and u.vector_key is None for u in uses):
        raise Passthrough("fallback-vector-unknown")
    from_row = first.vector_key is not None
    if any((u.vector_key is not None) != from_row for u in uses):
        raise Passthrough("universal-distances", "different query vectors")
    if query.select.find(exp.TableSample):
        raise Passthrough("fallback-tablesample")
    dims, key_type, assumed = _route_columns(route, catalog, server_decoder)
    builder = _Builder(query, catalog, dims)
    token = secrets.token_hex(8)
    names = {"ukeys": f"pgcutover_ukeys_{token}", "udist": f"pgcutover_udist_{token}",
             "uxmin": f"pgcutover_uxmin_{token}"}
    if from_row:
        names["vector"] = builder.vector_name
    table_name = f"pgcutover_utable_{secrets.token_hex(8)}"
    outer = query.expression.copy()
    tags = _tagged(outer)
    shipped: exp.Expression = exp.Column(this=exp.Identifier(this="pgcutover_d", quoted=False),
                                         table=exp.Identifier(this="pgcutover_u", quoted=False))
    for index, use in enumerate(uses):
        node = tags.distances[index]
        vector_d = node.copy()
        vector_d.set(use.column_arg, builder.column(route.pg_vector_column))
        legacy_d = node.copy()
        assert route.legacy_column
        legacy_d.set(use.column_arg, legacy_vector(route, builder.column(route.legacy_column), dims,
                                                   builder.legacy_type))
        value = shipped.copy()
        if from_row:  # distances to the vector the proxy read: used only where the server's row agrees
            row = vector_subquery(use.query_vector)
            assert row is not None
            same = exp.Not(this=exp.NullSafeNEQ(this=row.copy(), expression=exp.Column(
                this=exp.Identifier(this=builder.vector_name, quoted=False))))
            value = exp.Case(ifs=[exp.If(this=same, true=value)])
        node.replace(exp.Coalesce(this=vector_d, expressions=[value, legacy_d]))
    builder.vector_columns(tags)
    builder.expand_star(tags.select)
    for node in list(outer.find_all(exp.Subquery)):
        if vector_subquery(node) is node:
            node.replace(builder.row_vector(node))
    table = next(n for n in outer.walk() if n._meta and n.meta.get(MARK) == TAG_TABLE)
    table_sql = to_sql(table)
    table.replace(exp.Table(this=exp.Identifier(this=table_name, quoted=False)))
    alias = to_sql(identifier(query.table_alias))
    joined = (f"({table_sql} LEFT JOIN UNNEST({names['ukeys']}, {names['udist']}, {names['uxmin']}) "
              f"AS pgcutover_u(pgcutover_k, pgcutover_d, pgcutover_x) "
              f"ON pgcutover_u.pgcutover_k = {alias}.{to_sql(identifier(route.key))} "
              f"AND pgcutover_u.pgcutover_x = {alias}.xmin::text::int8)")
    sql = to_sql(outer)
    if sql.count(table_name) != 1:
        raise Passthrough("unstable-sql", "table placeholder")
    sql = sql.replace(table_name, joined)
    pieces = re.split(f"({'|'.join(names.values())})", sql)
    by_name = {v: k for k, v in names.items()}
    parts, slots = tuple(pieces[0::2]), tuple(by_name[n] for n in pieces[1::2])
    if sorted(set(slots)) != sorted(names) or any(slots.count(n) != 1 for n in ("udist", "ukeys", "uxmin")):
        raise Passthrough("unstable-sql", "placeholder count")
    param_count = _param_count(query.expression)
    metric, sign = SEARCH_METRICS[first.metric]
    plan = MergePlan(
        route=route, operator=first.operator, metric=metric, farthest=False,
        vector_param_index=first.param_index, vector_literal=first.literal if first.param_index is None else None,
        limit_value=query.limit_value, limit_param=query.limit_param,
        offset_value=query.offset_value, offset_param=query.offset_param,
        param_count=param_count, key_type=key_type, key_type_assumed=assumed, dims=dims,
        sql_with_param=_join(parts, slots, _param_slots(param_count + 1, key_type, dims, True)), parts=parts,
        slots=slots, universal=True, value_sign=sign,
        vector_key_param=_param_index_of(first.vector_key), vector_key_literal=_literal_of(first.vector_key),
        other_vectors=tuple((u.param_index, u.literal if u.param_index is None else None) for u in uses[1:]),
    )
    _check_parses(plan)
    return plan


def _param_index_of(node: exp.Expression | None) -> int | None:
    while isinstance(node, exp.Cast):
        node = node.this
    if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) and node.this.this.isdigit():
        return int(node.this.this)
    return None


def _literal_of(node: exp.Expression | None) -> str | None:
    while isinstance(node, exp.Cast):
        node = node.this
    return node.this if isinstance(node, exp.Literal) else None


def _join(parts: tuple[str, ...], slots: tuple[str, ...], values: dict[str, str]) -> str:
    out = [parts[0]]
    for slot, part in zip(slots, parts[1:], strict=True):
        out += [values[slot], part]
    return "".join(out)


def _check_parses(plan: MergePlan) -> None:
    """The merged SQL must read back as one statement: a last guard against a printing slip. (The literal form
    differs only by the fixed-shape literals written in place of the two parameters.)"""
    try:
        if len(parse(plan.sql_with_param)) != 1:
            raise Passthrough("unstable-sql")
    except SqlglotError:
        raise Passthrough("unstable-sql") from None


def _check_route(route: Route) -> None:
    if not route.fallback:
        raise Passthrough("fallback-off")
    if not route.legacy_column:
        raise Passthrough("fallback-no-legacy")
    if route.legacy_column in (route.pg_vector_column, route.key) or route.key == route.pg_vector_column:
        raise Passthrough("fallback-columns", "legacy, vector and key columns must differ")


def _check_shape(query: SimilarityQuery) -> None:
    if not query.top_level:
        raise Passthrough("fallback-nested")
    if query.aggregated:
        raise Passthrough("fallback-aggregate")
    if query.rank is None:
        raise Passthrough("fallback-order")
    use = query.distances[query.rank.distance]
    if use.metric not in SEARCH_METRICS:
        raise Passthrough("fallback-operator", use.operator)
    if query.limit_value is None and query.limit_param is None:
        raise Passthrough("fallback-needs-limit")
    if query.offset is not None and query.offset_value is None and query.offset_param is None:
        raise Passthrough("fallback-offset")
    if use.param_index is None and use.literal is None and use.vector_key is None:
        raise Passthrough("fallback-vector-unknown")
    select = query.select
    if any(p.find(exp.Window) for p in select.expressions):
        raise Passthrough("fallback-window")  # window functions would see only the merged rows
    if select.find(exp.TableSample):
        raise Passthrough("fallback-tablesample")  # each copy of the FROM list would sample differently
    # The branches qualify columns with the route table's name in the query: it must name nothing else there.
    names = [_source_name(item) for item in from_items(select)]
    if names.count(query.table_alias) != 1:
        raise Passthrough("fallback-alias", query.table_alias)


def _source_name(item: exp.Expression) -> str | None:
    alias = item.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.this is not None:
        return norm(alias.this)
    if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
        return norm(item.this)
    return None


def _route_columns(route: Route, catalog: Catalog | None, server_decoder: bool) -> tuple[int, str, bool]:
    """What both merges need of the route's columns: the vector dims, the key's type (and whether it was assumed),
    after checking the legacy column's type and that bytea can be decoded on the server."""
    dims = _dims(route, catalog)
    key_type, assumed = _key_type(route, catalog)
    _check_legacy_type(route, catalog)
    if route.legacy_format.startswith("bytea") and not server_decoder:
        raise Passthrough("fallback-needs-decoder", route.legacy_format)
    return dims, key_type, assumed


def _dims(route: Route, catalog: Catalog | None) -> int:
    column = _catalog_column(route, catalog, route.pg_vector_column)
    if column is not None:
        base, _, typmod = column.type.partition("(")
        if base.rpartition(".")[2].strip() != "vector":
            raise Passthrough("fallback-vector-type", column.type)
        if typmod.rstrip(")").strip().isdigit():
            dims = int(typmod.rstrip(")"))
            if route.dims is not None and route.dims != dims:
                raise Passthrough("fallback-dims", f"route dims {route.dims}, column {column.type}")
            return dims
    if route.dims is None:
        raise Passthrough("fallback-needs-dims")
    return route.dims


def _key_type(route: Route, catalog: Catalog | None) -> tuple[str, bool]:
    column = _catalog_column(route, catalog, route.key)
    if column is not None:
        return column.type, False
    if catalog is not None and catalog.lookup(route.table) is not None:
        raise Passthrough("fallback-no-key", route.key)
    return "bigint", True


def _check_legacy_type(route: Route, catalog: Catalog | None) -> None:
    column = _catalog_column(route, catalog, route.legacy_column or "")
    if column is None:
        return
    fmt, type_ = route.legacy_format, column.type
    ok = {
        "json": type_ in ("text", "json", "jsonb") or type_.startswith(("character varying", "character(")),
        "array": type_ in ("real[]", "double precision[]"),
    }.get(fmt, type_ == "bytea")
    if not ok:
        raise Passthrough("fallback-legacy-type", f"{fmt} in a {type_} column")


def _catalog_column(route: Route, catalog: Catalog | None, name: str) -> ColumnInfo | None:
    info = catalog.lookup(route.table) if catalog is not None else None
    return info.column(name) if info is not None else None


def _param_count(expression: exp.Expression) -> int:
    highest = 0
    for node in expression.find_all(exp.Parameter):
        if isinstance(node.this, exp.Literal) and node.this.this.isdigit():
            highest = max(highest, int(node.this.this))
    return highest


def legacy_vector(route: Route, legacy: exp.Expression, dims: int, legacy_type: str | None = None, *,
                  validity: bool = False) -> exp.Expression:
    """L: the legacy value `legacy` as a vector(dims), NULL when it is not a valid one; never raises on bad data.
    With `validity`, V: TRUE for a valid value, NULL otherwise, without pgvector's parse (json, array).
    `legacy_type` is the column's type when the catalog knows it (real[] needs no range check)."""
    node = _decoder(route.legacy_format, dims, legacy_type, validity).copy()
    for column in list(node.find_all(exp.Column)):
        if column.name == _PLACEHOLDER and column.args.get("table") is None:
            column.replace(legacy.copy())
    return node


@functools.lru_cache(maxsize=64)
def _decoder(fmt: str, dims: int, legacy_type: str | None, validity: bool) -> exp.Expression:
    """The parsed decoder template (callers copy it): parsing it costs milliseconds, plans need several."""
    valid = "TRUE" if validity else f"CAST(pgcutover_l.v AS vector({dims}))"
    if fmt == LegacyFormat.JSON:
        sql = _JSON_DECODER.format(L=_PLACEHOLDER, safe=JSON_SAFE, syntax=JSON_SYNTAX, commas=dims - 1,
                                   overflow=FLOAT4_OVERFLOW, valid=valid)
    elif fmt == LegacyFormat.ARRAY:
        check = "" if legacy_type == "real[]" else _ARRAY_RANGE_CHECK.format(risky=ARRAY_RISKY,
                                                                              overflow=FLOAT4_OVERFLOW)
        sql = _ARRAY_DECODER.format(L=_PLACEHOLDER, range_check=check, dims=dims, valid=valid)
    else:
        sql = _BYTEA_DECODER.format(L=_PLACEHOLDER, format=fmt, dims=dims)
    return parse_one(f"SELECT {sql}").selects[0]


# -- the tree ------------------------------------------------------------------------------------------------
@dataclass
class _Tagged:
    select: exp.Select
    distances: dict[int, exp.Expression]
    order_key: exp.Ordered | None
    columns: dict[int, exp.Column]


def _tagged(expression: exp.Expression) -> _Tagged:
    distances: dict[int, exp.Expression] = {}
    columns: dict[int, exp.Column] = {}
    order_key = None
    scope = expression
    for node in expression.walk():
        mark = node.meta.get(MARK) if node._meta else None
        if isinstance(mark, tuple) and mark[0] == TAG_DISTANCE:
            distances[mark[1]] = node
        elif isinstance(mark, tuple) and mark[0] == TAG_COLUMN:
            columns[mark[1]] = node
        elif mark == TAG_SCOPE:
            scope = node
        elif isinstance(mark, tuple) and mark[0] == TAG_ORDER_KEY:
            order_key = node
    assert isinstance(scope, exp.Select)
    return _Tagged(scope, distances, order_key, columns)


class _Builder:
    def __init__(self, query: SimilarityQuery, catalog: Catalog | None, dims: int) -> None:
        self.query = query
        self.catalog = catalog
        self.route = query.route
        self.dims = dims
        legacy = _catalog_column(self.route, catalog, self.route.legacy_column or "")
        self.legacy_type = legacy.type if legacy is not None else None
        token = secrets.token_hex(8)
        self.keys_name = f"pgcutover_keys_{token}"
        self.bound_name = f"pgcutover_bound_{token}"
        self.vector_name = f"pgcutover_vector_{token}"
        self.from_row = query.distances[query.rank.distance].vector_key is not None if query.rank else False
        self.rank = query.rank  # type: ignore[assignment]  # None only for the universal merge
        self.main: int = query.rank.distance if query.rank is not None else 0
        self.sign = SEARCH_METRICS.get(query.distances[self.main].metric, ("", 1))[1]

    # names -----------------------------------------------------------------------------------------------
    def column(self, name: str) -> exp.Column:
        return exp.Column(this=identifier(name), table=identifier(self.query.table_alias))

    def keys(self) -> exp.Column:
        return exp.Column(this=exp.Identifier(this=self.keys_name, quoted=False))

    def bound(self) -> exp.Column:
        return exp.Column(this=exp.Identifier(this=self.bound_name, quoted=False))

    def coalesced(self) -> exp.Expression:
        route = self.route
        assert route.legacy_column
        legacy = legacy_vector(route, self.column(route.legacy_column), self.dims, self.legacy_type)
        return exp.Coalesce(this=self.column(route.pg_vector_column), expressions=[legacy])

    def valid_legacy(self) -> exp.Expression:
        """V: the row's legacy value is a valid vector (cheaper than computing it)."""
        route = self.route
        assert route.legacy_column
        check = legacy_vector(route, self.column(route.legacy_column), self.dims, self.legacy_type, validity=True)
        return exp.Is(this=check, expression=exp.Null(), negate=True)

    def legacy_only(self) -> list[exp.Expression]:
        assert self.route.legacy_column
        return [exp.Is(this=self.column(self.route.pg_vector_column), expression=exp.Null()),
                exp.Is(this=self.column(self.route.legacy_column), expression=exp.Null(), negate=True)]

    # the statement ---------------------------------------------------------------------------------------
    def build(self) -> exp.Expression:
        outer = self.query.expression.copy()
        tags = _tagged(outer)
        for index, use in enumerate(self.query.distances):
            tags.distances[index].set(use.column_arg, self.coalesced())
        self.vector_columns(tags)
        self.expand_star(tags.select)
        distance = tags.distances[self.main].copy()  # D of the main distance
        client_where = tags.select.args.get("where")
        where_d = client_where.this.copy() if client_where is not None else None
        union = exp.Union(
            this=exp.Union(this=exp.Subquery(this=self.vector_branch()), expression=self.candidates_branch(),
                           distinct=False),
            expression=exp.Subquery(this=self.guard_branch(tags.select, where_d, distance)),
            distinct=False,
        )
        member = exp.EQ(this=self.column(self.route.key), expression=exp.Any(this=exp.Paren(
            this=exp.Array(expressions=[union]))))
        _and_where(tags.select, [member])
        for node in list(outer.find_all(exp.Subquery)):
            if vector_subquery(node) is node:
                node.replace(self.row_vector(node))
        return outer

    def row_vector(self, subquery: exp.Subquery) -> exp.Expression:
        """The client's `(SELECT embedding FROM t WHERE key = X)` as if the table were migrated: the row's
        vector, or its legacy value decoded by the server."""
        route = self.route
        assert route.legacy_column
        inner = subquery.this
        name = "pgcutover_q"
        table = inner.args["from_"].this.copy()
        table.set("alias", exp.TableAlias(this=exp.Identifier(this=name, quoted=False)))
        test = inner.args["where"].this
        value = test.expression if isinstance(test.this, exp.Column) and not isinstance(test.expression, exp.Column) \
            else test.this

        def column(col: str) -> exp.Column:
            return exp.Column(this=identifier(col), table=exp.Identifier(this=name, quoted=False))

        legacy = legacy_vector(route, column(route.legacy_column), self.dims, self.legacy_type)
        select = exp.Select(expressions=[exp.Coalesce(this=column(route.pg_vector_column), expressions=[legacy])])
        select.set("from_", exp.From(this=table))
        select.set("where", exp.Where(this=exp.EQ(this=column(route.key), expression=value.copy())))
        return exp.Subquery(this=select)

    def same_vector(self) -> exp.Expression:
        """The server's value of the query vector's row is the one the proxy searched with (a subquery tagged
        here; `build` replaces it with `row_vector`)."""
        query = self.query
        node = vector_subquery(query.distances[self.main].query_vector)
        assert node is not None
        return exp.Not(this=exp.NullSafeNEQ(this=node.copy(), expression=exp.Column(
            this=exp.Identifier(this=self.vector_name, quoted=False))))

    def vector_value(self, column: exp.Column) -> exp.Expression:
        """The vector column as if the row were migrated: its value, or the legacy value decoded by the server."""
        route = self.route
        assert route.legacy_column
        legacy = legacy_vector(route, self.column(route.legacy_column), self.dims, self.legacy_type)
        return exp.Coalesce(this=column, expressions=[legacy])

    def vector_columns(self, tags: _Tagged) -> None:
        """Every other reference to the vector column in the route table's SELECT (select list, WHERE, ORDER BY)
        reads the row's vector, legacy value included: a legacy row is returned with its vector, never NULL,
        and `embedding IS NOT NULL` holds for it, as if the table were fully migrated."""
        route = self.route
        for index, use in enumerate(self.query.columns):
            if use.name != route.pg_vector_column or use.clause not in ("select", "where", "order"):
                continue
            if not use.certain:
                raise Passthrough("fallback-ambiguous-column", use.name)
            node = tags.columns[index]
            if use.output is not None:  # the projection is named after the column: keep the name
                node.replace(self.vector_value(node.copy()))
                projection = tags.select.expressions[use.output]
                projection.replace(exp.Alias(this=projection.copy(), alias=identifier(use.name)))
            else:
                node.replace(self.vector_value(node.copy()))

    def expand_star(self, select: exp.Select) -> None:
        """`*` and `alias.*` over the route table become its columns (from the catalog), the vector column as in
        `vector_columns`."""
        query = self.query
        if not query.star:
            return
        info = self.catalog.lookup(self.route.table) if self.catalog is not None else None
        if info is None:
            raise Passthrough("fallback-star-needs-catalog")
        refuse_star_joins(select, "fallback-")
        columns: list[exp.Expression] = []
        for column in info.columns:
            node = self.column(column.name)
            if column.name == self.route.pg_vector_column:
                columns.append(exp.Alias(this=self.vector_value(node), alias=identifier(column.name)))
            else:
                columns.append(node)
        expand_stars(select, query.table_alias, columns, _source_name, "fallback-")

    def total(self) -> exp.Expression:
        """k + n as SQL."""
        query = self.query
        if query.limit_param is None and query.offset_param is None:
            assert query.limit_value is not None
            return exp.Literal.number(min(query.limit_value + (query.offset_value or 0), INT8_MAX))
        limit = _typed_count(query.limit)
        if query.offset is None:
            return limit
        offset = exp.Coalesce(this=_typed_count(query.offset), expressions=[exp.Literal.number(0)])
        return exp.Paren(this=exp.Add(this=limit, expression=offset))

    def vector_branch(self) -> exp.Select:
        """The primary rewrite's FROM, WHERE and ORDER BY (vector index shape included), keys only."""
        primary = add_vector_not_null(to_primary(self.query.expression, self.query, self.catalog), self.query)
        tags = _tagged(primary)
        keys = []
        for position, ordered in enumerate(tags.select.args["order"].expressions):
            ordered = ordered.copy()
            if position == 0 and tags.order_key is not None and not isinstance(ordered.this, DISTANCE_NODES):
                ordered.set("this", tags.distances[self.main].copy())  # an output name or ordinal
            else:
                ordered.set("this", _order_expression(ordered.this, tags.select))
            keys.append(ordered)
        select = _keys_select(self.column(self.route.key), tags.select, tags.select.args.get("where").this)
        select.set("order", exp.Order(expressions=keys))
        select.set("limit", exp.Limit(expression=self.total()))
        return select

    def candidates_branch(self) -> exp.Select:
        """The candidates that still exist and rank (a vector, or a valid legacy value): every key of the union
        has a non-NULL D, so the outer query needs no `D IS NOT NULL` and computes D once per row."""
        route = self.route
        ranks = exp.Or(this=exp.Is(this=self.column(route.pg_vector_column), expression=exp.Null(), negate=True),
                       expression=self.valid_legacy())
        select = exp.Select(expressions=[self.column(route.key)])
        select.set("from_", exp.From(this=self.query.table.copy()))
        condition: exp.Expression = exp.And(
            this=exp.EQ(this=self.column(route.key), expression=exp.Any(this=self.keys())),
            expression=exp.Paren(this=ranks))
        if self.from_row:  # candidates near another vector than the server's (e.g. a row the client cannot see)
            condition = exp.And(this=condition, expression=self.same_vector())
        select.set("where", exp.Where(this=condition))
        return select

    def guard_branch(self, client: exp.Select, where_d: exp.Expression | None,
                     distance: exp.Expression) -> exp.Select:
        counted = _keys_select(exp.Count(this=exp.Star()), client, _conjunction([
            _paren(where_d), *self.legacy_only(),
            exp.EQ(this=self.column(self.route.key), expression=exp.Any(this=self.keys())),
            self.ahead_of_bound(distance),
        ]))
        enough = exp.GTE(this=exp.Subquery(this=counted), expression=self.total())
        if self.from_row:
            everything = exp.EQ(this=self.bound(), expression=exp.cast(exp.Literal.string("Infinity"), BOUND_TYPE))
            trusted = exp.And(this=self.same_vector(), expression=exp.Paren(this=exp.Or(this=everything,
                                                                                       expression=enough)))
            guard = [exp.Not(this=exp.Coalesce(this=trusted, expressions=[exp.false()]))]
        else:
            guard = [
                exp.NullSafeNEQ(this=self.bound(), expression=exp.cast(exp.Literal.string("Infinity"), BOUND_TYPE)),
                exp.Not(this=exp.Coalesce(this=enough, expressions=[exp.false()])),
            ]
        return _keys_select(self.column(self.route.key), client,
                            _conjunction([_paren(where_d), *self.legacy_only(), *guard, self.valid_legacy()]))


    def ahead_of_bound(self, distance: exp.Expression) -> exp.Expression:
        """D ranks at or before the bound (strictly before when other ORDER BY keys could break a tie). The
        bound is in the search's units: the distance's value is `sign` times it."""
        bound: exp.Expression = self.bound() if self.sign > 0 else exp.Neg(this=exp.Paren(this=self.bound()))
        strict = not self.rank.only_key
        comparisons = {(True, True): exp.GT, (True, False): exp.GTE, (False, True): exp.LT, (False, False): exp.LTE}
        node = comparisons[(self.rank.descending, strict)]
        return node(this=distance.copy(), expression=bound)


def _order_expression(key: exp.Expression, select: exp.Select) -> exp.Expression:
    """An ORDER BY key spelled as an expression: an ordinal or an output name becomes the select-list entry it
    names (PostgreSQL's rule: output names first), for a copy of the FROM list that has no such outputs."""
    projections = select.expressions
    if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
        if any(_is_star(p) for p in projections):
            raise Passthrough("fallback-star-ordinal")  # positions count the columns `*` expands to
        index = int(key.this) - 1
        if 0 <= index < len(projections):
            target = projections[index]
            return (target.this if isinstance(target, exp.Alias) else target).copy()
    if isinstance(key, exp.Column) and key.args.get("table") is None and isinstance(key.this, exp.Identifier):
        name = norm(key.this)
        for projection in projections:
            if isinstance(projection, exp.Alias) and norm(projection.args.get("alias")) == name:
                return projection.this.copy()
    return key.copy()


def _is_star(node: exp.Expression) -> bool:
    return isinstance(node, exp.Star) or (isinstance(node, exp.Column) and isinstance(node.this, exp.Star))


def _typed_count(node: exp.Expression | None) -> exp.Expression:
    """A LIMIT/OFFSET value for arithmetic: a bare $n is cast to bigint, as PostgreSQL types it in LIMIT."""
    assert node is not None
    if isinstance(node, exp.Parameter):
        return exp.cast(node.copy(), "bigint")
    return node.copy()


def _paren(node: exp.Expression | None) -> exp.Expression | None:
    return exp.Paren(this=node.copy()) if node is not None else None


def _conjunction(parts: list[exp.Expression | None]) -> exp.Expression:
    present = [p for p in parts if p is not None]
    result = present[0]
    for part in present[1:]:
        result = exp.And(this=result, expression=part)
    return result


def _keys_select(projection: exp.Expression, source: exp.Select, where: exp.Expression) -> exp.Select:
    """SELECT projection FROM <source's FROM and JOINs> WHERE where."""
    select = exp.Select(expressions=[projection])
    select.set("from_", source.args["from_"].copy())
    joins = source.args.get("joins")
    if joins:
        select.set("joins", [join.copy() for join in joins])
    select.set("where", exp.Where(this=where))
    return select


def _and_where(select: exp.Select, conditions: list[exp.Expression]) -> None:
    where = select.args.get("where")
    parts: list[exp.Expression | None] = [_paren(where.this) if where is not None else None, *conditions]
    select.set("where", exp.Where(this=_conjunction(parts)))


def _cut(sql: str, builder: _Builder) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The merged SQL cut at the placeholders of the extra values."""
    pieces = re.split(f"({builder.keys_name}|{builder.bound_name}|{builder.vector_name})", sql)
    parts = tuple(pieces[0::2])
    names = {builder.keys_name: "keys", builder.bound_name: "bound", builder.vector_name: "vector"}
    slots = tuple(names[name] for name in pieces[1::2])
    if slots.count("keys") != 2 or slots.count("bound") < 1 or slots.count("vector") != (2 if builder.from_row else 0):
        raise Passthrough("unstable-sql", "placeholder count")
    return parts, slots


__all__ = ["METRICS", "MergePlan", "build_merge", "guard_bound", "legacy_vector", "quote_literal"]
