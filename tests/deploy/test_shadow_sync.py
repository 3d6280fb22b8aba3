"""Shadow sync: every INSERT/UPDATE/DELETE/TRUNCATE reaches the shadow inside the writer's transaction."""

from __future__ import annotations

import asyncpg
import pytest

from pgcutover.deploy.triggers import install

from .conftest import Env, run

DIMS = 4


def _setup(env: Env, shadow_columns: str = f"title text, emb_vector vector({DIMS})", **route: object) -> None:
    env.sql(f"CREATE TABLE {env.s}.items (id int PRIMARY KEY, title text, n int DEFAULT 0, emb text, "
            f"emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {env.s}.shadow (id int PRIMARY KEY, {shadow_columns})")
    run(install(env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                            "legacy_column": "emb", "dims": DIMS, "shadow_table": env.table("shadow"),
                            "on_bad_vector": "skip", **route})))


def _mismatches(env: Env, columns: str = "title, emb_vector::text") -> list:
    return env.sql(
        f"(SELECT id, {columns} FROM {env.s}.items EXCEPT SELECT id, {columns} FROM {env.s}.shadow) UNION ALL "
        f"(SELECT id, {columns} FROM {env.s}.shadow EXCEPT SELECT id, {columns} FROM {env.s}.items)"
    )


def test_each_kind_of_write_reaches_the_shadow(env: Env) -> None:
    _setup(env)
    steps = [
        "INSERT INTO {s}.items (id, title, emb) VALUES (1, 'a', '[1,1,1,1]'), (2, 'b', '[2,2,2,2]'), "
        "(3, 'c', '[3,3,3,3]'), (4, 'd', '[1]')",
        "UPDATE {s}.items SET title = 'b2' WHERE id = 2",
        "UPDATE {s}.items SET emb = '[9,9,9,9]' WHERE id = 1",
        "UPDATE {s}.items SET emb_vector = '[7,7,7,7]' WHERE id = 3",
        "UPDATE {s}.items SET id = 20 WHERE id = 2",  # key change: old key leaves the shadow
        "UPDATE {s}.items SET id = id * 10 WHERE id IN (1, 3)",  # several keys change in one statement
        "INSERT INTO {s}.items (id, title, emb) VALUES (20, 'up', '[5,5,5,5]') "
        "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, emb = EXCLUDED.emb",
        "DELETE FROM {s}.items WHERE id = 4",
    ]
    for step in steps:
        env.sql(step.format(s=env.s))
        assert _mismatches(env) == [], step
    assert env.val(f"SELECT count(*) FROM {env.s}.shadow") == 3
    env.sql(f"TRUNCATE {env.s}.items")
    assert env.val(f"SELECT count(*) FROM {env.s}.shadow") == 0


def test_rolled_back_writes_leave_no_trace(env: Env) -> None:
    _setup(env)
    env.sql(f"INSERT INTO {env.s}.items (id, title, emb) VALUES (1, 'a', '[1,1,1,1]')")

    async def go() -> None:
        conn = await env.connect()
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {env.s}.items (id, emb) VALUES (2, '[2,2,2,2]')")
                    await conn.execute(f"UPDATE {env.s}.items SET id = 3, title = 'x' WHERE id = 1")
                    raise RuntimeError("roll back")
            async with conn.transaction():
                await conn.execute(f"UPDATE {env.s}.items SET title = 'kept' WHERE id = 1")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():  # a savepoint rolled back on its own
                        await conn.execute(f"DELETE FROM {env.s}.items WHERE id = 1")
                        await conn.execute(f"INSERT INTO {env.s}.items (id) VALUES (5), (5)")
        finally:
            await conn.close()

    run(go())
    rows = env.sql(f"SELECT id, title, emb_vector::text AS v FROM {env.s}.shadow")
    assert [tuple(r) for r in rows] == [(1, "kept", "[1,1,1,1]")]


def test_shadow_with_its_own_columns_and_type(env: Env) -> None:
    # halfvec shadow column, a column the table lacks, a generated column, and no `n` column.
    _setup(env, shadow_columns=f"title text, extra text DEFAULT 'x', vec halfvec({DIMS}), "
                               "upper_title text GENERATED ALWAYS AS (upper(title)) STORED",
           shadow_column="vec")
    env.sql(f"INSERT INTO {env.s}.items (id, title, n, emb) VALUES (1, 'a', 5, '[0.5,1,2,3]')")
    env.sql(f"UPDATE {env.s}.items SET n = 6, title = 'b' WHERE id = 1")
    row = env.sql(f"SELECT title, extra, vec::text AS vec, upper_title FROM {env.s}.shadow WHERE id = 1")[0]
    assert tuple(row) == ("b", "x", "[0.5,1,2,3]", "B")


def test_rows_from_before_the_triggers_are_parsed_from_legacy(env: Env) -> None:
    env.sql(f"CREATE TABLE {env.s}.pre (id int PRIMARY KEY, title text, emb text, emb_vector vector({DIMS}))")
    env.sql(f"INSERT INTO {env.s}.pre VALUES (1, 'a', '[1,2,3,4]', NULL), (2, 'b', '[1]', NULL)")
    _setup(env)
    env.sql(f"INSERT INTO {env.s}.items SELECT id, title, 0, emb, emb_vector FROM {env.s}.pre")
    env.sql(f"ALTER TABLE {env.s}.items DISABLE TRIGGER pgcutover_dual_write")
    env.sql(f"UPDATE {env.s}.items SET emb_vector = NULL")  # legacy-only again, as before a backfill
    env.sql(f"ALTER TABLE {env.s}.items ENABLE TRIGGER pgcutover_dual_write")
    env.sql(f"UPDATE {env.s}.items SET title = title || '!'")
    rows = env.sql(f"SELECT id, title, emb_vector::text AS v FROM {env.s}.shadow ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "a!", "[1,2,3,4]"), (2, "b!", None)]
