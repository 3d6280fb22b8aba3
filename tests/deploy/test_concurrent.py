"""A randomized concurrent workload while the triggers are installed and a backfill runs.

Several writers insert, update legacy values, vectors and other columns, change keys, delete, and roll back
some of their transactions, while a two-worker backfill converts the rows that existed before the triggers.
Afterwards every legacy row has its vector and the shadow equals the table row for row.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import asyncpg
import numpy as np

from pgcutover.deploy.backfill import BackfillOptions, backfill
from pgcutover.deploy.status import StatusOptions, status
from pgcutover.deploy.triggers import install

from .conftest import Env, run, vector_text

DIMS = 16
ROWS = 2500
WRITERS = 4
DURATION = 3.0
COLUMNS = "id, title, n, note, emb_vector::text"
IGNORED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)


class Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose."""


class Workload:
    def __init__(self, env: Env, seed: int) -> None:
        self.env, self.rng = env, random.Random(seed)
        self.keys = itertools.count(ROWS)  # fresh keys for inserts and key changes
        self.counts: dict[str, int] = {}

    def vector(self) -> str:
        return vector_text(np.array([self.rng.uniform(-1, 1) for _ in range(DIMS)], dtype=np.float32))

    def key(self) -> int:
        return self.rng.randrange(0, next(self.keys) + 1)

    async def op(self, db: asyncpg.Connection) -> str:
        t = f"{self.env.s}.items"
        kind = self.rng.choice(["insert", "insert", "legacy", "legacy", "vector", "other", "key", "delete",
                                "many", "many_legacy"])
        if kind == "insert":
            await db.execute(f"INSERT INTO {t} (id, title, n, emb) VALUES ($1, 'new', 0, $2)", next(self.keys),
                             self.vector())
        elif kind == "legacy":  # the dual-write trigger re-derives the vector
            await db.execute(f"UPDATE {t} SET emb = $2, note = NULL WHERE id = $1", self.key(), self.vector())
        elif kind == "vector":  # a new-path writer sets the vector itself
            await db.execute(f"UPDATE {t} SET emb_vector = $2::vector, note = 'direct' WHERE id = $1", self.key(),
                             self.vector())
        elif kind == "other":
            await db.execute(f"UPDATE {t} SET n = n + 1, title = $2 WHERE id = $1", self.key(),
                             f"t{self.rng.random():.4f}")
        elif kind == "key":
            await db.execute(f"UPDATE {t} SET id = $2 WHERE id = $1", self.key(), next(self.keys))
        elif kind == "delete":
            await db.execute(f"DELETE FROM {t} WHERE id = $1", self.key())
        elif kind == "many":
            await db.execute(f"UPDATE {t} SET n = n + 1 WHERE id >= $1 AND id < $1 + 25", self.key())
        else:
            await db.execute(f"UPDATE {t} SET emb = $2, note = NULL WHERE id >= $1 AND id < $1 + 10", self.key(),
                             self.vector())
        return kind

    async def writer(self, deadline: float) -> None:
        db = await self.env.connect()
        try:
            while time.monotonic() < deadline:
                outcome = "committed"
                try:
                    async with db.transaction():
                        for _ in range(self.rng.randint(1, 3)):
                            await self.op(db)
                        if self.rng.random() < 0.15:
                            raise Rollback
                except Rollback:
                    outcome = "rolled back"
                except IGNORED as exc:
                    outcome = type(exc).__name__
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
        finally:
            await db.close()


def test_concurrent_writers_with_backfill(env: Env) -> None:
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, title text, n int, note text, emb text, "
            f"emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, title text, n int, note text, emb_vector vector({DIMS}))")
    rng = np.random.default_rng(3)
    rows = [(i, f"t{i}", 0, vector_text(rng.standard_normal(DIMS).astype(np.float32))) for i in range(ROWS)]

    async def load() -> None:
        db = await env.connect()
        try:
            await db.copy_records_to_table("items", schema_name=env.schema, records=rows,
                                           columns=["id", "title", "n", "emb"])
            await db.execute(f"UPDATE {s}.items SET emb_vector = emb::vector WHERE id % 5 = 0")  # some migrated
        finally:
            await db.close()

    run(load())
    config = env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                         "legacy_column": "emb", "dims": DIMS, "shadow_table": env.table("shadow")})
    run(install(config))
    workload = Workload(env, seed=11)

    async def scenario() -> None:
        deadline = time.monotonic() + DURATION
        writers = [asyncio.create_task(workload.writer(deadline)) for _ in range(WRITERS)]
        await asyncio.sleep(0.2)
        # the initial copy of the shadow and the vectors of the old rows, throttled to overlap the writers
        await backfill(config, options=BackfillOptions(batch=50, workers=2, max_rate=1500, shadow=True,
                                                       progress=False))
        await asyncio.gather(*writers)

    run(scenario())
    assert workload.counts.get("committed", 0) > 50 and workload.counts.get("rolled back", 0) > 5, workload.counts

    # every legacy row has its vector: the one derived from its legacy value, unless a writer set it directly
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb IS NOT NULL AND emb_vector IS NULL") == 0
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE note IS DISTINCT FROM 'direct' "
                   "AND emb_vector::text IS DISTINCT FROM emb::vector::text") == 0
    # the shadow equals the table row for row
    assert env.sql(f"(SELECT {COLUMNS} FROM {s}.items EXCEPT ALL SELECT {COLUMNS} FROM {s}.shadow) UNION ALL "
                   f"(SELECT {COLUMNS} FROM {s}.shadow EXCEPT ALL SELECT {COLUMNS} FROM {s}.items)") == []
    [report] = run(status(config, options=StatusOptions(diff_batch=300)))
    assert report["shadow"]["differing_keys"] == 0
    assert report["legacy_only"] == 0 and report["total_rows"] == report["shadow"]["rows"]
