"""follow(): real NOTIFY payloads from pg_notify, changes made without any notice, lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
import numpy as np

from pgcutover.fallback import formats
from pgcutover.fallback.notices import CHANNEL, build_notices
from pgcutover.fallback.store import LegacyStore
from tests.fallback.conftest import LegacyTable, create_table, run, wait_for

APP = "fb-follow-test"


async def db_state(conn: asyncpg.Connection, table: LegacyTable) -> tuple[dict[int, np.ndarray], set[int]]:
    """Legacy-only rows as the table has them now, decoded here with the standard json module."""
    good, bad = {}, set()
    for row in await conn.fetch(f"SELECT id, emb FROM {table.name} WHERE emb_vector IS NULL AND emb IS NOT NULL"):
        try:
            vec = np.array(json.loads(row["emb"]), dtype=np.float32)
            assert vec.shape == (table.dims,) and np.isfinite(vec).all()
            good[row["id"]] = vec
        except (ValueError, AssertionError):
            bad.add(row["id"])
    return good, bad


def agrees(store: LegacyStore, good: dict[int, np.ndarray], bad: set[int]) -> bool:
    return (len(store) == len(good) and set(store.skipped) == bad
            and all(store.get(k) is not None and np.array_equal(store.get(k), v) for k, v in good.items()))


@contextlib.asynccontextmanager
async def following(dsn: str, store: LegacyStore) -> AsyncIterator[asyncio.Task[None]]:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, server_settings={"application_name": APP})

    stop = asyncio.Event()
    task = asyncio.create_task(store.follow(connect, stop=stop, retry_delay=0.1))
    try:
        await asyncio.wait_for(store.wait_ready(), 30)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def notify(conn: asyncpg.Connection, payloads: list[str]) -> None:
    for payload in payloads:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


def vec_text(seed: int, dims: int) -> tuple[np.ndarray, str]:
    vec = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vec, formats.encode_json(vec)


def test_notices_drive_the_store(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=16, rows=500, seed=21)
        store = LegacyStore(table.route(), reconcile_interval=3600)
        conn = await asyncpg.connect(dsn)
        async with following(dsn, store):
            qualified = f"public.{table.name}"
            assert store.refresh_lag() == 0
            # Inserts, in the writer's transaction as the trigger does it.
            async with conn.transaction():
                for key in range(1000, 1010):
                    await conn.execute(f"INSERT INTO {table.name} (id, emb) VALUES ($1, $2)", key,
                                       vec_text(key, 16)[1])
                await notify(conn, build_notices(qualified, "upsert", range(1000, 1010)))
            await wait_for(lambda: all(k in store for k in range(1000, 1010)))
            assert np.array_equal(store.get(1003), vec_text(1003, 16)[0])
            # An update of the legacy value; keys as JSON strings.
            new, text = vec_text(99, 16)
            await conn.execute(f"UPDATE {table.name} SET emb = $1 WHERE id = 5", text)
            await notify(conn, build_notices(qualified, "upsert", ["5"]))
            await wait_for(lambda: store.get(5) is not None and np.array_equal(store.get(5), new))
            # Migrated, deleted, and a value that became unreadable.
            await conn.execute(f"UPDATE {table.name} SET emb_vector = emb::vector WHERE id = 6")
            await conn.execute(f"DELETE FROM {table.name} WHERE id = 7")
            await conn.execute(f"UPDATE {table.name} SET emb = 'garbage' WHERE id = 8")
            await notify(conn, build_notices(qualified, "migrated", [6]) + build_notices(qualified, "delete", [7])
                         + build_notices(qualified, "upsert", [8]))
            await wait_for(lambda: 6 not in store and 7 not in store and 8 in store.skipped)
            # A notice for another table, and a key that does not exist: both harmless.
            await notify(conn, build_notices("public.elsewhere", "delete", [9]))
            await notify(conn, build_notices(qualified, "delete", [123456]))
            # A statement too large for one notice: several payloads.
            await conn.execute(f"UPDATE {table.name} SET emb = '[' || array_to_string(array_fill(0.5::real,"
                               " ARRAY[16]), ',') || ']' WHERE id BETWEEN 100 AND 399")
            payloads = build_notices(qualified, "upsert", range(100, 400), limit=300)
            assert len(payloads) > 3
            await notify(conn, payloads)
            await wait_for(lambda: np.array_equal(store.get(399), np.full(16, 0.5, np.float32)))
            assert 9 in store and store.reconciles == 0  # nothing so far needed a reconcile
            good, bad = await db_state(conn, table)
            await wait_for(lambda: agrees(store, good, bad))
            await wait_for(lambda: store.refresh_lag() == 0)
        await conn.close()

    run(main())


def test_resync_and_bad_notices_reconcile(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=8, rows=300, seed=22)
        store = LegacyStore(table.route(), reconcile_interval=3600)
        conn = await asyncpg.connect(dsn)
        async with following(dsn, store):
            await conn.execute(f"DELETE FROM {table.name} WHERE id < 50")
            await conn.execute(f"UPDATE {table.name} SET emb = '[1,2,3,4,5,6,7,8]' WHERE id BETWEEN 50 AND 60")
            await notify(conn, build_notices(f"public.{table.name}", "resync", []))
            good, bad = await db_state(conn, table)
            await wait_for(lambda: agrees(store, good, bad))
            assert store.reconciles >= 1
            reconciles = store.reconciles
            await conn.execute(f"UPDATE {table.name} SET emb_vector = emb::vector WHERE id BETWEEN 61 AND 70")
            await notify(conn, ["{not json"])  # unreadable: the store reconciles rather than guess
            good, bad = await db_state(conn, table)
            await wait_for(lambda: store.reconciles > reconciles and agrees(store, good, bad))
            reconciles = store.reconciles
            await conn.execute(f"DELETE FROM {table.name} WHERE id = 71")
            await notify(conn, build_notices(f"public.{table.name}", "upsert", ["not-an-id"]))
            good, bad = await db_state(conn, table)
            await wait_for(lambda: store.reconciles > reconciles and agrees(store, good, bad))
        await conn.close()

    run(main())


def test_changes_without_notice_are_reconciled(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=8, rows=400, seed=23)
        store = LegacyStore(table.route(), reconcile_interval=0.3)
        conn = await asyncpg.connect(dsn)
        async with following(dsn, store):
            await conn.execute(f"INSERT INTO {table.name} (id, emb) VALUES (5000, $1), (5001, 'junk')",
                               vec_text(5000, 8)[1])
            await conn.execute(f"UPDATE {table.name} SET emb = $1 WHERE id = 11", vec_text(11, 8)[1])
            await conn.execute(f"UPDATE {table.name} SET emb_vector = emb::vector WHERE id = 12")
            await conn.execute(f"DELETE FROM {table.name} WHERE id = 13")
            await conn.execute(f"UPDATE {table.name} SET category = 1 WHERE id = 14")  # xmin changes, vector not
            good, bad = await db_state(conn, table)
            assert bad == {5001}
            await wait_for(lambda: agrees(store, good, bad))
            # A skipped row that gets fixed is picked up too.
            await conn.execute(f"UPDATE {table.name} SET emb = $1 WHERE id = 5001", vec_text(5001, 8)[1])
            good, bad = await db_state(conn, table)
            await wait_for(lambda: agrees(store, good, bad))
        await conn.close()

    run(main())


def test_lost_connections_are_reopened(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=8, rows=200, seed=24)
        store = LegacyStore(table.route(), reconcile_interval=3600)
        conn = await asyncpg.connect(dsn)
        async with following(dsn, store):
            reconciles = store.reconciles
            killed = await conn.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                         " WHERE application_name = $1", APP)
            assert killed >= 1
            # Changed while the follower is away and without notice: only a reconcile can see it.
            await conn.execute(f"DELETE FROM {table.name} WHERE id < 20")
            good, bad = await db_state(conn, table)
            await wait_for(lambda: store.reconciles > reconciles and agrees(store, good, bad))
            await conn.execute(f"UPDATE {table.name} SET emb = $1 WHERE id = 30", vec_text(30, 8)[1])
            await notify(conn, build_notices(f"public.{table.name}", "upsert", [30]))
            await wait_for(lambda: np.array_equal(store.get(30), vec_text(30, 8)[0]))
        await conn.close()

    run(main())


def test_in_flight_keys_and_lag(dsn: str) -> None:
    """Notices received but not applied yet: their keys are listed and the lag grows (the follower is not
    running here, so nothing applies them)."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=4, rows=20, seed=25)
        store = LegacyStore(table.route())
        conn = await asyncpg.connect(dsn)
        await store.reconcile(conn)  # resolves the table and reads every row, as a follower would
        await conn.close()
        assert len(store) == len(table.truth) and store.refresh_lag() == 0
        for payload in (build_notices(f"public.{table.name}", "upsert", [3, "4"])
                        + build_notices("public.other", "delete", [5]) + ["garbage"]):
            store._on_notify(None, 0, CHANNEL, payload)  # what asyncpg calls on a NOTIFY
        await asyncio.sleep(0.01)
        assert store.in_flight_keys() == [3, 4]
        assert store.refresh_lag() > 0

    run(main())
