"""A reload that adds routes to a proxy started without them: the services the new routes need (the router, the
fallback store, the mirror and the breaker) are built then, not only at start (proxy/services.py)."""

from __future__ import annotations

import signal
import time

import psycopg

from .conftest import ROUTE_TOML, set_split
from .test_split_through_proxy import wait_for_target

LEGACY_ROUTE = """
[[route]]
table = "public.rl_docs"
column = "embedding"
vector_column = "embedding_vector"
legacy_column = "embedding"
legacy_format = "json"
dims = 3
"""


def test_reload_adds_routes_and_their_services(pg, start_proxy, routed_tables) -> None:
    pg.psql("DROP TABLE IF EXISTS rl_docs; "
            "CREATE TABLE rl_docs (id bigint PRIMARY KEY, embedding text, embedding_vector vector(3));"
            "INSERT INTO rl_docs VALUES (1, '[1,2,3]', NULL), (2, '[3,2,1]', '[3,2,1]');")
    proxy = start_proxy()  # no routes: no router, no fallback, no mirror, no breaker
    base = proxy.config_path.read_text()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # pass-through: the pgvector column is empty
        assert conn.execute("SELECT id FROM rl_docs ORDER BY embedding_vector <-> '[1,2,3]' LIMIT 1").fetchall() \
            == [(2,)]
    proxy.config_path.write_text(base + ROUTE_TOML.format(sticky="query") + LEGACY_ROUTE)
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.02)
    # the router built by the reload routes the similarity queries of the new shadow route
    set_split(proxy, 100)
    wait_for_target(proxy.dsn(), "shadow")
    set_split(proxy, 0)
    wait_for_target(proxy.dsn(), "primary")
    # the fallback store built by the reload answers over all rows: row 1 has only its legacy vector
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT id FROM rl_docs ORDER BY embedding <-> '[1,2,3]' LIMIT 1").fetchall() == [(1,)]
    assert "Traceback" not in proxy.log()
