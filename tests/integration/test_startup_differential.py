"""Pre-startup and startup behaviour, differential: the same byte script against PostgreSQL 18 directly and
through the proxy, comparing what comes back and whether/when the connection closes.

A script is a list of steps (send bytes, read the one-byte SSL/GSS answer, half-close). After the last step
everything is read until the peer closes or a ReadyForQuery arrives, so no case depends on a timer: a
connection that must stay open proves it by completing a startup. ErrorResponses are compared field by
field without F/L/R (the server's source file, line and function: the proxy cannot know them when it
speaks for itself; where the server's own answer is relayed they match too). BackendKeyData is compared
by length (each connection has its own key).
"""

from __future__ import annotations

import random
import socket
import struct

import pytest

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg
from pgcutover.proxy.protocol.framing import MessageReader

from .wire import untyped

I32 = struct.Struct("!i")
V3 = I32.pack(codes.PROTOCOL_3_0)
SSL = msg.SSL_REQUEST_PACKET
GSS = I32.pack(8) + I32.pack(codes.GSSENC_REQUEST)
STARTUP = msg.startup_packet({"user": "postgres", "database": "postgres", "application_name": "differential"})
TERMINATE = b"X\0\0\0\x04"

Step = tuple  # ("send", bytes) | ("byte",) read the 1-byte SSL/GSS answer | ("eof",) shut down our side


def send(data: bytes) -> Step:
    return ("send", data)


BYTE: Step = ("byte",)
EOF: Step = ("eof",)


def big_startup(total: int) -> bytes:
    """A valid startup packet of exactly `total` bytes (a custom option carries the padding)."""
    base = msg.startup_packet({"user": "postgres", "database": "postgres", "x.pad": ""})
    return msg.startup_packet({"user": "postgres", "database": "postgres", "x.pad": "p" * (total - len(base))})


def startup_version(major: int, minor: int) -> bytes:
    return untyped(I32.pack(major << 16 | minor) + b"user\0postgres\0database\0postgres\0\0")


SCRIPTS: dict[str, list[Step]] = {
    "eof-before-any-byte": [EOF],
    "terminate-first": [send(TERMINATE)],
    "terminate-first-then-eof": [send(TERMINATE), EOF],
    "garbage-http": [send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
    "garbage-random": [send(random.Random(7).randbytes(64))],
    "partial-length-then-eof": [send(b"\0\0"), EOF],
    "truncated-then-eof": [send(STARTUP[:-3]), EOF],
    "truncated-then-rest": [send(STARTUP[:11]), send(STARTUP[11:])],
    "length-7": [send(untyped(b"abc", length=7))],
    "length-negative": [send(untyped(V3, length=-1))],
    "largest-accepted-length": [send(big_startup(10004))],
    "oversized-length": [send(big_startup(10005))],
    "oversized-length-huge": [send(untyped(V3, length=1_000_000))],
    "protocol-2.0": [send(startup_version(2, 0))],
    "protocol-4.0": [send(startup_version(4, 0))],
    "protocol-7.7": [send(startup_version(7, 7))],
    "protocol-3.99": [send(startup_version(3, 99))],
    "missing-user": [send(untyped(V3 + b"database\0postgres\0\0"))],
    "unterminated-layout": [send(untyped(V3 + b"user\0postgres"))],
    "ssl-twice": [send(SSL), BYTE, send(SSL)],
    "gssenc-twice": [send(GSS), BYTE, send(GSS)],
    "ssl-then-gssenc-then-startup": [send(SSL), BYTE, send(GSS), BYTE, send(STARTUP)],
    "gssenc-then-ssl-then-startup": [send(GSS), BYTE, send(SSL), BYTE, send(STARTUP)],
    "ssl-gssenc-ssl-startup": [send(SSL), BYTE, send(GSS), BYTE, send(SSL), BYTE, send(STARTUP)],
    "gssenc-ssl-gssenc-gssenc": [send(GSS), BYTE, send(SSL), BYTE, send(GSS), BYTE, send(GSS)],
    "ssl-then-eof": [send(SSL), BYTE, EOF],
    "ssl-with-plaintext-behind": [send(SSL + STARTUP), BYTE],
    "gssenc-with-plaintext-behind": [send(GSS + STARTUP), BYTE],
    "cancel-bad-key": [send(msg.cancel_request(123456, b"\x01\x02\x03\x04"))],
    "cancel-bad-key-long": [send(msg.cancel_request(123456, bytes(32)))],
    "cancel-pid-0": [send(msg.cancel_request(0, b"\x01\x02\x03\x04"))],
    "cancel-empty-key": [send(msg.cancel_request(123456, b""))],
    "cancel-key-too-long": [send(msg.cancel_request(123456, bytes(257)))],
    "cancel-then-bytes": [send(msg.cancel_request(123456, b"abcd") + STARTUP)],
    "terminate-after-startup": [send(STARTUP + TERMINATE)],
}


def outcome(port: int, script: list[Step]) -> tuple[list[object], str]:
    """What came back (answers and normalized messages) and how it ended: 'closed' or 'ready'."""
    got: list[object] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for step in script:
            if step[0] == "send":
                try:
                    sock.sendall(step[1])
                except (BrokenPipeError, ConnectionResetError):
                    break
            elif step[0] == "byte":
                got.append(("answer", sock.recv(1)))
            else:
                sock.shutdown(socket.SHUT_WR)
        reader = MessageReader()
        raw = b""  # set when the reply is not protocol 3 (a 2.0 client gets a 2.0-style error)
        while True:
            try:
                for kind, payload in reader:
                    got.append(normalize(kind, payload))
                    if kind == codes.B_READY:
                        return got, "ready"
            except msg.ProtocolViolation:
                raw = bytes(reader._buf)
                reader = MessageReader()
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                if raw or reader.buffered:
                    got.append(("raw", raw + bytes(reader._buf)))
                return got, "closed"
            if raw:
                raw += data
            else:
                reader.feed(data)


def normalize(kind: int, payload: bytes) -> object:
    if kind in (codes.B_ERROR, codes.B_NOTICE):
        fields = msg.parse_error_fields(payload)
        return chr(kind), {k: v for k, v in fields.items() if k not in "FLR"}
    if kind == codes.B_BACKEND_KEY:
        return "K", len(payload)
    return chr(kind), payload


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_startup_script_same_as_server(pg, proxy, name: str):
    script = SCRIPTS[name]
    direct = outcome(pg.port, script)
    through = outcome(proxy.port, script)
    assert through == direct, f"direct: {direct}\nproxy:  {through}"
    assert proxy.proc.poll() is None
