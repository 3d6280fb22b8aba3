"""Bounds before authentication: `startup_timeout` closes silent and half-started connections, no client
message above 64 KB is accepted before ReadyForQuery, and `max_client_conn` refuses the next client with
PostgreSQL's own 53300 "sorry, too many clients already" (the console stays reachable).

Waiting for a close is not a timed assertion: the tests only wait (with a generous deadline) for something
that must happen, never check how fast it happened.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import asyncpg
import psycopg
import pytest

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg

from .conftest import backends, wait_for_backends
from .wire import RawClient, sqlstates

STARTUP = msg.startup_packet({"user": "postgres", "database": "postgres"})


def closed_by_peer(sock: socket.socket, deadline: float = 60.0) -> bytes:
    """Everything the peer sends until it closes; fails if it has not closed within `deadline`."""
    sock.settimeout(deadline)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError as exc:
            raise AssertionError("the proxy kept the connection open") from exc
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def short_startup_proxy(pg, spawn_proxy):
    return spawn_proxy(pg.port, "startup_timeout = 1\n")


@pytest.mark.parametrize("opening", [b"", STARTUP[:9], msg.SSL_REQUEST_PACKET],
                         ids=["silent", "half-a-startup-packet", "after-ssl-answer"])
def test_startup_timeout_closes_unfinished_connections(short_startup_proxy, opening: bytes):
    with socket.create_connection(("127.0.0.1", short_startup_proxy.port)) as sock:
        sock.sendall(opening)
        got = closed_by_peer(sock)
    assert got in (b"", b"N")  # closed silently, as the server's authentication_timeout does
    assert short_startup_proxy.proc.poll() is None


def test_startup_timeout_during_authentication_closes_both_sides(pg, short_startup_proxy):
    """A client that starts SCRAM and never answers: closed, and so is its upstream connection."""
    tag = "stalled-auth"
    with socket.create_connection(("127.0.0.1", short_startup_proxy.port)) as sock:
        sock.sendall(msg.startup_packet({"user": "scramuser", "database": "postgres", "application_name": tag}))
        got = closed_by_peer(sock)
    assert got[:1] == b"R"  # the server's SASL request came through, then nothing more
    assert wait_for_backends(pg, tag, 0) == 0


def test_startup_timeout_does_not_touch_started_sessions(pg, short_startup_proxy):
    with psycopg.connect(short_startup_proxy.dsn(), autocommit=True) as conn:
        # idle longer than startup_timeout (a lower bound only: slowness cannot make this fail)
        conn.execute("SELECT pg_sleep(1.5)")
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_large_message_before_authentication_is_refused_unread(proxy):
    """A 100 KB SASL response header before authentication: 08P01 at once, without its body being read."""
    with RawClient(proxy.port) as client:
        client.send(msg.startup_packet({"user": "scramuser", "database": "postgres"}))
        kind, _ = client.recv()
        assert kind == codes.B_AUTH
        client.send(b"p" + struct.pack("!i", 100_000) + b"x" * 100)  # the rest is never sent
        replies = client.until_closed()
    assert sqlstates(replies) == ["08P01"]
    assert "before authentication" in msg.parse_error_fields(replies[-1][1])["M"]


def test_large_query_after_authentication_passes(proxy):
    literal = "x" * 200_000
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(f"SELECT length('{literal}')").fetchone() == (200_000,)


def test_max_client_conn_refuses_with_53300(pg, spawn_proxy):
    limited = spawn_proxy(pg.port, 'max_client_conn = 3\n\n[admin]\nusers = ["postgres"]\n')
    held = [psycopg.connect(limited.dsn(), autocommit=True) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError, match="FATAL:  sorry, too many clients already"):
            psycopg.connect(limited.dsn())

        async def asyncpg_connect() -> None:
            await asyncpg.connect(limited.dsn())

        with pytest.raises(asyncpg.TooManyConnectionsError):  # asyncpg maps SQLSTATE 53300 to this class
            asyncio.run(asyncpg_connect())
        with RawClient(limited.port) as client:  # raw: exactly one FATAL, then the close
            client.send(STARTUP)
            replies = client.until_closed()
        assert [msg.parse_error_fields(p) for _, p in replies] == [
            {"S": "FATAL", "V": "FATAL", "C": "53300", "M": "sorry, too many clients already"}]
        with psycopg.connect(limited.dsn(database="pgcutover"), autocommit=True) as console:
            assert console.execute("SHOW CLIENTS").fetchall()  # the operator still gets in
        for conn in held:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in held:
            conn.close()
    with psycopg.connect(limited.dsn(), autocommit=True) as conn:  # slots free again
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_too_many_clients_is_what_a_full_server_sends(spawn_proxy, tmp_path):
    """Differential: a server at max_connections and a proxy at max_client_conn answer the next startup packet
    with the same messages (ErrorResponse fields without the server's source location) and both close."""
    from pgcutover.proxy.embedded import EmbeddedPostgres

    from .test_startup_differential import outcome

    full = EmbeddedPostgres(tmp_path / "full", settings={
        "max_connections": "3", "superuser_reserved_connections": "0", "reserved_connections": "0"}).start()
    try:
        held = [RawClient(full.port) for _ in range(3)]  # the server full
        for client in held:
            client.startup()
        direct = outcome(full.port, [("send", STARTUP)])
        for client in held:
            client.send(msg.TERMINATE)
            client.close()
        end = time.monotonic() + 60
        while True:  # until the server has let those backends go (its slots are what the proxy needs next)
            try:
                if backends(full, "") == 0:
                    break
            except psycopg.OperationalError:
                pass
            assert time.monotonic() < end, "the server kept the closed backends"
            time.sleep(0.1)
        proxy = spawn_proxy(full.port, "max_client_conn = 2\n")  # the proxy full (its follower holds a slot)
        held = [RawClient(proxy.port) for _ in range(2)]
        for client in held:
            client.startup()
        through = outcome(proxy.port, [("send", STARTUP)])
        for client in held:
            client.close()
        assert direct == ([("E", {"S": "FATAL", "V": "FATAL", "C": "53300",
                                  "M": "sorry, too many clients already"})], "closed")
        assert through == direct
        proxy.stop()
    finally:
        full.destroy()
