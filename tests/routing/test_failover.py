"""Failover of a single query (issue 7, item 4): a shadow that is gone does not fail client queries outside
transactions; they are re-run on the primary. Inside a transaction the client gets the error."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest

from pgcutover.proxy.embedded import pg_binary

from .conftest import set_split
from .test_split_through_proxy import QUERY, VECTOR, wait_for_target


@pytest.fixture
def shadow_gone(routed_proxy, routed_tables):
    set_split(routed_proxy, 100)
    wait_for_target(routed_proxy.dsn(), "shadow")
    routed_tables.psql("ALTER TABLE rt_shadow.rt_items RENAME TO rt_items_away")
    yield routed_proxy
    routed_tables.psql("ALTER TABLE rt_shadow.rt_items_away RENAME TO rt_items")
    set_split(routed_proxy, 0)


def test_simple_query_fails_over(shadow_gone) -> None:
    literal = QUERY.replace("$1", f"'{VECTOR}'")
    out = subprocess.run([pg_binary("psql"), "-X", "-At", "-d", shadow_gone.dsn(), "-c", literal, "-c", "SELECT 1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(line.split("|")[1] for line in out.stdout.split()[:5]) == {"primary"}


def test_extended_and_prepared_statements_fail_over(shadow_gone) -> None:
    query = QUERY.replace("$1", "%s")
    with psycopg.connect(shadow_gone.dsn(), autocommit=True) as conn:
        for prepare in (False, True, True):
            rows = conn.execute(query, [VECTOR], prepare=prepare).fetchall()
            assert {c for _, c in rows} == {"primary"}
        with conn.pipeline():
            first = conn.execute(query, [VECTOR])
        assert {c for _, c in first.fetchall()} == {"primary"}
        assert conn.execute("SELECT 2").fetchone() == (2,)  # the session is in step after it all


def test_asyncpg_statement_cache_fails_over(shadow_gone) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(shadow_gone.dsn())
        try:
            for _ in range(3):
                rows = await conn.fetch(QUERY, VECTOR)
                assert {r["content"] for r in rows} == {"primary"}
        finally:
            await conn.close()

    asyncio.run(main())


def test_inside_a_transaction_the_client_gets_the_error(shadow_gone) -> None:
    with psycopg.connect(shadow_gone.dsn()) as conn:  # psycopg opens a transaction
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute(QUERY.replace("$1", "%s"), [VECTOR]).fetchall()
