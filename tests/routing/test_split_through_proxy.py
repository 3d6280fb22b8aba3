"""Similarity queries through the real proxy go to the target the split says, with every driver, while the
split changes between executions of the same prepared statements."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from pgcutover.proxy.embedded import pg_binary

from .conftest import DIMS, set_split

QUERY = "SELECT id, content FROM rt_items ORDER BY embedding <-> $1::vector LIMIT 5"
VECTOR = "[" + ",".join(["0.5"] * DIMS) + "]"


def wait_for_target(dsn: str, target: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(QUERY.replace("$1", "%s"), [VECTOR]).fetchall()
            if {content for _, content in rows} == {target}:
                return
            time.sleep(0.02)
    raise AssertionError(f"queries did not reach {target}")


def direct_ids(pg, table: str) -> list[int]:
    out = pg.psql(f"SELECT id FROM {table} ORDER BY embedding <-> '{VECTOR}' LIMIT 5")
    return [int(x) for x in out.split()]


def test_simple_query_follows_the_split(routed_proxy, routed_tables) -> None:
    psql = [pg_binary("psql"), "-X", "-At", "-d", routed_proxy.dsn(), "-c"]
    literal = QUERY.replace("$1", f"'{VECTOR}'")
    expected = direct_ids(routed_tables, "rt_items")
    for split, target in ((0, "primary"), (100, "shadow"), (0, "primary")):
        set_split(routed_proxy, split)
        wait_for_target(routed_proxy.dsn(), target)
        out = subprocess.run([*psql, literal], capture_output=True, text=True, check=True).stdout
        rows = [line.split("|") for line in out.split()]
        assert [int(i) for i, _ in rows] == expected  # same vectors on both sides: same neighbours
        assert {content for _, content in rows} == {target}


def test_asyncpg_statement_cache_across_split_changes(routed_proxy) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(routed_proxy.dsn())
        try:
            for split, target in ((0, "primary"), (100, "shadow"), (0, "primary"), (100, "shadow")):
                set_split(routed_proxy, split)
                wait_for_target(routed_proxy.dsn(), target)
                for _ in range(3):  # the same cached statement, executed again
                    rows = await conn.fetch(QUERY, VECTOR)
                    assert {r["content"] for r in rows} == {target}
                async with conn.transaction():  # a transaction stays on one target
                    first = await conn.fetch(QUERY, VECTOR)
                    second = await conn.fetch(QUERY, VECTOR)
                    assert {r["content"] for r in first + second} == {target}
        finally:
            await conn.close()
            set_split(routed_proxy, 0)

    asyncio.run(main())


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_prepared_and_pipeline_across_split_changes(routed_proxy, binary: bool) -> None:
    query = QUERY.replace("$1", "%s")
    with psycopg.connect(routed_proxy.dsn(), autocommit=True) as conn:
        for split, target in ((0, "primary"), (100, "shadow"), (0, "primary")):
            set_split(routed_proxy, split)
            wait_for_target(routed_proxy.dsn(), target)
            cur = conn.cursor(binary=binary)
            for _ in range(3):
                rows = cur.execute(query, [VECTOR], prepare=True).fetchall()
                assert {content for _, content in rows} == {target}
            with conn.pipeline():
                first = conn.cursor(binary=binary).execute(query, [VECTOR], prepare=True)
                plain = conn.cursor(binary=binary).execute("SELECT 41 + 1")
                second = conn.cursor(binary=binary).execute(query, [VECTOR])
            assert {c for _, c in first.fetchall() + second.fetchall()} == {target}
            assert plain.fetchone() == (42,)
    set_split(routed_proxy, 0)


def test_pgbench_prepared_while_split_changes(routed_proxy, tmp_path) -> None:
    script = tmp_path / "knn.sql"
    script.write_text(f"SELECT id, content FROM rt_items ORDER BY embedding <-> '{VECTOR}' LIMIT 5;\n")
    stop = threading.Event()

    def flip() -> None:
        split = 0
        while not stop.is_set():
            split = 100 - split
            set_split(routed_proxy, split)
            time.sleep(0.3)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        out = subprocess.run(
            [pg_binary("pgbench"), "-n", "-M", "prepared", "-c", "4", "-T", "4", "-f", str(script),
             "-h", "127.0.0.1", "-p", str(routed_proxy.port), "-U", "postgres", "postgres"],
            capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        flipper.join()
        set_split(routed_proxy, 0)
    assert out.returncode == 0, out.stderr
    processed = int(re.search(r"actually processed: (\d+)", out.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    assert processed > 0 and (failed is None or int(failed.group(1)) == 0), out.stdout
