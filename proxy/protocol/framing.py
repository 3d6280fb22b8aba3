"""Framing: cutting a byte stream into Postgres messages, without sockets.

Two readers, because the protocol has two kinds of packets: the untyped first packets (startup, SSL/GSS
requests, cancel), and typed messages afterwards (one type byte, an Int32 length that counts itself).
The sessions' hot loops walk typed headers inline for speed; `MessageReader` is the general-purpose form
used where a whole message is needed (admin console, tests, the slow path).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from . import codes
from .messages import FirstPacket, ProtocolViolation, StartupRefused, parse_first_packet

_I32 = struct.Struct("!i")


class FirstPacketReader:
    """Accumulates bytes until one untyped packet is complete; refuses lengths the server would refuse.

    The length counts itself; the server refuses a body shorter than the 4-byte code or longer than
    MAX_STARTUP_PACKET (10,000), so at most 10,004 bytes are ever buffered here."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_packet(self) -> FirstPacket | None:
        if len(self._buf) < 4:
            return None
        (length,) = _I32.unpack_from(self._buf, 0)
        if not 4 <= length - 4 <= codes.MAX_STARTUP_PACKET:
            raise StartupRefused("invalid length of startup packet")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[:length])
        del self._buf[:length]
        return parse_first_packet(packet)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_rest(self) -> bytes:
        """Bytes after the startup packet (a client that pipelines its first query)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class MessageReader:
    """Typed messages out of a stream: feed bytes, take (type, payload) pairs. Enforces a maximum size."""

    __slots__ = ("_buf", "_max", "_types")

    def __init__(self, max_size: int = 1 << 30, valid_types: frozenset[int] | None = None) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._types = valid_types

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            item = self.next_message()
            if item is None:
                return
            yield item

    def next_message(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        kind = buf[0]
        (length,) = _I32.unpack_from(buf, 1)
        check_header(kind, length, self._max, self._types)
        if len(buf) < 1 + length:
            return None
        payload = bytes(buf[5 : 1 + length])
        del buf[: 1 + length]
        return kind, payload

    @property
    def buffered(self) -> int:
        return len(self._buf)


def check_header(kind: int, length: int, max_size: int, valid_types: frozenset[int] | None) -> None:
    if valid_types is not None and kind not in valid_types:
        raise ProtocolViolation(f"invalid frontend message type {kind}")
    if length < 4:
        raise ProtocolViolation(f"invalid message length {length}")
    if length > max_size:
        raise ProtocolViolation(f"message of {length} bytes exceeds the maximum of {max_size}")


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    """All complete messages in `data` (trailing partial bytes are an error): for tests and admin replies."""
    reader = MessageReader()
    reader.feed(data)
    out = list(reader)
    if reader.buffered:
        raise ProtocolViolation("trailing partial message")
    return out
