"""asyncpg through the proxy: extended protocol, binary codecs, its statement cache, pipelined executemany,
binary COPY, LISTEN/NOTIFY, ParameterStatus and its own CancelRequest. Where asyncpg's behaviour depends on
the server's replies, the same steps run directly and through the proxy and must give the same outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import ipaddress
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(60):
            return await coro

    return asyncio.run(bounded())


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, **kwargs)


def differential(pg, proxy, scenario: Callable[[str, str], Awaitable[Any]]) -> Any:
    """Run `scenario(dsn, suffix)` directly and through the proxy; both outcomes must be equal."""
    direct = run(scenario(pg.dsn(), "direct"))
    through = run(scenario(proxy.dsn(), "proxy"))
    assert through == direct
    return through


def outcome(exc: BaseException) -> tuple[str, str | None]:
    return type(exc).__name__, getattr(exc, "sqlstate", None)


CODEC_VALUES: list[tuple[str, Any]] = [
    ("int4", 2_147_483_647),
    ("int8", -9_223_372_036_854_775_808),
    ("int2", -32768),
    ("float8", 3.141592653589793),
    ("float4", 1.5),
    ("numeric", decimal.Decimal("12345678901234567890.123456789")),
    ("bool", True),
    ("text", "grüße, 世界 \N{SNOWMAN}"),
    ("bytea", bytes(range(256)) * 4),
    ("json", json.dumps({"a": [1, 2, {"b": None}]})),
    ("jsonb", json.dumps({"k": "v", "n": 1.25})),
    ("int4[]", [1, 2, None, 4]),
    ("text[]", ["a", "b c", "", None]),
    ("float8[]", [[1.0, 2.0], [3.0, 4.0]]),
    ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=dt.UTC)),
    ("timestamp", dt.datetime(1999, 12, 31, 12, 0, 0)),
    ("date", dt.date(2000, 1, 1)),
    ("interval", dt.timedelta(days=3, seconds=7, microseconds=5)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("inet", ipaddress.ip_interface("10.1.2.3/24")),
]


@pytest.mark.parametrize(("pgtype", "value"), CODEC_VALUES, ids=[t for t, _ in CODEC_VALUES])
def test_binary_codec_round_trip(proxy, pgtype: str, value: Any):
    async def scenario() -> None:
        conn = await connect(proxy.dsn())
        try:
            back = await conn.fetchval(f"SELECT $1::{pgtype}", value)
            assert back == value
            null = await conn.fetchval(f"SELECT $1::{pgtype}", None)
            assert null is None
        finally:
            await conn.close()

    run(scenario())


def test_codecs_match_direct(pg, proxy):
    async def scenario(dsn: str, _: str) -> list[Any]:
        conn = await connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT 1::int, 2.5::float8, 1.10::numeric, '{\"a\":1}'::json, '\\xdeadbeef'::bytea, "
                "ARRAY[1,2,3], '2020-01-02 03:04:05+00'::timestamptz, "
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '[1,2,3]'::vector::text, "
                "(SELECT array_agg(g) FROM generate_series(1, 1000) g)")
            return list(row)
        finally:
            await conn.close()

    differential(pg, proxy, scenario)


def test_statement_cache_and_schema_change(pg, proxy):
    """Many runs of one cached statement, then ALTER TABLE: asyncpg's InvalidCachedStatementError handling
    (silent re-prepare outside a transaction, the error inside one) must look the same as directly."""

    async def scenario(dsn: str, suffix: str) -> list[Any]:
        table = f"apg_cache_{suffix}"
        conn = await connect(dsn)
        other = await connect(dsn)
        events: list[Any] = []
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int, b int)")
            await conn.execute(f"INSERT INTO {table} VALUES (1, 2)")
            query = f"SELECT * FROM {table}"
            for _ in range(50):
                events.append(tuple(await conn.fetchrow(query)))
            await other.execute(f"ALTER TABLE {table} ALTER COLUMN b TYPE bigint")
            events.append(tuple(await conn.fetchrow(query)))  # re-prepared transparently
            await other.execute(f"ALTER TABLE {table} ADD COLUMN c text DEFAULT 'x'")
            try:
                async with conn.transaction():
                    await conn.fetchrow(query)
            except asyncpg.InvalidCachedStatementError as exc:
                events.append(outcome(exc))
            events.append(tuple(await conn.fetchrow(query)))
            events.append(await conn.fetchval("SELECT 'usable'"))
            await conn.execute(f"DROP TABLE {table}")
        finally:
            await other.close()
            await conn.close()
        return events

    events = differential(pg, proxy, scenario)
    assert ("InvalidCachedStatementError", "0A000") in events
    assert events[-1] == "usable"


def test_prepared_statements(pg, proxy):
    async def scenario(dsn: str, _: str) -> list[Any]:
        conn = await connect(dsn, statement_cache_size=0)
        try:
            stmt = await conn.prepare("SELECT $1::int + $2::int AS total, $3::text AS label")
            params = [p.name for p in stmt.get_parameters()]
            attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
            rows = [tuple(await stmt.fetchrow(i, i * 2, f"row {i}")) for i in range(20)]
            many = [tuple(r) for r in await stmt.fetch(5, 6, "x")]
            named = await conn.prepare("SELECT generate_series(1, $1::int)", name="apg_named_stmt")
            series = [r[0] for r in await named.fetch(10)]
            return [params, attrs, rows, many, series, stmt.get_statusmsg()]
        finally:
            await conn.close()

    result = differential(pg, proxy, scenario)
    assert result[4] == list(range(1, 11))


def test_executemany_pipelined(pg, proxy):
    async def scenario(dsn: str, suffix: str) -> list[Any]:
        table = f"apg_many_{suffix}"
        conn = await connect(dsn)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, v text)")
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(i, f"v{i}") for i in range(5000)])
            stats = tuple(await conn.fetchrow(f"SELECT count(*), sum(id), max(v) FROM {table}"))
            await conn.execute(f"DROP TABLE {table}")
            return [stats]
        finally:
            await conn.close()

    assert differential(pg, proxy, scenario) == [(5000, sum(range(5000)), "v999")]


def test_error_inside_executemany_pipeline(pg, proxy):
    """One row of a pipelined batch violates a constraint: the server skips to Sync, the batch is rolled back,
    and the connection (and the proxy's bookkeeping) stays usable."""

    async def scenario(dsn: str, suffix: str) -> list[Any]:
        table = f"apg_pipe_err_{suffix}"
        conn = await connect(dsn)
        events: list[Any] = []
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; "
                               f"CREATE TABLE {table} (id int PRIMARY KEY, v int CHECK (v >= 0))")
            rows = [(i, i) for i in range(1000)]
            rows[500] = (500, -1)
            try:
                await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", rows)
            except asyncpg.CheckViolationError as exc:
                events.append(outcome(exc))
            events.append(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            dupes = [(1, 1), (2, 2), (1, 3)]
            try:
                await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", dupes)
            except asyncpg.UniqueViolationError as exc:
                events.append(outcome(exc))
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(7, 7), (8, 8)])
            events.append(await conn.fetchval(f"SELECT sum(id) FROM {table}"))
            for _ in range(3):
                events.append(await conn.fetchval("SELECT 41 + 1"))
            await conn.execute(f"DROP TABLE {table}")
        finally:
            await conn.close()
        return events

    assert differential(pg, proxy, scenario) == [
        ("CheckViolationError", "23514"), 0, ("UniqueViolationError", "23505"), 15, 42, 42, 42]


def test_transactions(pg, proxy):
    async def scenario(dsn: str, suffix: str) -> list[Any]:
        table = f"apg_tx_{suffix}"
        conn = await connect(dsn)
        events: list[Any] = []
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY)")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                events.append(conn.is_in_transaction())
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    raise RuntimeError("roll back")
            except RuntimeError:
                events.append("rolled back")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (3)")
                try:
                    async with conn.transaction():  # a savepoint
                        await conn.execute(f"INSERT INTO {table} VALUES (3)")
                except asyncpg.UniqueViolationError as exc:
                    events.append(outcome(exc))
                await conn.execute(f"INSERT INTO {table} VALUES (4)")
            tx = conn.transaction(isolation="serializable", readonly=True)
            await tx.start()
            events.append(await conn.fetchval("SHOW transaction_isolation"))
            try:
                await conn.execute(f"INSERT INTO {table} VALUES (5)")
            except asyncpg.ReadOnlySQLTransactionError as exc:
                events.append(outcome(exc))
            await tx.rollback()
            events.append(conn.is_in_transaction())
            events.append([r[0] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")])
            await conn.execute(f"DROP TABLE {table}")
        finally:
            await conn.close()
        return events

    assert differential(pg, proxy, scenario) == [
        True, "rolled back", ("UniqueViolationError", "23505"), "serializable",
        ("ReadOnlySQLTransactionError", "25006"), False, [1, 3, 4]]


def test_binary_copy(pg, proxy):
    async def scenario(dsn: str, suffix: str) -> list[Any]:
        table = f"apg_copy_{suffix}"
        conn = await connect(dsn)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}; "
                               f"CREATE TABLE {table} (id int, name text, data bytea, at timestamptz)")
            at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
            records = [(i, f"name {i}", bytes([i % 256]) * 100, at) for i in range(3000)]
            status1 = await conn.copy_records_to_table(table, records=records)
            text_in = "".join(f"{i}\tfrom text {i}\t\\\\x00ff\t2024-01-02 00:00:00+00\n" for i in range(3000, 3500))
            status2 = await conn.copy_to_table(table, source=io.BytesIO(text_in.encode()))
            binary_out, text_out = io.BytesIO(), io.BytesIO()
            status3 = await conn.copy_from_query(f"SELECT * FROM {table} ORDER BY id", output=binary_out,
                                                 format="binary")
            status4 = await conn.copy_from_table(table, output=text_out, format="csv", header=True)
            count = await conn.fetchval(f"SELECT count(*) FROM {table}")
            await conn.execute(f"DROP TABLE {table}")
            return [status1, status2, status3, status4, count, binary_out.getvalue(), text_out.getvalue()]
        finally:
            await conn.close()

    result = differential(pg, proxy, scenario)
    assert result[:5] == ["COPY 3000", "COPY 500", "COPY 3500", "COPY 3500", 3500]
    assert result[5].startswith(b"PGCOPY\n\xff\r\n\0")


def test_listen_notify(proxy, pg):
    async def scenario() -> list[tuple[str, str]]:
        listener = await connect(proxy.dsn())
        sender_via_proxy = await connect(proxy.dsn())
        sender_direct = await connect(pg.dsn())
        received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        try:
            await listener.add_listener("apg_chan", lambda _c, _pid, channel, payload: received.put_nowait(
                (channel, payload)))
            await sender_via_proxy.execute("NOTIFY apg_chan, 'through the proxy'")
            await sender_direct.execute("SELECT pg_notify('apg_chan', 'direct')")
            async with sender_direct.transaction():  # delivered at commit only
                await sender_direct.execute("NOTIFY apg_chan, 'at commit'")
            got = [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
            assert await listener.fetchval("SELECT 1") == 1  # notifications did not desync the session
            return got
        finally:
            for conn in (listener, sender_via_proxy, sender_direct):
                await conn.close()

    assert run(scenario()) == [("apg_chan", "through the proxy"), ("apg_chan", "direct"), ("apg_chan", "at commit")]


def test_parameter_status(proxy):
    async def scenario() -> None:
        conn = await connect(proxy.dsn(), server_settings={"application_name": "apg-initial"})
        try:
            settings = conn.get_settings()
            assert settings.application_name == "apg-initial"
            assert settings.server_version.startswith("18")
            await conn.execute("SET application_name = 'apg-changed'")
            await conn.execute("SET TimeZone = 'Asia/Tokyo'")
            settings = conn.get_settings()
            assert settings.application_name == "apg-changed"
            assert settings.TimeZone == "Asia/Tokyo"
            at = await conn.fetchval("SELECT '2024-01-01 00:00:00+00'::timestamptz::text")
            assert at == "2024-01-01 09:00:00+09"
        finally:
            await conn.close()

    run(scenario())


def test_timeout_sends_cancel_and_connection_survives(proxy):
    """asyncpg's own CancelRequest (on timeout) reaches the right backend through the proxy."""

    async def scenario() -> None:
        conn = await connect(proxy.dsn())
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.execute("SELECT pg_sleep(10)", timeout=0.5)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(10)"), 0.5)
            assert await conn.fetchval("SELECT 'usable'") == "usable"
            assert time.monotonic() - started < 9  # the sleeps were cancelled, not waited out
        finally:
            await conn.close()

    run(scenario())
