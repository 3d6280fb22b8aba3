"""Proving the shadow is safe (issue 7) through real proxies: failover and the circuit breaker when the shadow
breaks under load on two replicas, the latency breaker with a slow shadow, and mirrored samples in the report."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from .conftest import DIMS, BackgroundClients, cli, set_split, wait_until

VECTOR = "[" + ",".join(["0.25"] * DIMS) + "]"
QUERY = "SELECT id, content FROM sf_items ORDER BY embedding <-> %s::vector LIMIT 5"

SAFETY_TOML = """
[admin]
users = ["postgres"]

[[route]]
table = "public.sf_items"
column = "embedding"
shadow_table = "{shadow}"
sticky = "query"
mirror = {mirror}
max_error_rate = 0.05
breaker_window_s = 10
breaker_min_samples = 5
min_samples = 5
min_recall = 0.9
"""


@pytest.fixture(scope="module")
def safety_tables(pg):
    pg.psql(
        "DROP SCHEMA IF EXISTS sf_shadow, sf_slow CASCADE; DROP TABLE IF EXISTS sf_items;"
        "CREATE SCHEMA sf_shadow; CREATE SCHEMA sf_slow;"
        f"CREATE TABLE sf_items (id bigint PRIMARY KEY, content text, embedding vector({DIMS}));"
        "SELECT setseed(0.7);"
        f"INSERT INTO sf_items SELECT i, 'primary', (SELECT array_agg(random())::real[]::vector({DIMS}) "
        f"FROM generate_series(1, {DIMS}) WHERE i > 0) FROM generate_series(1, 300) i;"
        f"CREATE TABLE sf_shadow.sf_items (id bigint PRIMARY KEY, content text, embedding vector({DIMS}));"
        "INSERT INTO sf_shadow.sf_items SELECT id, 'shadow', embedding FROM sf_items;"
        # a shadow that answers right, slowly: every row it reads costs a millisecond
        "CREATE VIEW sf_slow.sf_items AS SELECT id, 'shadow' AS content, embedding FROM sf_items "
        "WHERE pg_sleep(0.001) IS NOT NULL;"
    )
    return pg


class Clients(BackgroundClients):
    """Several clients outside transactions, back to back, counting failures."""

    def __init__(self, dsns: list[str]) -> None:
        self.stop = threading.Event()
        self.answers: list[str] = []
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(dsn,), daemon=True) for dsn in dsns for _ in (0, 1)]

    def _run(self, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    rows = conn.execute(QUERY, [VECTOR], prepare=True).fetchall()
                    self.answers.append(rows[0][1])
                    time.sleep(0.005)
        except BaseException as exc:
            self.failures.append(exc)



def route_split(proxy) -> float:
    listing = json.loads(cli("route", "list", "--json", proxy=proxy).stdout)
    return next(r["split"] for r in listing["routes"] if r["table"] == "public.sf_items")


def admin_split(proxy) -> float:
    """What the proxy process itself has in force (its admin console), not only the shared table."""
    with psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True) as conn:
        rows = conn.execute("SHOW ROUTES").fetchall()
    return next(float(r[5]) for r in rows if r[0] == "public.sf_items")


def test_broken_shadow_under_load_fails_over_and_trips_on_both_replicas(start_proxy, safety_tables) -> None:
    toml = SAFETY_TOML.format(shadow="sf_shadow.sf_items", mirror=0)
    first, second = start_proxy(toml), start_proxy(toml)
    set_split(first, 50, "sf_items")
    with Clients([first.dsn(), second.dsn()]) as clients:
        wait_until(lambda: {"primary", "shadow"} <= set(clients.answers))
        safety_tables.psql("ALTER TABLE sf_shadow.sf_items RENAME TO sf_items_gone")
        try:
            wait_until(lambda: route_split(first) == 0, timeout=30)
            wait_until(lambda: admin_split(first) == 0 and admin_split(second) == 0, timeout=5)
            served = len(clients.answers)
            wait_until(lambda: len(clients.answers) > served + 20)
        finally:
            safety_tables.psql("ALTER TABLE sf_shadow.sf_items_gone RENAME TO sf_items")
    assert not clients.failures, clients.failures[:3]  # every query outside a transaction was answered
    history = cli("route", "history", "sf_items", proxy=first).stdout
    assert "circuit breaker" in history and "error rate" in history, history


def test_slow_shadow_trips_the_latency_breaker(start_proxy, safety_tables) -> None:
    proxy = start_proxy(SAFETY_TOML.format(shadow="sf_slow.sf_items", mirror=0))
    set_split(proxy, 50, "sf_items")
    with Clients([proxy.dsn()]) as clients:
        wait_until(lambda: route_split(proxy) == 0, timeout=60)
    assert not clients.failures, clients.failures[:3]
    history = cli("route", "history", "sf_items", proxy=proxy).stdout
    assert "shadow p95" in history and "primary p95" in history, history


def test_mirrored_samples_reach_the_report(start_proxy, safety_tables) -> None:
    # mirrored statements run as the client (here postgres) through a role that may only SET ROLE (issue 12)
    safety_tables.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sf_mirror') THEN "
                       "CREATE ROLE sf_mirror LOGIN NOINHERIT; END IF; END $$; GRANT postgres TO sf_mirror")
    proxy = start_proxy(SAFETY_TOML.format(shadow="sf_shadow.sf_items", mirror=100),
                        proxy_keys='mirror_user = "sf_mirror"\n')
    set_split(proxy, 0, "sf_items")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(20):
            assert conn.execute(QUERY, [VECTOR]).fetchall()[0][1] == "primary"
        conn.execute("INSERT INTO sf_items VALUES (100000, 'w', NULL)")  # not a similarity query: never mirrored
        conn.execute("DELETE FROM sf_items WHERE id = 100000")

    def report() -> dict:
        out = cli("report", "--route", "sf_items", "--json", proxy=proxy)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # the samples reach the report; the verdict may still wait for more (a sequential verdict: see evidence.py)
    wait_until(lambda: report()["routes"][0]["samples"] >= 5, timeout=30)
    (route,) = report()["routes"]
    assert route["verdict"].split(":")[0] in ("ready", "not ready", "insufficient data"), route["verdict"]
    assert safety_tables.psql("SELECT count(*) FROM sf_shadow.sf_items WHERE id = 100000").strip() == "0"
