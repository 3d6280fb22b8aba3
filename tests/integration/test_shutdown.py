"""Graceful shutdown on SIGTERM/SIGINT: stop accepting, let the in-flight query finish, close idle sessions,
exit 0 before shutdown_timeout (5 s in these proxies) plus a margin."""

from __future__ import annotations

import signal
import subprocess
import threading

import psycopg
import pytest

from .conftest import wait_for_active_query, wait_for_backends

SHUTDOWN_TIMEOUT = 5  # as written by spawn_proxy
MARGIN = 10


class InFlight(threading.Thread):
    def __init__(self, dsn: str, tag: str, sql: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tag, self.sql = dsn, tag, sql
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name=self.tag, autocommit=True) as conn:
                self.result = conn.execute(self.sql).fetchone()
        except BaseException as exc:
            self.error = exc


def wait_exit(proxy) -> int:
    assert proxy.proc is not None
    try:
        return proxy.proc.wait(SHUTDOWN_TIMEOUT + MARGIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"proxy still running after SIGTERM:\n{proxy.log()}") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_in_flight_query_completes_and_new_connections_are_refused(pg, spawn_proxy, sig):
    proxy = spawn_proxy(pg.port)
    tag = f"shutdown-{sig.name}"
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    idle.execute("SELECT 1")
    query = InFlight(proxy.dsn(), tag, "SELECT pg_sleep(2), 'finished'")
    query.start()
    wait_for_active_query(pg, tag)

    proxy.signal(sig)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    query.join(SHUTDOWN_TIMEOUT + MARGIN)
    assert query.error is None, repr(query.error)
    assert query.result == ("", "finished")
    with pytest.raises(psycopg.OperationalError):  # idle sessions are closed at once
        idle.execute("SELECT 1")
    idle.close()
    assert wait_exit(proxy) == 0
    assert wait_for_backends(pg, tag, 0) == 0


def test_session_outliving_the_timeout_is_closed(pg, spawn_proxy):
    proxy = spawn_proxy(pg.port)
    tag = "shutdown-too-long"
    query = InFlight(proxy.dsn(), tag, "SELECT pg_sleep(60)")
    query.start()
    wait_for_active_query(pg, tag)
    proxy.signal(signal.SIGTERM)
    assert wait_exit(proxy) == 0
    query.join(MARGIN)
    assert isinstance(query.error, psycopg.OperationalError), repr(query.error)
    assert wait_for_backends(pg, tag, 0) == 0  # the upstream backend does not outlive the proxy


def test_open_transaction_may_finish_before_close(pg, spawn_proxy):
    """A session inside a transaction keeps its connection until the transaction ends (within the timeout)."""
    proxy = spawn_proxy(pg.port)
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")  # transaction open
        proxy.signal(signal.SIGTERM)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        conn.commit()
    assert wait_exit(proxy) == 0
