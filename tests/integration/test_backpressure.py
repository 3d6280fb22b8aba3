"""Flow control: a client that stops reading a huge result must not make the proxy buffer it. The proxy
pauses reading the server while the client's socket is full, so its memory stays bounded; once the client
reads again, every byte arrives."""

from __future__ import annotations

import socket
import time

from pgcutover.proxy.protocol import messages as msg

from .conftest import rss_kib
from .wire import RawClient

ROWS, WIDTH = 200_000, 2000  # ~400 MB of DataRows
RSS_LIMIT_KIB = 200 * 1024


def test_slow_reader_does_not_balloon_the_proxy(proxy):
    assert proxy.proc is not None
    with RawClient(proxy.port, timeout=60) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.startup()
        client.send(msg.query(f"SELECT repeat('x', {WIDTH}) FROM generate_series(1, {ROWS})"))
        peak = 0
        end = time.monotonic() + 2  # give an unbounded buffer time to grow; nothing is read meanwhile
        while time.monotonic() < end:
            peak = max(peak, rss_kib(proxy.proc.pid))
            time.sleep(0.1)
        assert peak < RSS_LIMIT_KIB
        received = 0
        tail = b""
        while not tail.endswith(b"Z\0\0\0\x05I"):
            chunk = client.sock.recv(1 << 20)
            assert chunk, "connection closed before the result ended"
            received += len(chunk)
            tail = (tail + chunk)[-16:]
    row_bytes = 1 + 4 + 2 + 4 + WIDTH
    assert received > ROWS * row_bytes
    assert rss_kib(proxy.proc.pid) < RSS_LIMIT_KIB
