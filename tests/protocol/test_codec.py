"""Sans-IO codec: every reader fed its bytes whole, one byte at a time, and with junk after it."""

from __future__ import annotations

import pytest

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as m
from pgcutover.proxy.protocol.framing import FirstPacketReader, MessageReader, split_messages

FIRST_PACKETS = [
    (m.startup_packet({"user": "alice", "database": "db"}), m.Startup),
    (m.startup_packet({"user": "bob"}, codes.PROTOCOL_3_2), m.Startup),
    (m.SSL_REQUEST_PACKET, m.SSLRequest),
    (b"\x00\x00\x00\x08" + (codes.GSSENC_REQUEST).to_bytes(4, "big"), m.GSSEncRequest),
    (m.cancel_request(1234, b"abcd"), m.CancelRequest),
    (m.cancel_request(1234, bytes(range(32))), m.CancelRequest),  # protocol 3.2: long keys
]


def feed_whole(packet: bytes):
    reader = FirstPacketReader()
    reader.feed(packet)
    return reader.next_packet(), reader


def feed_bytewise(packet: bytes):
    reader = FirstPacketReader()
    result = None
    for i in range(len(packet)):
        assert result is None, "a packet came out before its last byte"
        reader.feed(packet[i : i + 1])
        result = reader.next_packet()
    return result, reader


@pytest.mark.parametrize(("packet", "kind"), FIRST_PACKETS)
@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
def test_first_packets(packet: bytes, kind: type, feed) -> None:
    result, reader = feed(packet)
    assert isinstance(result, kind)
    assert reader.take_rest() == b""


@pytest.mark.parametrize(("packet", "kind"), FIRST_PACKETS)
def test_first_packet_with_trailing_junk(packet: bytes, kind: type) -> None:
    result, reader = feed_whole(packet + b"junk!")
    assert isinstance(result, kind)
    assert reader.take_rest() == b"junk!"


def test_startup_fields_are_kept_byte_for_byte() -> None:
    raw = m.startup_packet({"user": "u", "database": "d", "options": "-c search_path=x"}, codes.PROTOCOL_3_2)
    startup, _ = feed_whole(raw)
    assert startup.raw == raw
    assert startup.params == {"user": "u", "database": "d", "options": "-c search_path=x"}
    assert startup.minor == 2


def test_cancel_key_fields() -> None:
    packet, _ = feed_whole(m.cancel_request(77, b"s" * 32))
    assert (packet.pid, packet.secret) == (77, b"s" * 32)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x03abcd",  # length below the minimum
        b"\xff\xff\xff\xff\x00\x03\x00\x00",  # negative length
        b"\x00\x01\x00\x00" + b"\x00" * 4,  # longer than any startup packet may be
        m.cancel_request(1, b"k" * 300),  # cancel key over 256 bytes
        m.cancel_request(1, b""),  # no cancel key at all
    ],
)
def test_first_packets_the_server_refuses_silently(garbage: bytes) -> None:
    reader = FirstPacketReader()
    reader.feed(garbage)
    with pytest.raises(m.StartupRefused):
        reader.next_packet()


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00\x00\x00\x0c\x00\x02\x00\x00user",  # protocol 2
        b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00bob",  # unterminated
        b"\x00\x00\x00\x0d\x00\x03\x00\x00dbx\x00\x00",  # no user
    ],
)
def test_startup_packets_the_server_answers_are_passed_on(packet: bytes) -> None:
    """The server answers these with its own FATAL (in its own format): the session relays them for that."""
    reader = FirstPacketReader()
    reader.feed(packet)
    startup = reader.next_packet()
    assert isinstance(startup, m.Startup) and not startup.valid and startup.raw == packet


def test_startup_length_limit_is_the_servers() -> None:
    """The length counts itself; the body may be 10,000 bytes, so 10,004 is the largest packet."""
    for total, ok in ((10004, True), (10005, False)):
        reader = FirstPacketReader()
        reader.feed((total).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big"))
        if ok:
            assert reader.next_packet() is None  # waits for the rest
        else:
            with pytest.raises(m.StartupRefused):
                reader.next_packet()


STREAM = b"".join([
    m.query("select 1"),
    m.parse_message("s1", "select $1::int", [23]),
    m.bind_message(m.Bind("", "s1", (1,), (b"\x00\x00\x00\x05",), (1,))),
    m.describe("P", ""),
    m.execute(),
    m.SYNC,
    m.TERMINATE,
])


def test_message_reader_whole_bytewise_and_junk() -> None:
    whole = split_messages(STREAM)
    assert [chr(kind) for kind, _ in whole] == list("QPBDESX")
    reader = MessageReader()
    bytewise = []
    for byte in STREAM:
        reader.feed(bytes((byte,)))
        bytewise.extend(reader)
    assert bytewise == whole
    reader = MessageReader()
    reader.feed(STREAM + b"Q\x00\x00")
    assert list(reader) == whole
    assert reader.buffered == 3
    with pytest.raises(m.ProtocolViolation):
        split_messages(STREAM + b"Q\x00\x00")


def test_message_reader_limits() -> None:
    reader = MessageReader(max_size=100, valid_types=codes.FRONTEND_TYPES)
    reader.feed(b"Q" + (101).to_bytes(4, "big"))
    with pytest.raises(m.ProtocolViolation, match="exceeds"):
        reader.next_message()
    reader = MessageReader(valid_types=codes.FRONTEND_TYPES)
    reader.feed(b"z\x00\x00\x00\x04")
    with pytest.raises(m.ProtocolViolation, match="type"):
        reader.next_message()
    reader = MessageReader()
    reader.feed(b"Q\x00\x00\x00\x02")
    with pytest.raises(m.ProtocolViolation, match="length"):
        reader.next_message()


def test_parse_and_bind_round_trip() -> None:
    parse = m.parse_parse(split_messages(m.parse_message("st", "select $1, $2", [23, 25]))[0][1])
    assert parse == m.Parse("st", "select $1, $2", (23, 25))
    bind = m.Bind("portal", "st", (0, 1), (b"abc", None), (1,))
    assert m.parse_bind(split_messages(m.bind_message(bind))[0][1]) == bind
    assert bind.param_format(1) == 1
    assert m.parse_query(split_messages(m.query("select 'é'"))[0][1]) == "select 'é'"


def test_malformed_parse_and_bind() -> None:
    with pytest.raises(m.ProtocolViolation):
        m.parse_parse(b"name-without-terminator")
    with pytest.raises(m.ProtocolViolation):
        m.parse_bind(b"\x00\x00\x00\x01\x00")
    with pytest.raises(m.ProtocolViolation):
        m.parse_query(b"select 1")


def test_error_response_fields() -> None:
    (kind, payload), = split_messages(m.error_response("08P01", "bad", "FATAL", detail="why"))
    assert kind == codes.B_ERROR
    assert m.parse_error_fields(payload) == {"S": "FATAL", "V": "FATAL", "C": "08P01", "M": "bad", "D": "why"}


def test_admin_row_builders() -> None:
    out = split_messages(m.row_description([("name", 25), ("n", 20)]) + m.data_row(["a", None])
                         + m.command_complete("SHOW"))
    assert [chr(k) for k, _ in out] == ["T", "D", "C"]
    assert out[1][1] == b"\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff"
