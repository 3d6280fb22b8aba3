"""Malformed input on raw sockets, each while a well-formed psycopg session beside it keeps working.

After startup, a bad header (length < 4, negative, beyond `max_message_size`, an unknown type) gets a FATAL
ErrorResponse with SQLSTATE 08P01 and the connection is closed. Before startup, the server itself often just
closes (or answers with its own SQLSTATE); the proxy does exactly the same. Each case is also sent to the
server directly, to check that it really is malformed there.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import psycopg
import pytest

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg
from pgcutover.proxy.protocol.framing import split_messages

from .wire import RawClient, sqlstates, typed, untyped

MAX = 65536  # strict_proxy's max_message_size


@pytest.fixture(scope="module")
def guard(strict_proxy) -> Iterator[psycopg.Connection]:
    with psycopg.connect(strict_proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        yield conn


def check_bystander(strict_proxy, guard: psycopg.Connection) -> None:
    assert strict_proxy.proc.poll() is None, strict_proxy.log()
    assert guard.execute("SELECT 'bystander ok'").fetchone() == ("bystander ok",)
    with psycopg.connect(strict_proxy.dsn()) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def read_all_raw(client: RawClient) -> bytes:
    """Everything until the close; the server may answer in a form our reader does not frame (protocol 2)."""
    chunks = []
    while True:
        try:
            chunk = client.sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


AFTER_STARTUP = {
    "length-3": typed(b"Q", b"", length=3),
    "length-0": typed(b"Q", b"", length=0),
    "length-negative": typed(b"P", b"", length=-5),
    "length-min-int": typed(b"B", b"", length=-(2**31)),
    "unknown-type-z": typed(b"z", b"abc"),
    "unknown-type-nul": typed(b"\0", b""),
    "unknown-type-ff": typed(b"\xff", b"\0" * 8),
    "backend-only-type": typed(b"T", b"\0\0"),
    "garbage-after-parse": msg.parse_message("", "SELECT 1") + b"\x01\x02garbage",
    "bad-header-after-valid-query": msg.query("SELECT 1") + typed(b"Q", b"", length=2),
}

OVERSIZED = {
    "oversized-query-header": typed(b"Q", b"SELECT 1", length=MAX + 100)[:20],
    "oversized-copydata": typed(b"d", b"x" * 100, length=10 * MAX),
    "oversized-huge": typed(b"Q", b"", length=2**31 - 1),
}


def _after_startup(port: int, payload: bytes) -> list[tuple[int, bytes]]:
    with RawClient(port) as client:
        client.startup()
        client.send(payload)
        return client.until_closed()


@pytest.mark.parametrize("payload", list(AFTER_STARTUP.values()), ids=list(AFTER_STARTUP))
def test_bad_message_after_startup(pg, strict_proxy, guard, payload: bytes):
    direct = _after_startup(pg.port, payload)
    assert set(sqlstates(direct)) <= {"08P01"}  # the server refuses it too (with 08P01, or by just closing)
    replies = _after_startup(strict_proxy.port, payload)
    errors = [kind for kind, _ in replies if kind == codes.B_ERROR]
    assert sqlstates(replies)[-1:] == ["08P01"], replies
    assert len(errors) == 1 or payload.startswith(b"Q")  # a valid query before it may have its own reply
    assert replies[-1][0] == codes.B_ERROR
    check_bystander(strict_proxy, guard)


@pytest.mark.parametrize("payload", list(OVERSIZED.values()), ids=list(OVERSIZED))
def test_message_beyond_max_message_size(strict_proxy, guard, payload: bytes):
    replies = _after_startup(strict_proxy.port, payload)
    assert sqlstates(replies) == ["08P01"]
    assert "exceeds the maximum" in msg.parse_error_fields(replies[-1][1])["M"]
    check_bystander(strict_proxy, guard)


def test_message_just_under_max_message_size_passes(strict_proxy, guard):
    literal = "x" * (MAX - 100)
    with RawClient(strict_proxy.port) as client:
        client.startup()
        replies = client.query(f"SELECT length('{literal}')")
        assert sqlstates(replies) == []
    check_bystander(strict_proxy, guard)


V3 = struct.pack("!i", codes.PROTOCOL_3_0)
BEFORE_STARTUP = {
    "random-bytes": random.Random(2).randbytes(64),
    "ascii-garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "length-3": untyped(b"", length=3),
    "length-negative": untyped(V3, length=-1),
    "length-huge": untyped(V3, length=1_000_000),
    "protocol-2": untyped(struct.pack("!i", 2 << 16) + b"user\0postgres\0\0"),
    "protocol-4": untyped(struct.pack("!i", 4 << 16) + b"user\0postgres\0\0"),
    "protocol-1234": untyped(struct.pack("!i", 1234 << 16 | 5678) + b"user\0postgres\0\0"),
    "missing-user": untyped(V3 + b"database\0postgres\0\0"),
    "unterminated": untyped(V3 + b"user\0postgres"),
    "odd-parameters": untyped(V3 + b"user\0postgres\0database\0\0"),
    "cancel-too-short": untyped(struct.pack("!ii", codes.CANCEL_REQUEST, 1)),
    "ssl-then-plaintext": untyped(struct.pack("!i", codes.SSL_REQUEST)) + b"\0\0\0\x08junk",
}


@pytest.mark.parametrize("payload", list(BEFORE_STARTUP.values()), ids=list(BEFORE_STARTUP))
def test_garbage_before_startup(pg, strict_proxy, guard, payload: bytes):
    """The proxy answers exactly as the server does (test_startup_differential.py compares field by field);
    here: the same bytes come back, and a bystander session is unaffected."""
    with RawClient(pg.port) as client:
        client.send(payload)
        direct = read_all_raw(client)  # the server closes (with or without a message of its own)
    assert b"R\0\0\0" not in direct[:5]  # it never got as far as authentication
    with RawClient(strict_proxy.port) as client:
        client.send(payload)
        raw = read_all_raw(client)
    if direct.startswith(b"NE") and raw.startswith(b"NE"):  # the proxy's own FATAL carries no source location
        direct_fields = msg.parse_error_fields(split_messages(direct[1:])[0][1])
        proxy_fields = msg.parse_error_fields(split_messages(raw[1:])[0][1])
        assert {k: v for k, v in direct_fields.items() if k not in "FLR"} == proxy_fields
    else:
        assert raw == direct  # relayed from the server, or nothing at all on both
    check_bystander(strict_proxy, guard)
