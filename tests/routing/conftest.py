"""A routed table and its shadow in the session PostgreSQL, and proxies routing it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Self

import pytest

from tests.conftest import ROOT

DIMS = 8
ROWS = 200

ROUTE_TOML = """
[admin]
users = ["postgres"]

[[route]]
table = "public.rt_items"
column = "embedding"
key = "id"
shadow_table = "rt_shadow.rt_items"
shadow_column = "embedding"
shadow_type = "vector"
split = 0
sticky = "{sticky}"

[[route]]
table = "public.rt_orphan"
column = "embedding"
shadow_table = "rt_missing.rt_orphan"
"""


@pytest.fixture(scope="session")
def routed_tables(pg):
    """Primary and shadow hold the same vectors, with content that says where a row was read from."""
    pg.psql(
        "DROP SCHEMA IF EXISTS rt_shadow CASCADE; DROP TABLE IF EXISTS rt_items, rt_orphan;"
        "CREATE SCHEMA rt_shadow;"
        f"CREATE TABLE rt_items (id bigint PRIMARY KEY, content text, embedding vector({DIMS}));"
        f"CREATE TABLE rt_shadow.rt_items (id bigint PRIMARY KEY, content text, embedding vector({DIMS}));"
        f"CREATE TABLE rt_orphan (id bigint PRIMARY KEY, embedding vector({DIMS}));"
        "SELECT setseed(0.42);"
        f"INSERT INTO rt_items SELECT i, 'primary', (SELECT array_agg(random())::real[]::vector({DIMS}) "
        f"FROM generate_series(1, {DIMS}) WHERE i > 0) FROM generate_series(1, {ROWS}) i;"
        "INSERT INTO rt_shadow.rt_items SELECT id, 'shadow', embedding FROM rt_items;"
    )
    return pg


@pytest.fixture(scope="session")
def routed_proxy(start_proxy, routed_tables):
    return start_proxy(ROUTE_TOML.format(sticky="query"))


def cli(*args: str, proxy) -> subprocess.CompletedProcess:
    """`pgcutover ...` as a user runs it, against the proxy's own config file."""
    return subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", *args, "--config", str(proxy.config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def set_split(proxy, split: float, table: str = "rt_items") -> None:
    result = cli("route", "set", table, "--split", str(split), proxy=proxy)
    assert result.returncode == 0, result.stderr


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll until `predicate()` holds; the test fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


class BackgroundClients:
    """Client threads that run until `stop` is set: `with Load(...) as load:` starts them, leaving joins them.
    Subclasses create `stop` and `threads` in their __init__."""

    stop: threading.Event
    threads: list[threading.Thread]
    join_timeout = 10.0

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.join_timeout)
