"""A dead or restarting upstream: clients get 08006 (or the server's own 57P01/57P02), the proxy process keeps
running, and it serves new connections as soon as the server is back.

The restart tests use an EmbeddedPostgres of their own: stopping or crashing the shared `pg` would disturb
every other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgcutover.proxy.embedded import EmbeddedPostgres, free_port

from .conftest import wait_for_active_query
from .wire import RawClient, sqlstates


def asyncpg_failure(dsn: str) -> tuple[str, str | None, str]:
    async def attempt() -> tuple[str, str | None, str]:
        try:
            conn = await asyncpg.connect(dsn, timeout=30)
        except asyncpg.PostgresError as exc:
            return type(exc).__name__, exc.sqlstate, str(exc)
        await conn.close()
        raise AssertionError("connected to a dead upstream")

    return asyncio.run(attempt())


def raw_startup_errors(port: int) -> list[str]:
    from pgcutover.proxy.protocol import messages as msg

    with RawClient(port) as client:
        client.send(msg.startup_packet({"user": "postgres", "database": "postgres"}))
        return sqlstates(client.until_closed())


def readyz(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dead_upstream(spawn_proxy):
    proxy = spawn_proxy(free_port())  # nothing listens there
    for _ in range(3):
        name, sqlstate, text = asyncpg_failure(proxy.dsn())
        assert (name, sqlstate) == ("ConnectionFailureError", "08006"), text
        assert raw_startup_errors(proxy.port) == ["08006"]
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(proxy.dsn())
        assert "pgcutover" in str(caught.value)
    assert proxy.proc is not None and proxy.proc.poll() is None
    assert readyz(proxy.metrics_port) == 503


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "own" / "data").start()
    yield server
    server.destroy()


class Sleeper(threading.Thread):
    """A client running a long query in the background; records how it ended."""

    def __init__(self, dsn: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tag = dsn, tag
        self.error: BaseException | None = None
        self.notices: list[str | None] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name=self.tag, autocommit=True) as conn:
                conn.add_notice_handler(lambda diag: self.notices.append(diag.message_primary))
                conn.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            self.error = exc


def start_sleeper(server: EmbeddedPostgres, dsn: str, tag: str) -> tuple[Sleeper, int]:
    sleeper = Sleeper(dsn, tag)
    sleeper.start()
    return sleeper, wait_for_active_query(server, tag)


def wait_until_connectable(dsn: str, deadline: float = 60.0) -> psycopg.Connection:
    end = time.monotonic() + deadline
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_restarting_upstream(own_pg: EmbeddedPostgres, spawn_proxy):
    proxy = spawn_proxy(own_pg.port)
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    sleeper, _ = start_sleeper(own_pg, proxy.dsn(), "restart-sleeper")

    own_pg.stop("fast")
    sleeper.join(30)
    assert isinstance(sleeper.error, errors.AdminShutdown), repr(sleeper.error)
    assert sleeper.error.sqlstate == "57P01"
    with pytest.raises(psycopg.OperationalError):  # the idle session was ended too
        idle.execute("SELECT 1")
    idle.close()

    name, sqlstate, _ = asyncpg_failure(proxy.dsn())  # while the server is down
    assert (name, sqlstate) == ("ConnectionFailureError", "08006")
    assert raw_startup_errors(proxy.port) == ["08006"]
    assert proxy.proc is not None and proxy.proc.poll() is None

    own_pg.start()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'back'").fetchone() == ("back",)
    assert proxy.proc.poll() is None


def test_upstream_backend_killed(own_pg: EmbeddedPostgres, spawn_proxy):
    """A backend that dies without a word: its client gets the proxy's 08006 (directly, libpq reports a lost
    connection without SQLSTATE). The others get the server's crash warning, then the same 08006. After
    crash recovery the same proxy serves new connections."""
    proxy = spawn_proxy(own_pg.port)
    victim, victim_pid = start_sleeper(own_pg, proxy.dsn(), "killed-sleeper")
    bystander, _ = start_sleeper(own_pg, proxy.dsn(), "bystander-sleeper")

    os.kill(victim_pid, signal.SIGKILL)
    victim.join(30)
    bystander.join(30)
    assert isinstance(victim.error, psycopg.OperationalError), repr(victim.error)
    assert victim.error.sqlstate == "08006", repr(victim.error)
    assert isinstance(bystander.error, psycopg.OperationalError), repr(bystander.error)
    assert bystander.error.sqlstate == "08006", repr(bystander.error)
    assert bystander.notices == ["terminating connection because of crash of another server process"]

    with wait_until_connectable(proxy.dsn()) as conn:
        assert conn.execute("SELECT 'recovered'").fetchone() == ("recovered",)
    assert proxy.proc is not None and proxy.proc.poll() is None
