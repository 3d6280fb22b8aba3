"""Dual write and shadow sync follow NULLs (issue 11 item 4), and status reports vectors that disagree with
their legacy value.

A legacy value set to NULL clears vector_column and the shadow's vector; rows left disagreeing (written while
the triggers were not there) are counted by `status`, with sample keys, in the table and in --json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time

import asyncpg
import numpy as np

from pgcutover.deploy.backfill import BackfillOptions, backfill
from pgcutover.deploy.status import StatusOptions, status, to_table
from pgcutover.deploy.triggers import install

from .conftest import Env, run, vector_text

DIMS = 4


def _tables(env: Env, rows: int) -> dict[str, object]:
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, title text, emb text, emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, title text, emb_vector vector({DIMS}))")
    env.sql(f"INSERT INTO {s}.items (id, title, emb) "
            f"SELECT i, 't' || i, '[' || i || ', 1, 2, 3]' FROM generate_series(1, {rows}) AS i")
    return {"table": env.table("items"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
            "dims": DIMS, "shadow_table": env.table("shadow")}


def _disagreeing(env: Env) -> int:
    return env.val(f"SELECT count(*) FROM {env.s}.items WHERE emb_vector IS DISTINCT FROM emb::vector")


def _shadow_differs(env: Env) -> int:
    return env.val(
        f"SELECT count(*) FROM {env.s}.items i FULL JOIN {env.s}.shadow h USING (id) "
        "WHERE i.id IS NULL OR h.id IS NULL OR (i.title, i.emb_vector::text) IS DISTINCT FROM "
        "(h.title, h.emb_vector::text)")


def test_legacy_set_to_null_clears_the_vector_and_the_shadow(env: Env) -> None:
    route = _tables(env, rows=10)
    config = env.config(route)
    run(install(config))
    run(backfill(config, options=BackfillOptions(shadow=True, progress=False)))
    s = env.s
    env.sql(f"UPDATE {s}.items SET emb = NULL WHERE id IN (1, 2)")
    env.sql(f"UPDATE {s}.items SET emb = NULL, title = 'x' WHERE id = 3")
    env.sql(f"INSERT INTO {s}.items (id, title, emb) VALUES (11, 'n', NULL)")
    env.sql(f"UPDATE {s}.items SET emb = '[9,9,9,9]' WHERE id = 11")
    env.sql(f"UPDATE {s}.items SET emb = NULL WHERE id = 11")
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb IS NULL AND emb_vector IS NOT NULL") == 0
    assert env.val(f"SELECT count(*) FROM {s}.shadow WHERE id IN (1, 2, 3, 11) AND emb_vector IS NOT NULL") == 0
    assert _disagreeing(env) == 0 and _shadow_differs(env) == 0
    # A writer that sets the vector itself in the same statement keeps it (and status will list the row).
    env.sql(f"UPDATE {s}.items SET emb = NULL, emb_vector = '[5,5,5,5]' WHERE id = 4")
    assert env.val(f"SELECT emb_vector::text FROM {s}.items WHERE id = 4") == "[5,5,5,5]"
    [report] = run(status(config))
    assert report["vector_mismatch"] == {"rows": 1, "sample_keys": ["4"]}
    assert report["shadow"]["differing_keys"] == 0


def test_status_reports_vectors_that_disagree_with_their_legacy_value(env: Env) -> None:
    route = _tables(env, rows=40)
    config = env.write_config({**route, "on_bad_vector": "skip"})
    env.cli("install-triggers", config=config)
    env.cli("backfill", "--shadow", "--quiet", config=config)
    s = env.s
    # what happened before the fix (or with the triggers off): the legacy value cleared or changed, the vector kept
    env.sql(f"ALTER TABLE {s}.items DISABLE TRIGGER USER")
    env.sql(f"UPDATE {s}.items SET emb = NULL WHERE id IN (7, 3, 30)")
    env.sql(f"UPDATE {s}.items SET emb = '[0,0,0,1]' WHERE id = 12")
    env.sql(f"UPDATE {s}.items SET emb = 'not a vector' WHERE id = 13")  # bad now, still has a vector
    env.sql(f"UPDATE {s}.items SET emb = '[1]', emb_vector = NULL WHERE id = 14")  # bad and no vector: fine
    env.sql(f"ALTER TABLE {s}.items ENABLE TRIGGER USER")
    report = json.loads(env.cli("status", "--json", config=config).stdout)["routes"][0]
    assert report["vector_mismatch"] == {"rows": 5, "sample_keys": ["3", "7", "12", "13", "30"]}
    assert "5 (keys 3, 7, 12, ...)" in env.cli("status", config=config).stdout
    no_diff = json.loads(env.cli("status", "--json", "--no-diff", config=config).stdout)["routes"][0]
    assert no_diff["vector_mismatch"] is None
    # re-writing the legacy values through the triggers repairs them
    env.sql(f"UPDATE {s}.items SET emb = '[1,1,1,1]' WHERE id IN (3, 7, 12, 13, 30)")
    [report] = run(status(env.config({**route, "on_bad_vector": "skip"})))
    assert report["vector_mismatch"] == {"rows": 0, "sample_keys": []}
    assert "MISMATCHED" in to_table([report])


class Writers:
    """Random concurrent writers, NULL legacy values among them, each transaction 1-3 statements."""

    def __init__(self, env: Env, seed: int, first_free_key: int) -> None:
        self.env, self.rng = env, random.Random(seed)
        self.keys = itertools.count(first_free_key)
        self.counts: dict[str, int] = {}

    def legacy(self) -> str | None:
        if self.rng.random() < 0.3:
            return None
        return vector_text(np.array([self.rng.uniform(-1, 1) for _ in range(DIMS)], dtype=np.float32))

    async def op(self, db: asyncpg.Connection) -> None:
        t = f"{self.env.s}.items"
        top = next(self.keys)
        key = self.rng.randrange(1, top)
        kind = self.rng.choice(["insert", "legacy", "legacy", "null", "null", "many_null", "many", "other",
                                "delete", "key"])
        if kind == "insert":
            await db.execute(f"INSERT INTO {t} (id, title, emb) VALUES ($1, 'new', $2)", top, self.legacy())
        elif kind == "legacy":
            await db.execute(f"UPDATE {t} SET emb = $2 WHERE id = $1", key, self.legacy())
        elif kind == "null":
            await db.execute(f"UPDATE {t} SET emb = NULL, title = 'null' WHERE id = $1", key)
        elif kind == "many_null":
            await db.execute(f"UPDATE {t} SET emb = NULL WHERE id >= $1 AND id < $1 + 10", key)
        elif kind == "many":
            await db.execute(f"UPDATE {t} SET emb = $2 WHERE id >= $1 AND id < $1 + 10", key, self.legacy())
        elif kind == "other":
            await db.execute(f"UPDATE {t} SET title = $2 WHERE id = $1", key, f"t{self.rng.random():.4f}")
        elif kind == "delete":
            await db.execute(f"DELETE FROM {t} WHERE id = $1", key)
        else:
            await db.execute(f"UPDATE {t} SET id = $2 WHERE id = $1", key, next(self.keys))

    async def run(self, deadline: float) -> None:
        db = await self.env.connect()
        try:
            while time.monotonic() < deadline:
                outcome = "committed"
                try:
                    async with db.transaction():
                        for _ in range(self.rng.randint(1, 3)):
                            await self.op(db)
                except (asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError) as exc:
                    outcome = type(exc).__name__  # between the writers themselves (random order, random keys)
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
        finally:
            await db.close()


def test_concurrent_writers_with_null_legacy_values(env: Env) -> None:
    rows = 1500
    route = _tables(env, rows=rows)
    config = env.config(route)
    run(install(config))
    writers = Writers(env, seed=5, first_free_key=rows + 1)

    async def scenario() -> None:
        deadline = time.monotonic() + 3.0
        tasks = [asyncio.create_task(writers.run(deadline)) for _ in range(4)]
        await asyncio.sleep(0.2)
        await backfill(config, options=BackfillOptions(batch=50, workers=2, max_rate=2000, shadow=True,
                                                       progress=False))
        await asyncio.gather(*tasks)

    run(scenario())
    assert writers.counts.get("committed", 0) > 50, writers.counts
    s = env.s
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb IS NULL") > 50  # the NULLs really happened
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb IS NULL AND emb_vector IS NULL") > 50
    # row for row: vector_column = legacy::vector, NULL for NULL; the shadow equals the table
    assert _disagreeing(env) == 0
    assert _shadow_differs(env) == 0
    [report] = run(status(config, options=StatusOptions(diff_batch=200)))
    assert report["vector_mismatch"] == {"rows": 0, "sample_keys": []}
    assert report["shadow"]["differing_keys"] == 0 and report["legacy_only"] == 0
