"""The pgvector dialect: each operator is its own node, prints back exactly, at PostgreSQL's precedence."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from pgcutover.rewrite import dialect as d
from pgcutover.rewrite.dialect import parse_one, to_sql

OPERATORS = {
    "<->": d.L2Distance, "<=>": d.CosineDistance, "<#>": d.NegativeInnerProduct,
    "<+>": d.L1Distance, "<~>": d.HammingDistance, "<%>": d.JaccardDistance,
}
FUNCTIONS = {
    "l2_distance": d.L2DistanceFunc, "cosine_distance": d.CosineDistanceFunc, "inner_product": d.InnerProductFunc,
    "l1_distance": d.L1DistanceFunc, "hamming_distance": d.HammingDistanceFunc,
    "jaccard_distance": d.JaccardDistanceFunc,
}


@pytest.mark.parametrize("op", OPERATORS)
def test_operator_round_trips(op: str) -> None:
    sql = f"SELECT a {op} b FROM t ORDER BY emb {op} $1 LIMIT 5"
    tree = parse_one(sql)
    assert to_sql(tree) == sql
    assert type(tree.selects[0]) is OPERATORS[op]
    assert type(tree.args["order"].expressions[0].this) is OPERATORS[op]
    assert d.distance_operator(tree.selects[0]) == op


@pytest.mark.parametrize("op", OPERATORS)
def test_operator_without_spaces(op: str) -> None:
    assert to_sql(parse_one(f"SELECT a{op}b")) == f"SELECT a {op} b"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_round_trips(name: str) -> None:
    sql = f"SELECT {name}(emb, $1) FROM t"
    tree = parse_one(sql)
    assert type(tree.selects[0]) is FUNCTIONS[name]
    assert to_sql(tree) == sql
    assert to_sql(parse_one(sql.upper().replace("$1", "$1"))) == f"SELECT {name}(EMB, $1) FROM T"


@pytest.mark.parametrize(("sql", "grouping"), [
    ("emb <-> $1 + 1", "emb <-> ($1 + 1)"),
    ("emb <-> $1 * 2", "emb <-> ($1 * 2)"),
    ("a * b <-> c * d", "(a * b) <-> (c * d)"),
    ("a <=> b < 0.5", "(a <=> b) < 0.5"),
    ("NOT a <#> b > 0", "NOT ((a <#> b) > 0)"),
    ("a <-> b IS NULL", "(a <-> b) IS NULL"),
    ("a <-> b = 0 AND c", "((a <-> b) = 0) AND c"),
    ("a <-> b || c", "(a <-> b) || c"),
    ("a || b <-> c", "(a || b) <-> c"),
    ("a <-> b <=> c", "(a <-> b) <=> c"),
    ("a <-> b BETWEEN 0 AND 1", "(a <-> b) BETWEEN 0 AND 1"),
    ("-a <-> b", "(-a) <-> b"),
])
def test_precedence(sql: str, grouping: str) -> None:
    # Parenthesised the way PostgreSQL groups it, both spellings parse to the same tree.
    assert parse_one(f"SELECT {sql}").selects[0] == _strip_parens(parse_one(f"SELECT {grouping}").selects[0])


def _strip_parens(node: exp.Expression) -> exp.Expression:
    node = node.copy()
    while isinstance(node, exp.Paren):
        node = node.this
    for paren in list(node.find_all(exp.Paren)):
        inner = paren.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        paren.replace(inner)
    return node


def test_precedence_shapes() -> None:
    add = parse_one("SELECT emb <-> $1 + 1").selects[0]
    assert isinstance(add, d.L2Distance) and isinstance(add.expression, exp.Add)
    lt = parse_one("SELECT a <=> b < 0.5").selects[0]
    assert isinstance(lt, exp.LT) and isinstance(lt.this, d.CosineDistance)
    negated = parse_one("SELECT NOT a <#> b > 0").selects[0]
    assert isinstance(negated, exp.Not) and isinstance(negated.this, exp.GT)
    assert isinstance(negated.this.this, d.NegativeInnerProduct)


def test_stock_sqlglot_misreads_that_we_do_not() -> None:
    # The reason the dialect exists: stock Postgres silently changes these queries.
    assert sqlglot.transpile("SELECT a <=> b", read="postgres")[0] == "SELECT a IS NOT DISTINCT FROM b"
    assert sqlglot.transpile("SELECT a <%> b", read="postgres")[0] != "SELECT a <%> b"
    for op in ("<#>", "<+>", "<~>"):
        with pytest.raises(sqlglot.errors.ParseError):
            sqlglot.parse_one(f"SELECT a {op} b", read="postgres")
    assert to_sql(parse_one("SELECT a <=> b")) == "SELECT a <=> b"
    assert to_sql(parse_one("SELECT a <%> b")) == "SELECT a <%> b"
    assert not parse_one("SELECT a <=> b").find(exp.NullSafeEQ)
    assert not parse_one("SELECT a <%> b").find(exp.GT, exp.LT, exp.Placeholder)


def test_plain_comparisons_still_work() -> None:
    sql = "SELECT 1 FROM t WHERE a <= b AND c >= d AND e <> f AND g < h AND i > j AND k IS NOT DISTINCT FROM l"
    assert to_sql(parse_one(sql)) == sql
    assert parse_one("SELECT a < -b").selects[0].expression.__class__ is exp.Neg


@pytest.mark.parametrize(("sql", "printed"), [
    ("SELECT $1::vector", "SELECT $1::vector"),
    ("SELECT $1::vector(3)", "SELECT $1::vector(3)"),
    ("SELECT x::halfvec(3072)", "SELECT x::halfvec(3072)"),
    ("SELECT x::sparsevec(5)", "SELECT x::sparsevec(5)"),
    ("SELECT x::bit(3)", "SELECT x::bit(3)"),
    ("SELECT x::ruvector_new.vector", "SELECT x::ruvector_new.vector"),
    ("SELECT '[1,2,3]'::vector", "SELECT '[1,2,3]'::vector"),
    ("SELECT CAST($2 AS vector(3))", "SELECT $2::vector(3)"),
    ("SELECT (a + b)::vector", "SELECT (a + b)::vector"),
    ("SELECT (emb::halfvec(3)) <=> ($1)::halfvec(3)", "SELECT (emb::halfvec(3)) <=> ($1)::halfvec(3)"),
    ("SELECT (-1)::vector", "SELECT (-1)::vector"),
    ("SELECT x::text", "SELECT CAST(x AS TEXT)"),
])
def test_casts(sql: str, printed: str) -> None:
    assert to_sql(parse_one(sql)) == printed
    assert parse_one(printed) == parse_one(sql)


def test_parameters_round_trip() -> None:
    sql = "SELECT id FROM t WHERE c = $2 ORDER BY emb <-> $1 LIMIT $3 OFFSET $10"
    assert to_sql(parse_one(sql)) == sql


def test_build_type() -> None:
    assert to_sql(d.build_type("ruvector_new.vector")) == "ruvector_new.vector"
    assert to_sql(d.build_type("vector")) == "vector"
    assert to_sql(d.build_type("halfvec(3072)")) == "halfvec(3072)"


def test_dialect_is_registered_by_name() -> None:
    assert sqlglot.transpile("SELECT a <#> b", read="pgvector", write="pgvector") == ["SELECT a <#> b"]
