"""The corpus against real PostgreSQL + pgvector: for every similarity case and both targets, the SQL the router
sends returns exactly what the hand-written query on that target returns (column names, type OIDs, rows).

Runs in a database of its own so no other test's tables are touched. Tables have no ANN index except the
expression index of `big`, so results are exact (and for `big` both queries have the same shape). The catalog the
planner uses here is the one loaded from the server, which must equal the hand-written one of the golden files.
"""

from __future__ import annotations

import asyncio

import pytest
import rewrite_schema as schema
from rewrite_corpus import Case, cases
from rewrite_db import connect

from pgcutover.rewrite.catalog import Catalog
from pgcutover.rewrite.dialect import parse_one
from pgcutover.rewrite.router import build_plan

CASES = [c for c in cases() if c.similarity and c.execute]


def test_loaded_catalog_matches_the_schema(live_catalog: Catalog) -> None:
    expected = schema.catalog()
    assert set(live_catalog.tables) == set(expected.tables)
    for key, table in expected.tables.items():
        loaded = live_catalog.tables[key]
        assert loaded.columns == table.columns, key
        assert [(i.method, i.opclass, i.order_operator, i.column, i.cast and i.cast[0], i.partial)
                for i in loaded.indexes if i.order_operator] == [
                   (i.method, i.opclass, i.order_operator, i.column, i.cast and i.cast[0], i.partial)
                   for i in table.indexes], key
    assert live_catalog.tables[("public", "big")].indexes[0].cast[1].sql("postgres") == "halfvec(8)"
    for name, schemas in expected.relations.items():
        assert live_catalog.relations[name] == schemas, name
    assert live_catalog.operator_results == expected.operator_results
    assert live_catalog.resolved["public.items"] == ("public", "items")
    assert live_catalog.resolved["app.Vectors"] == ("app", "Vectors")


def _ordered(sql: str) -> bool:
    return parse_one(sql).args.get("order") is not None


async def _run(dsn: str, sql: str, case: Case) -> tuple[list[tuple[str, int]], list[tuple]]:
    conn = await connect(dsn, case.search_path)
    try:
        statement = await conn.prepare(sql)
        rows = await statement.fetch(*case.params)
        return [(a.name, a.type.oid) for a in statement.get_attributes()], [tuple(r) for r in rows]
    finally:
        await conn.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("target", ["primary", "shadow"])
def test_rewritten_equals_hand_written(case: Case, target: str, corpus_dsn: str, live_catalog: Catalog) -> None:
    catalog = live_catalog if case.catalog else None
    plan = build_plan(case.sql, schema.ROUTES, case.search_path, catalog)
    assert plan.reason == "similarity"
    assert (plan.primary_sql, plan.shadow_sql) == (case.primary, case.shadow)
    sent = plan.sql_for(target) or case.sql
    hand = case.hand(target)

    async def both():
        return await _run(corpus_dsn, sent, case), await _run(corpus_dsn, hand, case)

    (got_columns, got_rows), (want_columns, want_rows) = asyncio.run(both())
    assert got_columns == want_columns
    if not _ordered(hand):
        got_rows, want_rows = sorted(got_rows, key=repr), sorted(want_rows, key=repr)
    assert got_rows == want_rows
    assert want_rows, "a corpus query should return rows, or the comparison proves little"


def test_expression_index_serves_the_primary_rewrite(corpus_dsn: str, live_catalog: Catalog) -> None:
    sql = "SELECT id FROM big ORDER BY embedding <=> $1 LIMIT 5"
    plan = build_plan(sql, schema.ROUTES, ("public",), live_catalog)
    assert plan.primary_sql is not None and "halfvec(8)" in plan.primary_sql

    async def explain(text: str) -> tuple[str, list[str]]:
        conn = await connect(corpus_dsn)
        try:
            await conn.execute("SET enable_seqscan = off")
            statement = await conn.prepare(text)
            rows = await conn.fetch(f"EXPLAIN (COSTS OFF) {text}", "[1,0,0,0,0,0,0,0]")
            return "\n".join(r[0] for r in rows), [t.name for t in statement.get_parameters()]
        finally:
            await conn.close()

    rewritten, params = asyncio.run(explain(plan.primary_sql))
    original, original_params = asyncio.run(explain(sql))
    assert "Index Scan using big_embedding_halfvec" in rewritten
    assert "big_embedding_halfvec" not in original
    assert params == original_params == ["vector"]  # clients still bind a vector
