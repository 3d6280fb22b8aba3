"""A similarity query on a fallback route that the router cannot plan (a self-join, a query vector from a subquery
it cannot resolve) is refused loudly (0A000), never answered from pgvector rows only; a plain query on the route
table that computes no distance still passes through."""

from __future__ import annotations

import psycopg
import pytest

from pgcutover.rewrite.router import MAX_PLAN_SQL
from tests.merged.test_shapes import ROUTE, docs  # noqa: F401  (the module's table fixture)

VECTOR = "'[1,1,1,1,1,1,1,1]'"


@pytest.fixture(scope="module")
def proxy(start_proxy, docs):  # noqa: F811
    return start_proxy(ROUTE)


@pytest.mark.parametrize("sql", [
    f"SELECT a.id FROM sh_docs a JOIN sh_docs b ON a.id = b.id ORDER BY a.embedding <-> {VECTOR} LIMIT 3",
    "SELECT id FROM sh_docs ORDER BY embedding <-> (SELECT embedding FROM sh_docs ORDER BY id LIMIT 1) LIMIT 3",
])
def test_unplanned_similarity_queries_are_refused(proxy, sql: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="route-table-repeated"):
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session stays usable


def test_plain_queries_on_the_route_table_pass_through(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM sh_docs a JOIN sh_docs b ON a.id = b.id").fetchone() == (1200,)
        assert conn.execute("SELECT count(*) FROM sh_docs WHERE embedding IS NULL").fetchone()[0] > 0


def test_similarity_queries_too_large_to_plan_are_refused(proxy) -> None:
    """Above MAX_PLAN_SQL the router does not parse (a CPU bound, issue 12): on a fallback route that must not
    mean an answer from pgvector rows only."""
    padding = "/*" + "x" * (MAX_PLAN_SQL + 1) + "*/"
    sql = f"SELECT id FROM sh_docs {padding} ORDER BY embedding <-> {VECTOR} LIMIT 3"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="too-large"):
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        big_plain = f"SELECT count(*) FROM sh_docs {padding}"  # no distance: still forwarded
        assert conn.execute(big_plain).fetchone() == (1200,)


def test_int8_stores_refuse_the_shapes_that_need_rows(start_proxy, proxy, docs) -> None:  # noqa: F811
    """An int8 store keeps screening codes, not vectors: l1 and shipped-distance shapes are refused loudly, while
    the nearest-first float metrics (screened with proven bounds) still merge exactly."""
    proxy = start_proxy(ROUTE + 'fallback_storage = "int8"\n')
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for sql in (f"SELECT id FROM sh_docs ORDER BY embedding <+> {VECTOR} LIMIT 3",
                    f"SELECT id, row_number() OVER (ORDER BY embedding <-> {VECTOR}) FROM sh_docs LIMIT 3"):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="fallback-storage-int8"):
                conn.execute(sql)
        nearest = f"SELECT id FROM sh_docs ORDER BY embedding <-> {VECTOR}, id LIMIT 5"
        merged = conn.execute(nearest).fetchall()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # the same route with a float32 store
        assert merged == conn.execute(nearest).fetchall()
