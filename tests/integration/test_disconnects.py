"""Terminate and abrupt client disconnects close the upstream connection: no backend is leaked.

Each test tags its connections with an application_name and polls pg_stat_activity (directly on the
server) until the tagged backends are gone; the deadline is generous and nothing about speed is asserted.
Where a backend is kept busy, its sleep is far longer than the deadline, so only the proxy can end it.
"""

from __future__ import annotations

import socket
import struct
import time

import psycopg

from pgcutover.proxy.protocol import messages as msg
from tests.conftest import AUTH_USERS

from .conftest import backends, wait_for_active_query, wait_for_backends
from .wire import RawClient, typed

LONG_SLEEP = "SELECT pg_sleep(120)"
DEADLINE = 30.0


def reset(client: RawClient) -> None:
    """Close with an RST, as a crashed client or a dropped network would."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def raw(proxy, tag: str) -> RawClient:
    client = RawClient(proxy.port)
    client.startup(application_name=tag)
    return client


def test_terminate_closes_backend(pg, proxy):
    tag = "disc-terminate"
    with psycopg.connect(proxy.dsn(), application_name=tag) as conn:
        conn.execute("SELECT 1")
        assert backends(pg, tag) == 1
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_terminate_pipelined_after_query(pg, proxy):
    """Query and Terminate in one packet: the server answers the query, then closes; so must the proxy."""
    tag = "disc-terminate-raw"
    seen = {}
    for name, port in (("direct", pg.port), ("proxy", proxy.port)):
        with RawClient(port) as client:
            client.startup(application_name=tag)
            client.send(msg.query("SELECT 1") + msg.TERMINATE)
            seen[name] = [kind for kind, _ in client.until_closed()]
    assert seen["proxy"] == seen["direct"] == list(b"TDCZ")
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_close_without_terminate_when_idle(pg, proxy):
    tag = "disc-idle-close"
    clients = [raw(proxy, tag) for _ in range(5)]
    for client in clients:
        client.query("SELECT 1")
    assert backends(pg, tag) == 5
    for index, client in enumerate(clients):
        if index % 2:
            reset(client)
        else:
            client.close()
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_abrupt_disconnect_mid_query(pg, proxy):
    tag = "disc-mid-query"
    clients = [raw(proxy, tag) for _ in range(4)]
    for client in clients:
        client.send(msg.query(LONG_SLEEP))
    wait_for_active_query(pg, tag)
    for index, client in enumerate(clients):
        if index % 2:
            reset(client)
        else:
            client.close()
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_abrupt_disconnect_mid_extended_query(pg, proxy):
    tag = "disc-mid-extended"
    client = raw(proxy, tag)
    client.send(msg.parse_message("", LONG_SLEEP) + msg.bind_message(msg.Bind("", "", (), (), ()))
                + msg.execute() + msg.SYNC)
    wait_for_active_query(pg, tag)
    reset(client)
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_disconnect_inside_transaction_rolls_back(pg, proxy, direct):
    tag = "disc-in-tx"
    direct.execute("DROP TABLE IF EXISTS disc_tx; CREATE TABLE disc_tx (id int)")
    client = raw(proxy, tag)
    client.query("BEGIN")
    client.query("INSERT INTO disc_tx VALUES (1)")
    client.close()
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0
    assert direct.execute("SELECT count(*) FROM disc_tx").fetchone() == (0,)
    direct.execute("DROP TABLE disc_tx")


def test_disconnect_during_copy_in(pg, proxy, direct):
    tag = "disc-copy-in"
    direct.execute("DROP TABLE IF EXISTS disc_copy; CREATE TABLE disc_copy (id int)")
    client = raw(proxy, tag)
    client.send(msg.query("COPY disc_copy FROM STDIN"))
    assert client.recv()[0] == ord("G")  # CopyInResponse
    client.send(msg.message(b"d", b"1\n2\n3\n"))
    reset(client)
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0
    assert direct.execute("SELECT count(*) FROM disc_copy").fetchone() == (0,)
    direct.execute("DROP TABLE disc_copy")


def test_disconnect_with_half_a_message_sent(pg, proxy):
    tag = "disc-half-message"
    client = raw(proxy, tag)
    client.send(typed(b"Q", b"SELECT 1", length=1000))  # promises 1000 bytes, sends a few
    client.close()
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def test_disconnect_while_server_streams_results(pg, proxy):
    tag = "disc-streaming"
    client = raw(proxy, tag)
    client.send(msg.query("SELECT g, repeat('x', 200) FROM generate_series(1, 2000000) g"))
    client.recv()  # the result has started
    reset(client)
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0


def _pre_auth_backends(direct: psycopg.Connection) -> int:
    row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                         "AND usename IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def test_disconnect_during_authentication(pg, proxy, direct):
    """A client that leaves while the server waits for its password (md5 and SCRAM)."""
    for user in AUTH_USERS:
        client = RawClient(proxy.port)
        client.send(msg.startup_packet({"user": user, "database": "postgres"}))
        kind, _ = client.recv()
        assert kind == ord("R")  # an authentication request: the backend is waiting for us
        client.close()
    deadline_count = _pre_auth_backends(direct)
    for _ in range(int(DEADLINE * 10)):
        if deadline_count == 0:
            break
        deadline_count = _pre_auth_backends(direct)
        time.sleep(0.1)
    assert deadline_count == 0


def test_many_concurrent_abrupt_disconnects(pg, proxy):
    tag = "disc-many"
    clients = [raw(proxy, tag) for _ in range(30)]
    for index, client in enumerate(clients):
        if index % 3 == 0:
            client.send(msg.query(LONG_SLEEP))
        elif index % 3 == 1:
            client.send(msg.query("BEGIN; SELECT 1"))
    wait_for_active_query(pg, tag)
    for client in clients:
        reset(client)
    assert wait_for_backends(pg, tag, 0, DEADLINE) == 0
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT 'proxy fine'").fetchone() == ("proxy fine",)
