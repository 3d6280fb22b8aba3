"""The backfill never makes an application statement fail (issue 11 item 5).

Application writers run multi-row UPDATEs of the source (legacy values, NULLs, other columns) while a shadow
backfill converts and copies the same rows. The writers lock in ascending key order among themselves (index range
scans only, ranges in increasing order within a transaction), so they cannot deadlock with each other: any error
they see would be the backfill's doing. The test asserts there is none, and that the result is still exact.
"""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import numpy as np

from pgcutover.deploy.backfill import BackfillOptions, backfill
from pgcutover.deploy.status import StatusOptions, status
from pgcutover.deploy.triggers import install

from .conftest import Env, run, vector_text

DIMS = 8
ROWS = 3000
WRITERS = 4


class RangeWriters:
    def __init__(self, env: Env, seed: int) -> None:
        self.env, self.rng = env, random.Random(seed)
        self.errors: list[BaseException] = []
        self.committed = 0

    def legacy(self) -> str | None:
        if self.rng.random() < 0.2:
            return None
        return vector_text(np.array([self.rng.uniform(-1, 1) for _ in range(DIMS)], dtype=np.float32))

    async def transaction(self, db: asyncpg.Connection) -> None:
        t = f"{self.env.s}.items"
        start = self.rng.randrange(1, ROWS)
        async with db.transaction():
            for _ in range(self.rng.randint(1, 3)):
                width = self.rng.randint(5, 120)
                kind = self.rng.random()
                if kind < 0.5:
                    await db.execute(f"UPDATE {t} SET emb = $3 WHERE id >= $1 AND id < $2", start, start + width,
                                     self.legacy())
                elif kind < 0.65:
                    await db.execute(f"UPDATE {t} SET emb = NULL WHERE id >= $1 AND id < $2", start, start + width)
                else:
                    await db.execute(f"UPDATE {t} SET n = n + 1 WHERE id >= $1 AND id < $2", start, start + width)
                start += width + self.rng.randint(0, 200)  # the next range lies above: ascending lock order

    async def run(self, stop: asyncio.Event) -> None:
        db = await self.env.connect()
        # Plain index scans: rows are then locked in key order (a bitmap or sequential scan locks them in
        # physical order, and two such writers can deadlock with each other, backfill or not).
        await db.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        try:
            while not stop.is_set():
                try:
                    await self.transaction(db)
                    self.committed += 1
                except asyncpg.PostgresError as exc:
                    self.errors.append(exc)
        finally:
            await db.close()


def test_backfill_under_concurrent_multi_row_updates_makes_no_application_error(env: Env) -> None:
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, emb text, "
            f"emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, n int, emb_vector vector({DIMS}))")
    rng = np.random.default_rng(7)
    records = [(i, 0, vector_text(rng.standard_normal(DIMS).astype(np.float32))) for i in range(1, ROWS + 1)]

    async def load() -> None:
        db = await env.connect()
        try:
            await db.copy_records_to_table("items", schema_name=env.schema, records=records,
                                           columns=["id", "n", "emb"])
            # every third row migrated already: a batch both converts some rows and only copies others
            await db.execute(f"UPDATE {s}.items SET emb_vector = emb::vector WHERE id % 3 = 0")
        finally:
            await db.close()

    run(load())
    config = env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                         "legacy_column": "emb", "dims": DIMS, "shadow_table": env.table("shadow")})
    run(install(config))
    writers = RangeWriters(env, seed=3)

    async def scenario() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(writers.run(stop)) for _ in range(WRITERS)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await backfill(config, options=BackfillOptions(batch=200, workers=2, shadow=True, progress=False))
        while time.monotonic() - started < 4.0:  # overlap the writers for a while even on a fast machine: each
            # run after the first starts a new pass, which copies every row to the shadow again
            await backfill(config, options=BackfillOptions(batch=100, workers=2, shadow=True, progress=False))
        stop.set()
        await asyncio.gather(*tasks)

    run(scenario())
    assert writers.errors == [], [(e, getattr(e, "detail", None)) for e in writers.errors[:3]]
    assert writers.committed > 20
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb_vector IS DISTINCT FROM emb::vector") == 0
    assert env.val(
        f"SELECT count(*) FROM {s}.items i FULL JOIN {s}.shadow h USING (id) "
        "WHERE (i.n, i.emb_vector::text) IS DISTINCT FROM (h.n, h.emb_vector::text)") == 0
    [report] = run(status(config, options=StatusOptions(diff_batch=500)))
    assert report["legacy_only"] == 0 and report["shadow"]["differing_keys"] == 0
    assert report["vector_mismatch"]["rows"] == 0


def test_a_row_held_by_a_long_transaction_makes_the_backfill_wait_not_the_application(env: Env) -> None:
    """The application holds the first row of a batch (and later wants another row of it) for longer than the
    backfill's lock_timeout: the backfill steps back and retries; the application never fails."""
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, emb text, "
            f"emb_vector vector({DIMS}))")
    env.sql(f"INSERT INTO {s}.items (id, emb) SELECT i, '[' || array_to_string(array_fill(i::real, "
            f"ARRAY[{DIMS}]), ',') || ']' FROM generate_series(1, 400) AS i")
    config = env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                         "legacy_column": "emb", "dims": DIMS})
    run(install(config))

    async def scenario() -> None:
        app = await env.connect()
        try:
            tx = app.transaction()
            await tx.start()
            await app.execute(f"UPDATE {s}.items SET n = n + 1 WHERE id = 1")  # the first key of the first slot
            await app.execute(f"UPDATE {s}.items SET n = n + 1 WHERE id = 250")
            job = asyncio.create_task(backfill(config, options=BackfillOptions(batch=50, workers=2,
                                                                               progress=False)))
            await asyncio.sleep(1.0)  # five times the backfill's lock_timeout
            await app.execute(f"UPDATE {s}.items SET n = n + 1 WHERE id >= 2 AND id < 300")  # rows it may hold
            await tx.commit()
            [result] = await job
            assert result.rows_done == 400
        finally:
            await app.close()

    run(scenario())
    assert env.val(f"SELECT count(*) FROM {s}.items WHERE emb_vector IS DISTINCT FROM emb::vector") == 0
    assert env.val(f"SELECT sum(n) FROM {s}.items") == 300
