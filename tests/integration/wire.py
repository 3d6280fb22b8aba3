"""A minimal blocking Postgres client on a raw socket, for tests that must send what no driver would.

Packets are built with proxy.protocol.messages; replies are cut with proxy.protocol.framing. Only trust
authentication is handled: raw-socket tests connect as `postgres`, which pg_hba trusts.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg
from pgcutover.proxy.protocol.framing import MessageReader

Message = tuple[int, bytes]


class Closed(Exception):
    """The peer closed the connection before the expected message arrived."""


@dataclass
class Session:
    """What a startup returned: the key to cancel with, and the server's parameters."""

    pid: int = 0
    secret: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    negotiated: list[Message] = field(default_factory=list)


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = MessageReader()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_byte(self) -> bytes:
        """The single-byte answer to SSLRequest / GSSENCRequest."""
        data = self.sock.recv(1)
        if not data:
            raise Closed("closed instead of answering")
        return data

    def start_tls(self) -> None:
        """After an 'S' answer: wrap the socket (no verification: tests use a self-signed certificate)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        if not data:
            return False
        self.reader.feed(data)
        return True

    def recv(self) -> Message:
        while True:
            item = self.reader.next_message()
            if item is not None:
                return item
            if not self._fill():
                raise Closed("connection closed")

    def until_ready(self) -> list[Message]:
        """Messages up to and including ReadyForQuery."""
        out = []
        while True:
            item = self.recv()
            out.append(item)
            if item[0] == codes.B_READY:
                return out

    def until_closed(self) -> list[Message]:
        """Every message until the peer closes (a FATAL error is followed by the close)."""
        out: list[Message] = []
        while True:
            try:
                out.append(self.recv())
            except Closed:
                return out

    def startup(self, user: str = "postgres", database: str = "postgres",
                version: int = codes.PROTOCOL_3_0, **params: str) -> Session:
        self.send(msg.startup_packet({"user": user, "database": database, **params}, version))
        session = Session()
        for kind, payload in self.until_ready():
            if kind == codes.B_BACKEND_KEY:
                session.pid, session.secret = msg.parse_backend_key_data(payload)
            elif kind == codes.B_PARAM_STATUS:
                name, value = msg.parse_parameter_status(payload)
                session.params[name] = value
            elif kind == codes.B_ERROR:
                raise AssertionError(f"startup failed: {msg.parse_error_fields(payload)}")
            elif kind == codes.B_NEGOTIATE_VERSION:
                session.negotiated.append((kind, payload))
        return session

    def query(self, sql: str) -> list[Message]:
        self.send(msg.query(sql))
        return self.until_ready()


def errors(messages: list[Message]) -> list[dict[str, str]]:
    return [msg.parse_error_fields(payload) for kind, payload in messages if kind == codes.B_ERROR]


def sqlstates(messages: list[Message]) -> list[str]:
    return [fields["C"] for fields in errors(messages)]


def data_rows(messages: list[Message]) -> list[list[bytes | None]]:
    rows = []
    for kind, payload in messages:
        if kind != codes.B_DATA_ROW:
            continue
        (count,) = struct.unpack_from("!h", payload, 0)
        pos, row = 2, []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", payload, pos)
            pos += 4
            row.append(None if size < 0 else payload[pos : pos + size])
            pos += max(size, 0)
        rows.append(row)
    return rows


def typed(kind: bytes, payload: bytes = b"", length: int | None = None) -> bytes:
    """A typed message, optionally with a lying length field."""
    declared = len(payload) + 4 if length is None else length
    return kind + struct.pack("!i", declared) + payload


def untyped(body: bytes, length: int | None = None) -> bytes:
    """An untyped first packet (startup shape), optionally with a lying length field."""
    declared = len(body) + 4 if length is None else length
    return struct.pack("!i", declared) + body
