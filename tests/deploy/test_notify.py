"""Change notices: what a LISTENer on pgcutover_changes receives, checked with the fallback store's own parser."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import asyncpg

from pgcutover.deploy.triggers import install, install_schema
from pgcutover.fallback.notices import MAX_PAYLOAD_BYTES, ChangeNotice, parse_notice

from .conftest import Env, run

DIMS = 4
GOOD = "[1,2,3,4]"
BAD = "[1]"  # wrong dimensions: with on_bad_vector = "skip" the row stays legacy-only


class Listener:
    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self.conn, self.table = conn, table
        self.payloads: list[str] = []

    def on_notice(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)

    async def take(self, settle: float = 0.15) -> list[ChangeNotice]:
        """Notices so far (after a quiet moment: they arrive asynchronously after each commit)."""
        deadline = time.monotonic() + settle
        count = -1
        while count != len(self.payloads) or time.monotonic() < deadline:
            count = len(self.payloads)
            await self.conn.execute("SELECT 1")
            await asyncio.sleep(0.05)
        for payload in self.payloads:
            assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
        notices = [parse_notice(p) for p in self.payloads]
        self.payloads.clear()
        assert all(n.table == self.table for n in notices)
        return notices


def _kinds(notices: list[ChangeNotice]) -> dict[str, list]:
    out: dict[str, list] = {}
    for notice in notices:
        out.setdefault(notice.kind, []).extend(notice.keys)
    return out


def _setup(env: Env, key_type: str = "int") -> None:
    env.sql(f"CREATE TABLE {env.s}.items (id {key_type} PRIMARY KEY, title text, emb text, emb_vector vector({DIMS}))")
    run(install(env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                            "legacy_column": "emb", "dims": DIMS, "on_bad_vector": "skip"})))


async def _with_listener(env: Env, body) -> None:
    listen, write = await env.connect(), await env.connect()
    listener = Listener(listen, env.table("items"))
    await listen.add_listener("pgcutover_changes", listener.on_notice)
    try:
        await body(write, listener)
    finally:
        await listen.close()
        await write.close()


def test_notices_for_each_kind_of_change(env: Env) -> None:
    _setup(env)
    s = env.s

    async def body(db: asyncpg.Connection, listener: Listener) -> None:
        async def step(sql: str, *args: Any) -> dict[str, list]:
            await db.execute(sql.format(s=s), *args)
            return _kinds(await listener.take())

        # a valid insert is migrated at once by the dual-write trigger: nothing for the legacy store
        assert await step("INSERT INTO {s}.items (id, emb) VALUES (1, $1)", GOOD) == {}
        assert await step("INSERT INTO {s}.items (id, emb) VALUES (2, $1)", BAD) == {"upsert": [2]}
        # one statement, one notice
        assert await step("INSERT INTO {s}.items (id, emb) SELECT i, $1 FROM generate_series(3, 6) i", BAD) == {
            "upsert": [3, 4, 5, 6]}
        assert await step("UPDATE {s}.items SET emb = $1 WHERE id = 2", GOOD) == {"migrated": [2]}
        assert await step("UPDATE {s}.items SET emb_vector = $1 WHERE id = 4", GOOD) == {"migrated": [4]}
        assert await step("UPDATE {s}.items SET id = 30 WHERE id = 3") == {"delete": [3], "upsert": [30]}
        assert await step("UPDATE {s}.items SET emb = '[2]' WHERE id = 5") == {"upsert": [5]}  # legacy changed
        assert await step("UPDATE {s}.items SET title = 'x' WHERE id = 5") == {}  # legacy untouched
        # legacy set to NULL: the row leaves the store (it is no longer found by similarity)
        assert await step("UPDATE {s}.items SET emb = NULL WHERE id = 5") == {"delete": [5]}
        assert await step("UPDATE {s}.items SET emb = $1 WHERE id = 5", BAD) == {"upsert": [5]}
        assert await step("UPDATE {s}.items SET emb_vector = NULL WHERE id = 1") == {"upsert": [1]}
        assert await step("DELETE FROM {s}.items WHERE id IN (1, 2, 6)") == {"delete": [1, 6]}  # 2 is migrated
        async with db.transaction():
            await db.execute(f"INSERT INTO {s}.items (id, emb) VALUES (7, $1)", BAD)
            await db.execute(f"UPDATE {s}.items SET id = 31 WHERE id = 30")
        assert _kinds(await listener.take()) == {"upsert": [7, 31], "delete": [30]}
        try:
            async with db.transaction():
                await db.execute(f"INSERT INTO {s}.items (id, emb) VALUES (8, $1)", BAD)
                raise RuntimeError
        except RuntimeError:
            pass
        assert await listener.take() == []  # rolled back: no notice
        await db.execute(f"TRUNCATE {s}.items")
        assert [n.kind for n in await listener.take()] == ["resync"]

    run(_with_listener(env, body))


def test_large_statements_are_split_under_the_payload_limit(env: Env) -> None:
    _setup(env)

    async def body(db: asyncpg.Connection, listener: Listener) -> None:
        await db.execute(f"INSERT INTO {env.s}.items (id, emb) SELECT i, $1 FROM generate_series(1000000, 1004999) i",
                         BAD)
        notices = await listener.take()
        assert len(notices) > 1 and {n.kind for n in notices} == {"upsert"}
        assert sorted(k for n in notices for k in n.keys) == list(range(1_000_000, 1_005_000))

    run(_with_listener(env, body))


def test_text_keys_and_resync_when_too_many(env: Env) -> None:
    _setup(env, key_type="text")

    async def body(db: asyncpg.Connection, listener: Listener) -> None:
        await db.execute(f"INSERT INTO {env.s}.items (id, emb) VALUES ('a \"quoted\" key', $1), ('é', $1)", BAD)
        assert _kinds(await listener.take()) == {"upsert": ['a "quoted" key', "é"]}
        # 2,100 keys of 1,000 bytes would need more than 256 notices: one resync instead
        await db.execute(f"INSERT INTO {env.s}.items (id, emb) SELECT repeat('k', 995) || i, $1 "
                         "FROM generate_series(10000, 12099) i", BAD)
        assert [n.kind for n in await listener.take()] == ["resync"]
        # a single key too long for any notice
        await db.execute(f"INSERT INTO {env.s}.items (id, emb) VALUES (repeat('x', 7950), $1)", BAD)
        assert [n.kind for n in await listener.take()] == ["resync"]

    run(_with_listener(env, body))


def test_notices_go_to_the_configured_channel(env: Env) -> None:
    """`[proxy] notify_channel` reaches the triggers (the proxy LISTENs there); backfill/status keep it."""
    route = {"table": env.table("items"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
             "dims": DIMS, "on_bad_vector": "skip"}
    env.sql(f"CREATE TABLE {env.s}.items (id int PRIMARY KEY, title text, emb text, emb_vector vector({DIMS}))")
    config = env.config(route)
    custom = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, notify_channel="team's changes"))

    async def main() -> None:
        await install(custom)
        listen, write = await env.connect(), await env.connect()
        heard: list[tuple[str, str]] = []

        def on_notice(_conn: Any, _pid: int, channel: str, payload: str) -> None:
            heard.append((channel, payload))

        await listen.add_listener("team's changes", on_notice)
        await listen.add_listener("pgcutover_changes", on_notice)
        try:
            await install_schema(write)  # what backfill and status do: the installed channel stays
            await write.execute(f"INSERT INTO {env.s}.items (id, emb) VALUES (1, $1)", BAD)
            deadline = time.monotonic() + 10
            while not heard and time.monotonic() < deadline:
                await listen.execute("SELECT 1")
                await asyncio.sleep(0.05)
            assert [channel for channel, _ in heard] == ["team's changes"]
            assert list(parse_notice(heard[0][1]).keys) == [1]
        finally:
            await listen.close()
            await write.close()
            await install(config)  # the default again, for the tests after this one

    run(main())
