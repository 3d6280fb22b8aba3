"""Hypothesis: whatever the router does not recognise comes back as passthrough (forward the client's bytes),
and planning never raises."""

from __future__ import annotations

import rewrite_schema as schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcutover.rewrite.dialect import parse
from pgcutover.rewrite.prefilter import Prefilter
from pgcutover.rewrite.router import Router

ROUTER = Router(schema.ROUTES, schema.catalog(), cache_size=64)
PREFILTER = Prefilter(schema.ROUTES)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["id", "items", "docs", "embedding", "emb", "title", "t", "x", "public", "meta", "v"])
values = st.one_of(st.integers(-5, 500).map(str), st.sampled_from(["'a'", "NULL", "$1", "$2", "now()", "true"]))
comparisons = st.tuples(names, st.sampled_from(["=", "<", ">", "<>", "LIKE", "IS NOT"]), values).map(" ".join)


@st.composite
def plain_sql(draw) -> str:
    """Ordinary SQL, with route names but no pgvector distance."""
    table, column = draw(names), draw(names)
    where = draw(st.lists(comparisons, max_size=3))
    where_sql = f" WHERE {' AND '.join(where)}" if where else ""
    shape = draw(st.sampled_from([
        f"SELECT {column} FROM {table}{where_sql} ORDER BY {column} LIMIT 3",
        f"INSERT INTO {table} ({column}) VALUES ({draw(values)})",
        f"UPDATE {table} SET {column} = {draw(values)}{where_sql}",
        f"DELETE FROM {table}{where_sql}",
        f"SELECT count(*) FROM {table} JOIN meta ON meta.item_id = {table}.id{where_sql}",
        "BEGIN", "COMMIT", "SET search_path = app, public", f"SHOW {column}",
    ]))
    return shape


TOKENS = ["SELECT", "FROM", "WHERE", "ORDER BY", "LIMIT", "OFFSET", "JOIN", "ON", "AND", "OR", "NOT", "(", ")",
          ",", "*", "items", "docs", "embedding", "embedding_vector", "id", "$1", "$2", "'[1,2,3]'", "::vector",
          "<->", "<=>", "<#>", "<+>", "<~>", "<%>", "l2_distance(", "1", "0.5", "<", "=", "AS", "d", "DESC", ";",
          "WITH", "q", "UNION", "ALL", "FOR UPDATE", "--", "/*", "*/", "\"", "'"]


@FUZZ
@given(st.text(max_size=300))
def test_random_text_passes_through(text: str) -> None:
    plan = ROUTER.plan(text)
    assert plan.passthrough
    assert plan.sql_for("primary") is None and plan.sql_for("shadow") is None


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_break_the_prefilter(data: bytes) -> None:
    assert PREFILTER.might_match(data) == PREFILTER.might_match(data.decode("latin-1"))


@FUZZ
@given(plain_sql())
def test_non_vector_sql_is_never_parsed(sql: str) -> None:
    plan = ROUTER.plan(sql)
    assert plan.passthrough and plan.reason == "prefilter"


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join))
def test_token_soup_is_passthrough_or_a_sound_rewrite(sql: str) -> None:
    plan = ROUTER.plan(sql)
    if plan.passthrough:
        assert plan.sql_for("primary") is None and plan.sql_for("shadow") is None
        return
    # A soup that happens to be a real similarity query: every target's SQL is one valid statement.
    assert plan.reason == "similarity" and plan.query is not None
    for target in ("primary", "shadow"):
        sql_text = plan.sql_for(target)
        assert sql_text is None or len(parse(sql_text)) == 1


@FUZZ
@given(plain_sql(), st.sampled_from(["<->", "<=>", "<#>"]))
def test_vector_sql_on_no_route_passes_through(sql: str, op: str) -> None:
    plan = ROUTER.plan(f"SELECT x FROM unrelated ORDER BY v {op} $1; {sql}")
    assert plan.passthrough
