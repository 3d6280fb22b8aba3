"""Hypothesis-driven fuzzing of the frontend message stream on raw sockets.

Thousands of malformed streams: random typed messages (valid and invalid types, true and lying lengths,
random payloads, cut anywhere) after a valid startup, and random first packets before one. Each stream
ends with a half-close, and the proxy must close the connection (no hang). Afterwards the proxy is alive,
a well-formed client that ran beside the fuzzing still works, no backend is left behind, and the proxy's
memory stays bounded.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg

from .conftest import rss_kib, wait_for_backends

TAG = "fuzz"
READ_TIMEOUT = 5.0
RSS_LIMIT_KIB = 300 * 1024
FUZZ_SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                         print_blob=True)

FRONTEND_LETTERS = sorted(codes.FRONTEND_TYPES)
STARTUP = msg.startup_packet({"user": "postgres", "database": "postgres", "application_name": TAG})

lengths = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-8, max_value=16),
    st.sampled_from([65536, 65537, 65540, 2**31 - 1, -(2**31)]),
)


@st.composite
def typed_message(draw: st.DrawFn) -> bytes:
    kind = draw(st.one_of(st.sampled_from(FRONTEND_LETTERS), st.integers(0, 255)))
    payload = draw(st.binary(max_size=48))
    length = len(payload) + 4 if draw(st.booleans()) else draw(lengths)
    return bytes([kind]) + struct.pack("!i", length) + payload


@st.composite
def plausible_message(draw: st.DrawFn) -> bytes:
    """Well-formed frames the server itself must judge: odd SQL, broken Parse/Bind bodies, stray Syncs."""
    return draw(st.sampled_from([
        msg.query(draw(st.text(max_size=24))),
        msg.parse_message(draw(st.text(max_size=8)), "SELECT $1::int"),
        msg.message(b"B", draw(st.binary(max_size=24))),
        msg.message(b"D", draw(st.sampled_from([b"S", b"P", b"X"])) + b"\0"),
        msg.execute(draw(st.text(max_size=4)), draw(st.integers(-3, 3))),
        msg.SYNC, msg.FLUSH, msg.message(b"d", b"1\n"), msg.message(b"c"), msg.message(b"f", b"x\0"),
        msg.message(b"F", draw(st.binary(max_size=16))), msg.message(b"p", draw(st.binary(max_size=16))),
        msg.close("S", ""),
    ]))


after_startup_streams = st.tuples(
    st.lists(st.one_of(typed_message(), plausible_message()), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=64),  # how many bytes to cut off the end
).map(lambda parts: b"".join(parts[0])[: max(1, len(b"".join(parts[0])) - parts[1])])


@st.composite
def first_packet(draw: st.DrawFn) -> bytes:
    code = draw(st.one_of(
        st.sampled_from([codes.PROTOCOL_3_0, codes.PROTOCOL_3_2, codes.SSL_REQUEST, codes.GSSENC_REQUEST,
                         codes.CANCEL_REQUEST, 2 << 16, 4 << 16]),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ))
    body = struct.pack("!i", code) + draw(st.binary(max_size=48))
    length = len(body) + 4 if draw(st.booleans()) else draw(lengths)
    return struct.pack("!i", length) + body


before_startup_streams = st.one_of(
    st.binary(min_size=1, max_size=96),
    first_packet(),
    st.tuples(first_packet(), first_packet()).map(b"".join),
)


def converse(port: int, preamble: bytes, stream: bytes) -> None:
    """Send, half-close, and read until the proxy closes; a proxy that hangs fails the example."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        if preamble:
            sock.sendall(preamble)
            _read_until_ready(sock)
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # the proxy already hung up on us
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"the proxy did not close after {stream!r}") from None


def _read_until_ready(sock: socket.socket) -> None:
    data = b""
    while not data.endswith(b"Z\0\0\0\x05I"):
        chunk = sock.recv(65536)
        assert chunk, "startup through the proxy failed"
        data += chunk


@pytest.fixture(scope="module")
def bystander(strict_proxy) -> Iterator[psycopg.Connection]:
    with psycopg.connect(strict_proxy.dsn(), autocommit=True, application_name="fuzz-bystander") as conn:
        conn.execute("CREATE TEMP TABLE seen (n int)")
        yield conn


def _bystander_step(conn: psycopg.Connection, counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] % 50 == 0:
        conn.execute("INSERT INTO seen VALUES (%s)", (counter[0],), prepare=True)


def test_fuzz_after_startup(pg, strict_proxy, bystander):
    counter = [0]
    bystander.execute("TRUNCATE seen")

    @settings(FUZZ_SETTINGS, max_examples=1200)
    @given(after_startup_streams)
    def fuzz(stream: bytes) -> None:
        converse(strict_proxy.port, STARTUP, stream)
        _bystander_step(bystander, counter)

    fuzz()
    _check_survivors(pg, strict_proxy, bystander, counter[0])


def test_fuzz_before_startup(pg, strict_proxy, bystander):
    counter = [0]
    bystander.execute("TRUNCATE seen")

    @settings(FUZZ_SETTINGS, max_examples=1500)
    @given(before_startup_streams)
    def fuzz(stream: bytes) -> None:
        converse(strict_proxy.port, b"", stream)
        _bystander_step(bystander, counter)

    fuzz()
    _check_survivors(pg, strict_proxy, bystander, counter[0])


def _check_survivors(pg, strict_proxy, bystander: psycopg.Connection, examples: int) -> None:
    assert examples >= 1000
    assert strict_proxy.proc.poll() is None, strict_proxy.log()
    rows = bystander.execute("SELECT count(*) FROM seen").fetchone()
    assert rows == (examples // 50,)
    with psycopg.connect(strict_proxy.dsn()) as fresh:
        assert fresh.execute("SELECT 'after the fuzz'").fetchone() == ("after the fuzz",)
    assert rss_kib(strict_proxy.proc.pid) < RSS_LIMIT_KIB
    assert "Traceback" not in strict_proxy.log()  # no handler blew up (asyncio would only log it)
    assert wait_for_backends(pg, TAG, 0) == 0
