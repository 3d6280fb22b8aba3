"""Fixtures for the integration suite: the shared `pg` and `proxy` (tests/conftest.py) plus what only these
tests need: direct connections for differential checks, dedicated proxy processes, a malformed-input proxy,
a self-signed certificate, and backend counting in pg_stat_activity.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pgcutover.proxy.embedded import EmbeddedPostgres, free_port
from tests.conftest import ProxyProcess


def backends(pg: EmbeddedPostgres, application_name: str) -> int:
    """Client backends on the server carrying `application_name` (tests tag their connections with it)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND application_name = %s AND pid <> pg_backend_pid()", (application_name,)).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_backends(pg: EmbeddedPostgres, application_name: str, expected: int, deadline: float = 30.0) -> int:
    """Poll until the tagged backend count equals `expected` (or the deadline passes); returns the last count."""
    end = time.monotonic() + deadline
    count = backends(pg, application_name)
    while count != expected and time.monotonic() < end:
        time.sleep(0.1)
        count = backends(pg, application_name)
    return count


def wait_for_active_query(pg: EmbeddedPostgres, application_name: str, deadline: float = 30.0) -> int:
    """Poll until a backend tagged `application_name` is running a query; returns its pid."""
    end = time.monotonic() + deadline
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
                "AND pid <> pg_backend_pid()", (application_name,)).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"no active query from {application_name!r} appeared")


def when_active(pg: EmbeddedPostgres, application_name: str, action: Callable[[], object]) -> threading.Thread:
    """In a thread: wait until the tagged backend is running its query, then call `action` (e.g. a cancel).
    Waiting for the server, rather than a fixed delay, keeps a cancel from landing before the query."""

    def run() -> None:
        wait_for_active_query(pg, application_name)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def proxy_text(upstream_port: int, port: int, metrics_port: int, keys: str = "") -> str:
    return (
        "[proxy]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'upstream = "postgresql://postgres@127.0.0.1:{upstream_port}/postgres?sslmode=disable"\n'
        f'metrics = "127.0.0.1:{metrics_port}"\n'
        "shutdown_timeout = 5\n"
        "connect_timeout = 5\n"
        f"{keys}"
    )


@pytest.fixture
def spawn_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory for a proxy process owned by one test: spawn_proxy(upstream_port, keys="")."""
    started: list[ProxyProcess] = []

    def spawn(upstream_port: int, keys: str = "") -> ProxyProcess:
        port, metrics_port = free_port(), free_port()
        process = ProxyProcess(proxy_text(upstream_port, port, metrics_port, keys), tmp_path, port, metrics_port)
        started.append(process.start())
        return process

    yield spawn
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def strict_proxy(start_proxy) -> ProxyProcess:
    """A proxy with a small max_message_size, for the malformed-input and fuzz tests."""
    return start_proxy(proxy_keys="max_message_size = 65536\n")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate made with the openssl CLI (no extra Python dependency needed)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "server.crt", where / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def tls_proxy(start_proxy, tls_files: tuple[Path, Path]) -> ProxyProcess:
    cert, key = tls_files
    # the embedded server has no TLS: a plaintext upstream must be asked for explicitly (issue 12 item 6)
    return start_proxy(proxy_keys=f'tls_cert = "{cert}"\ntls_key = "{key}"\nupstream_sslmode = "disable"\n')


@pytest.fixture
def direct(pg: EmbeddedPostgres) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection straight to the server, for setup and for checking effects."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        yield conn


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
