"""Unauthenticated clients cannot make the proxy grow: RSS under pre-authentication attacks, in one run.

    python bench/preauth.py [--sockets 400] [--mb 64]

Against one pgcutover process in front of an embedded PostgreSQL (SCRAM for the attacking role), it measures
the proxy's RSS idle (the anchor), then while `--sockets` connections each
  1. stay silent, 2. send half a startup packet, 3. start SCRAM and then stream a `--mb` MB SASL response,
  4. send a startup packet and then a `--mb` MB Query before authenticating,
and prints each RSS against the anchor, and how many of the attackers' sockets the proxy closed (the
oversized ones must all be closed with 08P01 before their bodies are read). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_pgcutover, stop
from pgcutover.proxy.embedded import EmbeddedPostgres
from pgcutover.proxy.protocol import messages as msg

HBA = ("local all all trust", "host all scram_bench 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 trust")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def attack(port: int, count: int, opening: bytes, stream_mb: int) -> tuple[list[socket.socket], int]:
    """Open `count` sockets, send `opening`, then try to stream `stream_mb` MB; returns (sockets, closed)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(opening)
        socks.append(sock)
    closed = 0
    chunk = b"x" * (1 << 16)
    for sock in socks:
        sock.setblocking(False)
        sent = 0
        try:
            while sent < stream_mb << 20:
                sent += sock.send(chunk)
        except (BlockingIOError, ConnectionResetError, BrokenPipeError):
            pass
    time.sleep(1.0)
    for sock in socks:
        try:
            while sock.recv(65536):
                pass
            closed += 1
        except BlockingIOError:
            pass
        except (ConnectionResetError, OSError):
            closed += 1
    return socks, closed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=400)
    parser.add_argument("--mb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", hba=HBA).start()
        proxy = None
        try:
            pg.psql("CREATE ROLE scram_bench LOGIN PASSWORD 'x'")
            pg.psql("ALTER SYSTEM SET max_connections = 1000")
            pg.restart()
            proxy, port, _ = start_pgcutover(Path(tmp), pg.port, "max_client_conn = 5000\n")
            anchor = rss_mib(proxy.pid)
            print(f"proxy RSS idle: {anchor:.1f} MiB (anchor)")
            scram_start = msg.startup_packet({"user": "scram_bench", "database": "postgres"})
            trust_start = msg.startup_packet({"user": "postgres", "database": "postgres"})
            header = struct.pack("!i", (args.mb << 20) + 4)
            cases = {
                "silent": (b"", 0),
                "half a startup packet": (scram_start[:9], 0),
                f"SCRAM started, {args.mb} MB SASL response": (scram_start + b"p" + header, args.mb),
                f"startup, {args.mb} MB Query before auth": (trust_start + b"Q" + header, args.mb),
            }
            for name, (opening, mb) in cases.items():
                socks, closed = attack(port, args.sockets, opening, mb)
                rss = rss_mib(proxy.pid)
                print(f"{name:45s} RSS {rss:7.1f} MiB = {rss / anchor:5.2f}x idle; "
                      f"closed by the proxy: {closed}/{len(socks)}")
                for sock in socks:
                    sock.close()
                time.sleep(0.5)
        finally:
            stop(proxy)
            pg.destroy()


if __name__ == "__main__":
    main()
