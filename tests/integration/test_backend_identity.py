"""Backend identity, differential: through the proxy a client sees the same backend pid as the server's own
`pg_backend_pid()`, so everything keyed by it behaves as on a direct connection: NotificationResponse pids,
`pg_terminate_backend` / `pg_cancel_backend` on its own pid, pool health checks after a terminate.

Each scenario runs against the server directly and through the proxy, and must come out the same.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg_pool import ConnectionPool

from .conftest import when_active

TARGETS = ["direct", "proxy"]


def dsn_for(target: str, pg, proxy) -> str:
    return pg.dsn() if target == "direct" else proxy.dsn()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_psycopg_backend_pid_is_the_servers(pg, proxy, target: str, protocol: str):
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True, max_protocol_version=protocol) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row == (conn.info.backend_pid,)


@pytest.mark.parametrize("target", TARGETS)
def test_asyncpg_server_pid_is_the_servers(pg, proxy, target: str):
    async def scenario() -> None:
        conn = await asyncpg.connect(dsn_for(target, pg, proxy))
        try:
            assert await conn.fetchval("SELECT pg_backend_pid()") == conn.get_server_pid()
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("target", TARGETS)
def test_notification_from_own_backend_carries_own_pid(pg, proxy, target: str):
    """The classic "skip my own notifications" check: notify.pid == conn.info.backend_pid."""
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True) as conn, \
            psycopg.connect(pg.dsn(), autocommit=True) as other:
        conn.execute("LISTEN identity_check")
        conn.execute("NOTIFY identity_check, 'mine'")
        other.execute("NOTIFY identity_check, 'theirs'")
        got = []
        for notify in conn.notifies(timeout=10, stop_after=2):
            got.append((notify.payload, notify.pid == conn.info.backend_pid))
        assert sorted(got) == [("mine", True), ("theirs", False)]


@pytest.mark.parametrize("target", TARGETS)
def test_asyncpg_listener_sees_own_pid(pg, proxy, target: str):
    async def scenario() -> None:
        conn = await asyncpg.connect(dsn_for(target, pg, proxy))
        try:
            got: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
            await conn.add_listener("identity_apg", lambda _c, pid, _ch, payload: got.put_nowait((pid, payload)))
            await conn.execute("NOTIFY identity_apg, 'mine'")
            pid, payload = await asyncio.wait_for(got.get(), 10)
            assert (pid, payload) == (conn.get_server_pid(), "mine")
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("target", TARGETS)
def test_psycopg_terminate_own_backend(pg, proxy, target: str):
    """pg_terminate_backend(own pid) ends the session with 57P01, and the connection is seen closed."""
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True) as conn:
        with pytest.raises(errors.AdminShutdown) as caught:
            conn.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        assert caught.value.sqlstate == "57P01"
        assert conn.closed or conn.broken


@pytest.mark.parametrize("target", TARGETS)
def test_psycopg_terminated_from_elsewhere_by_its_pid(pg, proxy, direct, target: str):
    """Another session terminates this one by the pid the driver reports: it really dies."""
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert direct.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.broken


@pytest.mark.parametrize("target", TARGETS)
def test_asyncpg_terminate_own_backend(pg, proxy, target: str):
    async def scenario() -> None:
        conn = await asyncpg.connect(dsn_for(target, pg, proxy))
        try:
            # asyncpg reports the server's FATAL 57P01 as "connection was closed in the middle of operation:
            # <its message>", on a direct connection too (asyncpg 0.29, the declared floor, leaves the message out)
            with pytest.raises(asyncpg.ConnectionDoesNotExistError,
                               match=r"terminating connection due to administrator command|in the middle of operation"):
                await conn.execute(f"SELECT pg_terminate_backend({conn.get_server_pid()})")
            assert conn.is_closed()
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("target", TARGETS)
def test_pool_check_replaces_a_terminated_connection(pg, proxy, direct, target: str):
    """psycopg_pool's check finds the terminated connection dead and hands out a fresh, working one."""
    with ConnectionPool(dsn_for(target, pg, proxy), min_size=1, max_size=1, open=True,
                        check=ConnectionPool.check_connection, kwargs={"autocommit": True}) as pool:
        with pool.connection() as conn:
            victim = conn.info.backend_pid
        assert direct.execute("SELECT pg_terminate_backend(%s, 10000)", (victim,)).fetchone() == (True,)
        with pool.connection() as conn:
            (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert pid == conn.info.backend_pid != victim


@pytest.mark.parametrize("target", TARGETS)
def test_pg_cancel_backend_by_reported_pid(pg, proxy, direct, target: str):
    """A long query is cancelled by pg_cancel_backend() on the pid the driver reports: 57014."""
    tag = f"identity-cancel-{target}"
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True, application_name=tag) as conn:
        pid = conn.info.backend_pid
        timer = when_active(pg, tag, lambda: direct.execute("SELECT pg_cancel_backend(%s)", (pid,)))
        with pytest.raises(errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert caught.value.sqlstate == "57014"
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


@pytest.mark.parametrize("target", TARGETS)
def test_driver_cancel_during_sleep(pg, proxy, target: str):
    """The driver's own cancel (a CancelRequest relayed to the server as received): 57014."""
    tag = f"identity-driver-cancel-{target}"
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True, application_name=tag) as conn:
        timer = when_active(pg, tag, conn.cancel_safe)
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)
