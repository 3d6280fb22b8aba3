"""An oracle on real PostgreSQL: ruvector_new.items is an exact copy of public.items (same columns, same rows),
so for any similarity query on `items` the shadow rewrite must return exactly what the client's own query
returns on the primary: same column names, same type OIDs, same rows in the same order. Hypothesis generates
the queries (projections, aliases, filters, subqueries, CTE and derived-table wrappers, ORDER BY and LIMIT
forms); a rewrite that changes any answer fails here.
"""

from __future__ import annotations

import asyncio

import rewrite_schema as schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rewrite_db import connect

from pgcutover.rewrite.catalog import Catalog
from pgcutover.rewrite.dialect import parse_one
from pgcutover.rewrite.router import build_plan

VECTOR = "[0.3,-0.1,0.8,0.2,-0.5,0.4,-0.9,0.6]"
OPERATORS = ["<->", "<=>", "<#>", "<+>"]


@st.composite
def similarity_queries(draw) -> tuple[str, list]:
    alias = draw(st.sampled_from(["", "i"]))
    ref = alias or "items"
    col = (lambda name: f"{alias}.{name}") if alias else (lambda name: name)
    op = draw(st.sampled_from(OPERATORS))
    vector = draw(st.sampled_from(["$1", "$1::vector", f"'{VECTOR}'", f"'{VECTOR}'::vector(8)"]))
    distance = f"{col('embedding')} {op} {vector}"
    params = [VECTOR] if "$1" in vector else []
    pool = [col("id"), col("content"), col("category"), col("price"), col("embedding"),
            f"{distance} AS d", f"1 - ({distance}) AS sim", f"{col('id')} * 2 AS twice", f"upper({col('category')})"]
    projections = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()) and f"{distance} AS d" not in projections:
        projections = ["*", *projections] if not alias else [f"{alias}.*", *projections]
    filters = draw(st.lists(st.sampled_from([
        f"{col('category')} = 'tech'", f"{col('price')} > 30", f"{distance} < 1.6", f"{col('id')} % 3 <> 0",
        f"EXISTS (SELECT 1 FROM meta m WHERE m.item_id = {ref}.id)",
        f"{col('id')} IN (SELECT item_id FROM meta WHERE tag <> 'tag2')",
        f"{col('embedding')} IS NOT NULL",
    ]), max_size=3, unique=True))
    where = f" WHERE {' AND '.join(filters)}" if filters else ""
    order_key = draw(st.sampled_from(["distance", "alias", "ordinal"]))
    if order_key == "alias" and f"{distance} AS d" in projections:
        order = "d"
    elif order_key == "ordinal" and f"{distance} AS d" in projections and "*" not in projections[0]:
        order = str(projections.index(f"{distance} AS d") + 1)
    else:
        order = distance
    tie = draw(st.sampled_from(["", f", {col('id')}"]))
    limit = draw(st.sampled_from(["", " LIMIT 7", " LIMIT 3 OFFSET 2", " LIMIT $2", " LIMIT ALL"]))
    if "$2" in limit:
        if not params:
            limit = " LIMIT 4"
        else:
            params.append(5)
    table = f"items {alias}" if alias else draw(st.sampled_from(["items", "public.items"]))
    inner = f"SELECT {', '.join(projections)} FROM {table}{where} ORDER BY {order}{tie}{limit}"
    wrapper = draw(st.sampled_from(["none", "cte", "derived"]))
    if wrapper == "cte":
        return f"WITH nearest AS ({inner}) SELECT * FROM nearest", params
    if wrapper == "derived":
        return f"SELECT s.* FROM ({inner}) AS s", params
    return inner, params


async def _run(dsn: str, sql: str, params: list) -> tuple[list, list]:
    conn = await connect(dsn)
    try:
        statement = await conn.prepare(sql)
        rows = await statement.fetch(*params)
        return [(a.name, a.type.oid) for a in statement.get_attributes()], [tuple(r) for r in rows]
    finally:
        await conn.close()


def test_shadow_rewrite_matches_the_original_on_an_identical_copy(corpus_dsn: str, live_catalog: Catalog) -> None:
    seen = {"similarity": 0}

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(similarity_queries())
    def check(query: tuple[str, list]) -> None:
        sql, params = query
        plan = build_plan(sql, schema.ROUTES, ("public",), live_catalog)
        assert plan.reason == "similarity", (plan.reason, sql)
        seen["similarity"] += 1
        assert plan.primary_sql is None  # items keeps its own bytes on the primary
        original, rewritten = asyncio.run(_both(corpus_dsn, sql, plan.shadow_sql, params))
        assert rewritten[0] == original[0], sql
        if parse_one(sql).args.get("order") is None and not sql.startswith("SELECT s.*"):
            assert sorted(rewritten[1], key=repr) == sorted(original[1], key=repr), sql
        else:
            assert rewritten[1] == original[1], sql

    check()
    assert seen["similarity"] >= 100


async def _both(dsn: str, original: str, shadow: str | None, params: list):
    assert shadow is not None
    return await _run(dsn, original, params), await _run(dsn, shadow, params)
