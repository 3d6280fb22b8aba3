"""CancelRequest through the proxy: the client holds the server's own key, and the proxy relays the request.

A cancelled `pg_sleep(10)` must fail with 57014 well before the sleep would have ended (we only check that
it did not run to completion: durations are not asserted). A CancelRequest with a wrong secret cancels
nothing. Protocol 3.2 (PostgreSQL 18) carries longer secrets; both libpq and a raw socket exercise it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg

from .conftest import wait_for_active_query, when_active
from .wire import RawClient, data_rows, sqlstates

SLEEP = "SELECT pg_sleep(10)"
NOT_FINISHED = 9.0  # anything under this means the 10 s sleep was interrupted


def send_cancel(port: int, pid: int, secret: bytes) -> bytes:
    """A raw CancelRequest on a fresh socket; returns whatever came back before the close (nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(msg.cancel_request(pid, secret))
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel(pg, proxy, method: str):
    tag = f"cancel-{method}"
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name=tag) as conn:
        timer = when_active(pg, tag, getattr(conn, method))
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as caught:
            conn.execute(SLEEP)
        elapsed = time.monotonic() - started
        timer.join()
        assert caught.value.sqlstate == "57014"
        assert elapsed < NOT_FINISHED
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_psycopg_cancel_inside_transaction(pg, proxy):
    with psycopg.connect(proxy.dsn(), application_name="cancel-in-tx") as conn:
        conn.execute("SELECT 1")
        timer = when_active(pg, "cancel-in-tx", conn.cancel_safe)
        with pytest.raises(errors.QueryCanceled):
            conn.execute(SLEEP)
        timer.join()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_psycopg_protocol_3_2_cancel(pg, proxy):
    """libpq 18 negotiates protocol 3.2 through the proxy and cancels with the long key it was given."""
    assert psycopg.pq.version() >= 180000, "psycopg's bundled libpq must be 18 or later"
    tag = "cancel-3.2"
    with psycopg.connect(proxy.dsn(), autocommit=True, max_protocol_version="3.2", application_name=tag) as conn:
        assert conn.pgconn.full_protocol_version == 30002
        timer = when_active(pg, tag, conn.cancel_safe)
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute(SLEEP)
        timer.join()
        assert time.monotonic() - started < NOT_FINISHED
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_asyncpg_cancel_returns_57014(pg, proxy):
    """asyncpg's BackendKeyData (3.0, 4-byte secret) sent as a CancelRequest to the proxy from elsewhere."""

    async def scenario() -> None:
        conn = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "apg-raw-cancel"})
        try:
            pid = conn._protocol.backend_pid
            secret = struct.pack("!i", conn._protocol.backend_secret)
            loop = asyncio.get_running_loop()
            started = loop.time()
            query = asyncio.create_task(conn.execute(SLEEP))
            await loop.run_in_executor(None, wait_for_active_query, pg, "apg-raw-cancel")
            assert await loop.run_in_executor(None, send_cancel, proxy.port, pid, secret) == b""
            with pytest.raises(asyncpg.QueryCanceledError) as caught:
                await query
            assert caught.value.sqlstate == "57014"
            assert loop.time() - started < NOT_FINISHED
            assert await conn.fetchval("SELECT 'usable'") == "usable"
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_asyncpg_task_cancellation_sends_cancel(pg, proxy, direct):
    """Cancelling the awaiting task makes asyncpg send its own CancelRequest: the backend stops sleeping."""

    async def scenario() -> None:
        conn = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "apg-task-cancel"})
        try:
            task = asyncio.create_task(conn.execute(SLEEP))
            await asyncio.get_running_loop().run_in_executor(None, wait_for_active_query, pg, "apg-task-cancel")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval("SELECT 1") == 1
            active = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND "
                                    "query = %s AND state = 'active'", ("apg-task-cancel", SLEEP)).fetchone()
            assert active == (0,)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_wrong_secret_cancels_nothing(pg, proxy):
    with RawClient(proxy.port) as client:
        session = client.startup(application_name="cancel-wrong-secret")
        assert len(session.secret) == 4
        client.send(msg.query("SELECT pg_sleep(2), 'completed'"))
        wait_for_active_query(pg, "cancel-wrong-secret")
        wrong = bytes(b ^ 0xFF for b in session.secret)
        assert send_cancel(proxy.port, session.pid, wrong) == b""
        assert send_cancel(proxy.port, session.pid ^ 0x5A5A, session.secret) == b""
        assert send_cancel(proxy.port, session.pid, session.secret + b"\0" * 4) == b""
        replies = client.until_ready()
        assert sqlstates(replies) == []
        assert data_rows(replies) == [[b"", b"completed"]]


@pytest.mark.parametrize("version", [codes.PROTOCOL_3_0, codes.PROTOCOL_3_2], ids=["3.0", "3.2"])
def test_server_key_is_handed_out_unchanged(proxy, version: int):
    """The client's BackendKeyData is the server's: its pid is pg_backend_pid()."""
    with RawClient(proxy.port) as client:
        session = client.startup(version=version)
        (row,) = data_rows(client.query("SELECT pg_backend_pid()"))
        assert int(row[0] or b"0") == session.pid
        assert len(session.secret) == (4 if version == codes.PROTOCOL_3_0 else 32)


def test_raw_protocol_3_2_long_key_cancel(proxy, pg):
    """Startup with protocol 3.2 (196610): PostgreSQL 18 sends a 32-byte secret, and so does the proxy;
    a raw CancelRequest carrying that long key cancels the sleep with 57014."""
    with RawClient(pg.port) as client:
        assert len(client.startup(version=codes.PROTOCOL_3_2).secret) == 32  # the server's own behaviour
    with RawClient(proxy.port) as client:
        session = client.startup(version=codes.PROTOCOL_3_2, application_name="raw-3.2")
        assert session.negotiated == []  # 3.2 is accepted as is: no NegotiateProtocolVersion
        assert len(session.secret) == 32
        started = time.monotonic()
        client.send(msg.query(SLEEP))
        wait_for_active_query(pg, "raw-3.2")
        assert send_cancel(proxy.port, session.pid, session.secret[:4]) == b""  # a truncated key: nothing
        assert send_cancel(proxy.port, session.pid, session.secret) == b""
        replies = client.until_ready()
        assert sqlstates(replies) == ["57014"]
        assert time.monotonic() - started < NOT_FINISHED
        assert data_rows(client.query("SELECT 'after cancel'")) == [[b"after cancel"]]
