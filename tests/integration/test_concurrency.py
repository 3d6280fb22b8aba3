"""200 clients at once through one proxy: all connected at the same time, each running a few queries
(simple, prepared, a transaction, a short sleep so that they overlap); every one succeeds."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg

from .conftest import backends, wait_for_backends

CLIENTS = 200
TAG = "concurrent-200"


async def one_client(dsn: str, index: int, connected: asyncio.Event, go: asyncio.Event,
                     counter: list[int]) -> list[object]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": TAG}, timeout=60)
    try:
        counter[0] += 1
        if counter[0] == CLIENTS:
            connected.set()
        await go.wait()
        results: list[object] = [await conn.fetchval("SELECT $1::int * 2", index)]
        stmt = await conn.prepare("SELECT count(*) FROM generate_series(1, $1::int)")
        results.append(await stmt.fetchval(index + 1))
        async with conn.transaction():
            await conn.execute("INSERT INTO concurrent_clients VALUES ($1)", index)
            await conn.execute("SELECT pg_sleep(0.05)")
        results.append(await conn.fetchval("SELECT count(*) >= 1 FROM concurrent_clients WHERE id = $1", index))
        return results
    finally:
        await conn.close()


def test_200_concurrent_clients(pg, proxy, direct):
    direct.execute("DROP TABLE IF EXISTS concurrent_clients; CREATE TABLE concurrent_clients (id int)")

    async def scenario() -> tuple[list[list[object]], int]:
        connected, go = asyncio.Event(), asyncio.Event()
        counter = [0]
        tasks = [asyncio.create_task(one_client(proxy.dsn(), i, connected, go, counter)) for i in range(CLIENTS)]
        await asyncio.wait_for(connected.wait(), 120)
        at_once = await asyncio.get_running_loop().run_in_executor(None, backends, pg, TAG)
        go.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 120), at_once

    results, at_once = asyncio.run(scenario())
    assert at_once == CLIENTS  # all sessions were open upstream at the same time
    assert results == [[i * 2, i + 1, True] for i in range(CLIENTS)]
    assert direct.execute("SELECT count(DISTINCT id) FROM concurrent_clients").fetchone() == (CLIENTS,)
    assert wait_for_backends(pg, TAG, 0) == 0
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    direct.execute("DROP TABLE concurrent_clients")
