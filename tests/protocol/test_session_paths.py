"""The session's two byte paths, driven with plain byte strings (no sockets, no server).

Whatever the chunking, what comes out must be exactly what went in, except for what the proxy owns:
replies to injected messages (dropped).
"""

from __future__ import annotations

import asyncio
import random

from pgcutover.core.config import parse_config
from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as m
from pgcutover.proxy.protocol.framing import split_messages
from pgcutover.proxy.protocol.replies import DROP, PARSE
from pgcutover.proxy.runtime import Runtime
from pgcutover.proxy.session import ACTIVE, Session


class RecordingTransport:
    """Stands in for an asyncio transport: records writes and closing. The session is the unit under test."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None

    @property
    def data(self) -> bytes:
        return b"".join(self.written)


def make_session(max_message_size: int = 1 << 20) -> tuple[Session, RecordingTransport, RecordingTransport]:
    config = parse_config({"proxy": {"upstream": "postgresql://u@127.0.0.1:5432/db",
                                     "max_message_size": max_message_size}})
    session = Session(Runtime(config))
    client, server = RecordingTransport(), RecordingTransport()

    async def connect() -> None:  # the session arms its startup timer on the running loop
        session.client_connected(client)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(connect())
    loop.close()
    session.server_transport = server  # type: ignore[assignment]
    session._to_server = server.write
    session.state = ACTIVE
    session._startup_done()  # as after the first ReadyForQuery: the configured message limit applies
    return session, client, server


CLIENT_STREAM = b"".join([
    m.query("select 1"),
    m.parse_message("s1", "select $1::int", [23]),
    m.bind_message(m.Bind("", "s1", (1,), (b"\x00\x00\x00\x05",), (1,))),
    m.describe("P", ""),
    m.execute(),
    m.SYNC,
    m.FLUSH,
    m.message(b"d", b"x" * 3000),  # CopyData
    m.message(b"c"),
])

SERVER_STREAM = b"".join([
    m.row_description([("a", 23)]),
    *[m.data_row([str(i)]) for i in range(200)],
    m.command_complete("SELECT 200"),
    m.ready_for_query(),
    m.parameter_status("application_name", "app"),
    m.message(b"N", b"SNOTICE\0C00000\0Mhi\0\0"),
    m.message(b"A", b"\x00\x00\x00\x01chan\0payload\0"),
])


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def test_client_stream_is_forwarded_unchanged_whole_and_in_any_chunking() -> None:
    rng = random.Random(7)
    for sizes in ([len(CLIENT_STREAM)], [1], [2, 3, 5], [rng.randint(1, 400) for _ in range(50)]):
        session, _, server = make_session()
        for chunk in chunked(CLIENT_STREAM, sizes):
            session.client_data(chunk)
        assert server.data == CLIENT_STREAM
        assert session.tracker.kinds() == ["QUERY", "PARSE", "BIND", "DESCRIBE_PORTAL", "EXECUTE", "SYNC",
                                           "COPY_END"][: len(session.tracker.kinds())]


def test_whole_buffers_are_forwarded_as_the_same_object() -> None:
    session, _, server = make_session()
    data = m.query("select 1") + m.query("select 2")
    session.client_data(data)
    assert len(server.written) == 1 and server.written[0] == data


def test_large_message_is_streamed_not_held() -> None:
    session, _, server = make_session(max_message_size=1 << 24)
    big = m.bind_message(m.Bind("", "", (), (b"v" * 5_000_000,), ()))
    for chunk in chunked(big, [65536]):
        session.client_data(chunk)
    assert server.data == big
    assert len(server.written) > 10  # went out as it came in
    assert not session._cpend


def test_server_stream_is_forwarded_unchanged_in_any_chunking() -> None:
    for sizes in ([len(SERVER_STREAM)], [1], [3, 7], [4096]):
        session, client, _ = make_session()
        session.tracker.expect_client(codes.F_QUERY)
        for chunk in chunked(SERVER_STREAM, sizes):
            session.server_data(chunk)
        assert client.data == SERVER_STREAM
        assert session.tracker.idle
        assert session.server_params["application_name"] == "app"


def test_backend_key_is_passed_unchanged() -> None:
    """The client holds the server's own key (3.0's 4 bytes, 3.2's longer secret); the session keeps a copy
    for the cancels the proxy sends itself."""
    for secret in (b"abcd", bytes(range(32)), bytes(range(256))):
        session, client, _ = make_session()
        startup = m.message(b"R", b"\x00\x00\x00\x00") + m.backend_key_data(4242, secret) + m.ready_for_query()
        for chunk in chunked(startup, [1]):
            session.server_data(chunk)
        assert client.data == startup
        assert session.key is not None and (session.key.pid, session.key.secret) == (4242, secret)


def test_replies_to_injected_messages_are_dropped() -> None:
    session, client, _ = make_session()
    session.client_data(m.parse_message("a", "select 1"))
    session.tracker.expect(PARSE, DROP)
    session.client_data(m.SYNC)
    reply = m.message(b"1") + m.message(b"1") + m.ready_for_query()
    for chunk in chunked(reply, [1]):
        session.server_data(chunk)
    assert client.data == m.message(b"1") + m.ready_for_query()


def test_unknown_message_type_is_a_protocol_violation() -> None:
    session, client, server = make_session()
    session.client_data(m.query("select 1") + b"z\x00\x00\x00\x04")
    assert server.data == m.query("select 1") or server.data == b""
    (kind, payload), = split_messages(client.data)
    assert kind == codes.B_ERROR and m.parse_error_fields(payload)["C"] == "08P01"
    assert client.closed and server.closed


def test_oversized_and_short_lengths_are_protocol_violations() -> None:
    for bad in (b"Q" + (2 << 20).to_bytes(4, "big"), b"Q\x00\x00\x00\x02", b"Q\xff\xff\xff\xf0"):
        session, client, _ = make_session()
        session.client_data(bad)
        (_, payload), = split_messages(client.data)
        assert m.parse_error_fields(payload)["C"] == "08P01"
        assert client.closed


def test_transaction_status_follows_ready_for_query() -> None:
    session, _, _ = make_session()
    session.tracker.expect_client(codes.F_QUERY)
    session.server_data(m.command_complete("BEGIN") + m.ready_for_query(codes.TX_IN_BLOCK))
    assert session.tx_status == codes.TX_IN_BLOCK and not session.idle
    session.tracker.expect_client(codes.F_QUERY)
    session.server_data(m.command_complete("COMMIT") + m.ready_for_query(codes.TX_IDLE))
    assert session.idle
