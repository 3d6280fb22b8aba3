"""keys_sql: for each query shape, the key statement returns exactly the keys and distances of a hand-written
query on that target (real PostgreSQL), and what it cannot compare it refuses with a reason."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from pgcutover.core.config import Route
from pgcutover.rewrite.catalog import load_catalog
from pgcutover.rewrite.dialect import parse_one
from pgcutover.rewrite.mirror_sql import Unsupported, is_read_only, keys_sql, parameter_count
from pgcutover.rewrite.router import build_plan

from .conftest import DATABASE, vector_text, vectors

ROUTE = Route(table="public.ev_good", column="embedding", key="id", shadow_table="good.items")
Q1, Q2 = (vector_text(v) for v in vectors(2, seed=11))
LITERAL = vector_text(vectors(1, seed=12)[0])

# (client SQL, its parameters, hand-written (key, distance) query on the primary, same on the shadow)
SHAPES = [
    ("SELECT content FROM ev_good ORDER BY embedding <-> $1 LIMIT 10", [Q1],
     "SELECT id, embedding <-> $1::vector FROM {t} ORDER BY embedding <-> $1::vector LIMIT 10"),
    ("SELECT g.id, g.embedding <-> $1 AS d FROM ev_good g WHERE g.id > $2 ORDER BY d LIMIT $3", [Q1, 500, 9],
     "SELECT id, embedding <-> $1::vector FROM {t} WHERE id > $2 ORDER BY embedding <-> $1::vector LIMIT $3"),
    ("SELECT id, embedding <=> $1 FROM ev_good ORDER BY 2 LIMIT 7 OFFSET 3", [Q1],
     "SELECT id, embedding <=> $1::vector FROM {t} ORDER BY embedding <=> $1::vector LIMIT 7 OFFSET 3"),
    ("SELECT id FROM ev_good ORDER BY embedding <#> $1 LIMIT 5", [Q2],
     "SELECT id, embedding <#> $1::vector FROM {t} ORDER BY embedding <#> $1::vector LIMIT 5"),
    ("WITH q AS (SELECT $1::vector AS v) SELECT e.content FROM ev_good e, q ORDER BY e.embedding <-> q.v LIMIT 8",
     [Q2], "SELECT id, embedding <-> $1::vector FROM {t} ORDER BY embedding <-> $1::vector LIMIT 8"),
    ("SELECT s.content FROM (SELECT id, content, embedding <-> $1 AS d FROM ev_good ORDER BY d LIMIT 12) s "
     "WHERE s.id % 2 = 0", [Q1],
     "SELECT id, embedding <-> $1::vector FROM {t} ORDER BY embedding <-> $1::vector LIMIT 12"),
    (f"SELECT id FROM ev_good ORDER BY embedding <-> '{LITERAL}' LIMIT 4", [],
     f"SELECT id, embedding <-> '{LITERAL}'::vector FROM {{t}} ORDER BY embedding <-> '{LITERAL}'::vector LIMIT 4"),
    ("SELECT id FROM ev_good ORDER BY l2_distance(embedding, $1) LIMIT 6", [Q2],
     "SELECT id, l2_distance(embedding, $1::vector) FROM {t} ORDER BY l2_distance(embedding, $1::vector) LIMIT 6"),
    ("SELECT e.id, b.content FROM ev_good e JOIN ev_bad b ON b.id = e.id ORDER BY e.embedding <-> $1 LIMIT 5",
     [Q1], "SELECT e.id, e.embedding <-> $1::vector FROM {t} e JOIN ev_bad b ON b.id = e.id "
           "ORDER BY e.embedding <-> $1::vector LIMIT 5"),
    # $1 appears only in the select list: the statement keeps it so that $2 stays $2
    ("SELECT content, embedding <-> $1 AS d FROM ev_good ORDER BY embedding <-> $2 LIMIT 3", [Q1, Q2],
     "SELECT id, embedding <-> $2::vector FROM {t} WHERE $1::vector IS NOT NULL "
     "ORDER BY embedding <-> $2::vector LIMIT 3"),
]


async def _connect(pg) -> asyncpg.Connection:
    return await asyncpg.connect(pg.dsn(database=DATABASE))


async def _rows(conn: asyncpg.Connection, sql: str, args: list[object], last_two: bool) -> list[tuple]:
    statement = await conn.prepare(sql)
    records = await statement.fetch(*args[:len(statement.get_parameters())])
    return [(r[-2], r[-1]) if last_two else (r[0], r[1]) for r in records]


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_keys_match_hand_written_query(evidence_db, shape: int) -> None:
    client_sql, args, hand = SHAPES[shape]

    async def main() -> None:
        conn = await _connect(evidence_db)
        try:
            catalog = await load_catalog(conn, [ROUTE])
            plan = build_plan(client_sql, [ROUTE], catalog=catalog)
            assert plan.query is not None, plan.reason
            for target, table in (("primary", "ev_good"), ("shadow", "good.items")):
                sql = keys_sql(plan, target, catalog)
                assert is_read_only(parse_one(sql))
                got = await _rows(conn, sql, args, last_two=True)
                want = await _rows(conn, hand.format(t=table), args, last_two=False)
                assert got, f"{target}: no rows"
                assert [k for k, _ in got] == [k for k, _ in want], (target, sql)
                assert [d for _, d in got] == pytest.approx([d for _, d in want]), (target, sql)
        finally:
            await conn.close()

    asyncio.run(main())


def test_exact_target_is_brute_force(evidence_db) -> None:
    """The "exact" statement under the mirror's settings returns numpy's true top-k."""
    plan = build_plan("SELECT content FROM ev_good ORDER BY embedding <-> $1 LIMIT 10", [ROUTE])
    data = vectors(2000, seed=7)
    queries = vectors(10, seed=31)

    async def main() -> None:
        conn = await _connect(evidence_db)
        try:
            sql = keys_sql(plan, "exact")
            for q in queries:
                async with conn.transaction(readonly=True):
                    await conn.execute("SELECT set_config('enable_indexscan', 'off', true), "
                                       "set_config('enable_bitmapscan', 'off', true)")
                    got = [k for k, _ in await _rows(conn, sql, [vector_text(q)], last_two=True)]
                truth = np.argsort(np.linalg.norm(data - q, axis=1), kind="stable")[:10] + 1
                assert got == [int(i) for i in truth]
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT id FROM ev_good ORDER BY embedding <-> $1", "no-limit"),
    ("SELECT id FROM ev_good WHERE embedding <-> $1 < 0.5 LIMIT 5", "no-order-by-distance"),
    ("SELECT DISTINCT content, embedding <-> $1 AS d FROM ev_good ORDER BY d LIMIT 5", "aggregated"),
    ("SELECT id FROM ev_good ORDER BY embedding <-> $1 LIMIT 5000", "limit-too-large"),
    ("SELECT * FROM (SELECT id FROM ev_good WHERE id > $2 ORDER BY embedding <-> $3 LIMIT 5) s WHERE s.id < $1",
     "parameter-gap"),
])
def test_shapes_that_cannot_be_compared(sql: str, reason: str) -> None:
    plan = build_plan(sql, [ROUTE])
    assert plan.query is not None, plan.reason
    with pytest.raises(Unsupported) as info:
        keys_sql(plan, "primary")
    assert info.value.reason == reason


def test_passthrough_and_writes_are_refused() -> None:
    for sql in ("INSERT INTO ev_good (id) VALUES (1)", "SELECT 1",
                "UPDATE ev_good SET content = 'x' WHERE embedding <-> $1 < 1",
                "SELECT id FROM ev_good ORDER BY embedding <-> $1 LIMIT 5 FOR UPDATE"):
        plan = build_plan(sql, [ROUTE])
        with pytest.raises(Unsupported):
            keys_sql(plan, "primary")


def test_is_read_only() -> None:
    assert is_read_only(parse_one("SELECT 1"))
    assert is_read_only(parse_one("WITH a AS (SELECT 1) SELECT * FROM a"))
    for sql in ("WITH a AS (DELETE FROM t RETURNING id) SELECT * FROM a", "SELECT 1 INTO t2",
                "SELECT * FROM t FOR SHARE", "INSERT INTO t VALUES (1)", "UPDATE t SET a = 1"):
        assert not is_read_only(parse_one(sql)), sql


def test_parameter_count() -> None:
    assert parameter_count("SELECT $1, $3") == 3
    assert parameter_count("SELECT 1") == 0
