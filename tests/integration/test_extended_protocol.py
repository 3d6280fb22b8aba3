"""Extended-protocol details, differential: each raw script (named and unnamed statements and portals,
PortalSuspended, Describe, Flush without Sync, errors inside a pipeline, extended COPY, FunctionCall) runs on
the server directly and through the proxy, and every reply must be byte-identical. Then the same flows as
drivers produce them: asyncpg cursors fetching in chunks, psycopg named prepared statements."""

from __future__ import annotations

import asyncio
import struct

import asyncpg
import psycopg
import pytest

from pgcutover.proxy.protocol import messages as msg

from .wire import Message, RawClient

READY = "ready"
Step = tuple[bytes, str | int]  # bytes to send, then read up to ReadyForQuery or this many messages


def bind(portal: str = "", statement: str = "", params: tuple[bytes | None, ...] = (),
         result_formats: tuple[int, ...] = ()) -> bytes:
    return msg.bind_message(msg.Bind(portal, statement, (), params, result_formats))


def converse(port: int, steps: list[Step]) -> list[list[Message]]:
    with RawClient(port) as client:
        client.startup()
        out = []
        for data, until in steps:
            client.send(data)
            out.append(client.until_ready() if until == READY else [client.recv() for _ in range(int(until))])
        client.send(msg.query("SELECT 'in sync'"))  # whatever came before, the stream ends where it should
        tail = client.until_ready()
        assert [kind for kind, _ in tail] == list(b"TDCZ"), tail
        return out


def differential(pg, proxy, steps: list[Step]) -> list[list[Message]]:
    direct = converse(pg.port, steps)
    through = converse(proxy.port, steps)
    assert through == direct
    return through


def kinds(replies: list[Message]) -> str:
    return "".join(chr(kind) for kind, _ in replies)


def test_named_statement_and_interleaved_portals(pg, proxy):
    steps: list[Step] = [
        (msg.query("BEGIN"), READY),
        (msg.parse_message("series", "SELECT g, g * $1::int FROM generate_series(1, 10) g", (23,))
         + msg.describe("S", "series")
         + bind("p1", "series", (b"2",)) + bind("p2", "series", (b"3",), (1, 1))
         + msg.describe("P", "p1")
         + msg.execute("p1", 4) + msg.execute("p2", 3) + msg.execute("p1", 4) + msg.execute("p2", 0)
         + msg.execute("p1", 0) + msg.close("P", "p1") + msg.close("S", "series") + msg.SYNC, READY),
        (bind("p3", "series", (b"1",)) + msg.SYNC, READY),  # the statement is gone: an error
        (msg.query("COMMIT"), READY),
    ]
    replies = differential(pg, proxy, steps)
    assert kinds(replies[1]) == ("1tT22T" + "DDDDs" + "DDDs" + "DDDDs" + "DDDDDDDC" + "DDC" + "33Z")
    assert kinds(replies[2]) == "EZ"


def test_unnamed_statement_and_portal_reuse(pg, proxy):
    steps: list[Step] = [
        (msg.parse_message("", "SELECT $1::text || '!'") + bind("", "", (b"a",)) + msg.execute()
         + bind("", "", (b"b",)) + msg.execute() + msg.SYNC, READY),
        (bind("", "", (b"c",)) + msg.execute() + msg.SYNC, READY),  # the unnamed statement survives Sync
        (msg.parse_message("", "SELECT 42") + msg.describe("S", "") + bind() + msg.describe("P", "")
         + msg.execute() + msg.SYNC, READY),
        (msg.parse_message("", "") + bind() + msg.execute() + msg.SYNC, READY),  # empty query
        (msg.parse_message("", "SET application_name = 'x'") + msg.describe("S", "") + bind()
         + msg.execute() + msg.SYNC, READY),  # NoData
        (msg.close("S", "nonexistent") + msg.close("P", "nonexistent") + msg.SYNC, READY),
        (msg.query(""), READY),
    ]
    replies = differential(pg, proxy, steps)
    assert [kinds(r) for r in replies] == ["12DC2DCZ", "2DCZ", "1tT2TDCZ", "12IZ", "1tn2CSZ", "33Z", "IZ"]


def test_flush_without_sync(pg, proxy):
    """Flush makes the server send what it has; the proxy must relay it without waiting for a Sync."""
    steps: list[Step] = [
        (msg.parse_message("f", "SELECT $1::int + 1") + msg.describe("S", "f") + msg.FLUSH, 3),
        (bind("", "f", (b"41",)) + msg.execute() + msg.FLUSH, 3),
        (bind("", "f", (b"x",)) + msg.execute() + msg.FLUSH, 1),  # an error, still before any Sync
        (bind("", "f", (b"1",)) + msg.execute() + msg.FLUSH + msg.SYNC, READY),  # skipped until Sync
        (bind("", "f", (b"1",)) + msg.execute() + msg.SYNC, READY),
    ]
    replies = differential(pg, proxy, steps)
    assert [kinds(r) for r in replies] == ["1tT", "2DC", "E", "Z", "2DCZ"]


def test_errors_inside_a_pipeline(pg, proxy):
    steps: list[Step] = [
        (msg.parse_message("ok", "SELECT $1::int") + bind("", "ok", (b"1",)) + msg.execute()
         + msg.parse_message("", "SELEC broken") + bind() + msg.execute()
         + msg.parse_message("never", "SELECT 1") + msg.SYNC
         + bind("", "ok", (b"2",)) + msg.execute() + msg.SYNC, READY),
        (b"", READY),  # the second Sync's cycle
        (bind("", "never") + msg.SYNC, READY),  # skipped Parse: the statement does not exist
        (bind("", "ok", (b"1", b"2")) + msg.execute() + msg.SYNC, READY),  # wrong parameter count
        (bind("", "ok", (b"nan",)) + msg.execute() + msg.SYNC, READY),  # bad value
        (msg.query("BEGIN"), READY),
        (bind("", "ok", (b"0",)) + msg.execute() + msg.query("SELECT 1/0") + msg.SYNC, READY),  # a Query
        (b"", READY),  # ... in the middle of extended messages: its own ReadyForQuery, then the Sync's
        (msg.query("SELECT 1"), READY),  # in a failed transaction: 25P02
        (msg.query("ROLLBACK"), READY),
    ]
    replies = differential(pg, proxy, steps)
    assert kinds(replies[0]) == "12DCEZ"
    assert kinds(replies[1]) == "2DCZ"
    assert kinds(replies[2]) == "EZ"
    assert [kinds(r) for r in replies[6:9]] == ["2DCEZ", "Z", "EZ"]
    assert msg.parse_error_fields(replies[8][0][1])["C"] == "25P02"


def test_extended_copy_with_sync_inside(pg, proxy, direct):
    direct.execute("DROP TABLE IF EXISTS ext_copy; CREATE TABLE ext_copy (id int)")
    steps: list[Step] = [
        (msg.parse_message("", "COPY ext_copy FROM STDIN") + bind() + msg.execute() + msg.SYNC, 3),
        (msg.message(b"d", b"1\n2\n") + msg.FLUSH + msg.SYNC + msg.message(b"d", b"3\n") + msg.message(b"c")
         + msg.SYNC, READY),
        (msg.parse_message("", "COPY ext_copy FROM STDIN") + bind() + msg.execute() + msg.SYNC, 3),
        (msg.message(b"d", b"4\n") + msg.message(b"f", b"client failed\0") + msg.SYNC, READY),
        (msg.parse_message("", "COPY (SELECT * FROM ext_copy ORDER BY id) TO STDOUT") + bind() + msg.execute()
         + msg.SYNC, READY),
        (msg.query("TRUNCATE ext_copy"), READY),
    ]
    replies = differential(pg, proxy, steps)
    assert [kinds(r) for r in replies[:5]] == ["12G", "CZ", "12G", "EZ", "12HdddcCZ"]
    direct.execute("DROP TABLE ext_copy")


def test_function_call(pg, proxy):
    int4abs = 1397  # pg_proc oid of abs(int4)
    # oid, one binary argument format, one argument (4 bytes: -5), binary result
    call = msg.message(b"F", struct.pack("!ihhhiih", int4abs, 1, 1, 1, 4, -5, 1))
    replies = differential(pg, proxy, [(call, READY)])
    assert kinds(replies[0]) == "VZ"
    assert replies[0][0][1] == struct.pack("!ii", 4, 5)


def test_asyncpg_cursors_fetch_in_chunks(pg, proxy):
    """asyncpg cursors are portals executed with a row limit: PortalSuspended on every chunk."""

    async def scenario(dsn: str) -> list[object]:
        conn = await asyncpg.connect(dsn)
        out: list[object] = []
        try:
            async with conn.transaction():
                cur = await conn.cursor("SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", 1000)
                while chunk := await cur.fetch(137):
                    out.append([tuple(r) for r in chunk])
                cur2 = await conn.cursor("SELECT g FROM generate_series(1, 100) g")
                await cur2.forward(10)
                out.append(await cur2.fetchrow())
                out.append([r[0] async for r in conn.cursor("SELECT generate_series(1, 500)", prefetch=50)])
        finally:
            await conn.close()
        return out

    direct = asyncio.run(scenario(pg.dsn()))
    through = asyncio.run(scenario(proxy.dsn()))
    assert through == direct
    assert [len(chunk) for chunk in through[:8]] == [137] * 7 + [41]
    assert tuple(through[8]) == (11,)
    assert through[9] == list(range(1, 501))


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_prepared_named_statements(pg, proxy, binary: bool):
    def scenario(dsn: str) -> list[object]:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            cur = conn.cursor(binary=binary)
            out: list[object] = []
            for i in range(5):
                out.append(cur.execute("SELECT %s::int, %s::text, now() IS NOT NULL", (i, str(i))).fetchone())
            out.append(cur.execute("SELECT name FROM pg_prepared_statements").fetchall())
            with conn.transaction():
                out.append(cur.execute("SELECT %s::int + 1", (1,), prepare=True).fetchone())
            return out

    assert scenario(proxy.dsn()) == scenario(pg.dsn())


def test_unknown_portal_after_sync(pg, proxy):
    steps: list[Step] = [
        (msg.parse_message("s", "SELECT generate_series(1, 5)") + bind("p", "s") + msg.execute("p", 2)
         + msg.SYNC, READY),
        (msg.execute("p", 2) + msg.SYNC, READY),  # the implicit transaction ended: portal p is gone
    ]
    replies = differential(pg, proxy, steps)
    assert kinds(replies[0]) == "12DDsZ"
    assert kinds(replies[1]) == "EZ"
    assert msg.parse_error_fields(replies[1][0][1])["C"] == "34000"


def test_describe_only_flows(pg, proxy):
    steps: list[Step] = [
        (msg.parse_message("d1", "SELECT $1::int AS a, $2::text AS b") + msg.describe("S", "d1") + msg.SYNC,
         READY),
        (msg.describe("S", "d1") + msg.describe("S", "missing") + msg.describe("S", "d1") + msg.SYNC, READY),
        (bind("pp", "d1", (b"1", b"x")) + msg.describe("P", "pp") + msg.SYNC, READY),
    ]
    replies = differential(pg, proxy, steps)
    assert [kinds(r) for r in replies] == ["1tTZ", "tTEZ", "2TZ"]
