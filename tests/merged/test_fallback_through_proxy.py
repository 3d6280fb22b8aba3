"""Issue 4 through the real proxy: a similarity query on a partly migrated table gets the exact top-k over
pgvector rows and legacy-only rows, with every driver, and stays exact while rows migrate, change and vanish.
Ground truth is numpy brute force over all rows, computed here independently. No ANN index: exact scans."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import asyncpg
import numpy as np
import psycopg
import pytest

from pgcutover.proxy.embedded import pg_binary
from pgcutover.proxy.vectors import Vector
from tests.routing.conftest import cli

DIMS = 16
ROWS = 3000
OPS = {"l2": "<->", "cosine": "<=>", "ip": "<#>"}

ROUTE = """
[[route]]
table = "public.fb_chunks"
column = "embedding"
key = "id"
vector_column = "embedding_vector"
legacy_column = "embedding"
legacy_format = "json"
dims = 16
"""


@pytest.fixture(scope="module")
def chunks(pg):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    pg.psql("DROP TABLE IF EXISTS fb_chunks; CREATE TABLE fb_chunks (id bigint PRIMARY KEY, tag int NOT NULL, "
            f"content text, embedding text, embedding_vector vector({DIMS}))")
    lines = "".join(f"{i}\t{i % 100}\tchunk {i}\t{json.dumps([round(float(x), 6) for x in v])}\n"
                    for i, v in enumerate(vectors, start=1))
    subprocess.run([pg_binary("psql"), "-X", "-q", "-d", pg.dsn(), "-c",
                    "COPY fb_chunks (id, tag, content, embedding) FROM STDIN"], input=lines, text=True, check=True)
    return pg


@pytest.fixture(scope="module")
def proxy(start_proxy, chunks):
    proxy = start_proxy(ROUTE)
    assert cli("install-triggers", "--route", "fb_chunks", proxy=proxy).returncode == 0  # change notices
    return proxy


def migrate(pg, fraction: float) -> None:
    """Rows 1..n have their vector (as a backfill would write it), the rest are legacy-only."""
    n = int(ROWS * fraction)
    pg.psql(f"UPDATE fb_chunks SET embedding_vector = NULL WHERE id > {n} AND embedding_vector IS NOT NULL;"
            f"UPDATE fb_chunks SET embedding_vector = embedding::vector WHERE id <= {n} "
            "AND embedding_vector IS NULL")


def truth(pg, query: np.ndarray, metric: str, k: int, offset: int = 0, tag: int | None = None) -> list[int]:
    rows = pg.psql("SELECT id, tag, coalesce(embedding_vector::text, embedding) FROM fb_chunks ORDER BY id")
    ids, vectors = [], []
    for line in rows.split("\n"):
        if line:
            id_, tag_, vec = line.split("|")
            if tag is None or int(tag_) == tag:
                ids.append(int(id_))
                vectors.append(json.loads(vec))
    x = np.asarray(vectors, dtype=np.float64)
    q = query.astype(np.float64)
    if metric == "l2":
        d = np.sqrt(((x - q) ** 2).sum(axis=1))
    elif metric == "cosine":
        d = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    else:
        d = -(x @ q)
    order = np.argsort(d, kind="stable")
    return [ids[i] for i in order[offset : offset + k]]


def wait_for_store(proxy, pg, query: np.ndarray) -> None:
    """Notices are applied asynchronously: wait until an answer matches the truth (a deadline, not a timing)."""
    deadline = time.monotonic() + 30
    want = truth(pg, query, "l2", 5)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            got = [r[0] for r in conn.execute(
                "SELECT id FROM fb_chunks ORDER BY embedding <-> %s LIMIT 5", [Vector(query).to_text()]).fetchall()]
            if got == want:
                return
            time.sleep(0.1)
    raise AssertionError("the fallback store did not catch up")


@pytest.mark.parametrize("fraction", [0.0, 0.005, 0.5, 1.0])
def test_exact_top_k_at_every_stage_of_the_migration(proxy, chunks, fraction: float) -> None:
    migrate(chunks, fraction)
    rng = np.random.default_rng(int(fraction * 1000))
    queries = rng.standard_normal((3, DIMS)).astype(np.float32)
    wait_for_store(proxy, chunks, queries[0])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for q in queries:
            literal = Vector(q).to_text()
            for metric, op in OPS.items():
                sql = f"SELECT id, content FROM fb_chunks ORDER BY embedding {op} '{literal}' LIMIT 10"
                rows = conn.execute(sql).fetchall()  # a literal in a simple Query
                assert [r[0] for r in rows] == truth(chunks, q, metric, 10), (metric, fraction)
                assert all(content == f"chunk {id_}" for id_, content in rows)  # the columns asked for
                filtered = conn.execute(
                    f"SELECT id FROM fb_chunks WHERE tag = 7 ORDER BY embedding {op} %s LIMIT 5 OFFSET 2",
                    [literal]).fetchall()  # 1% selective filter, OFFSET, a parameter
                assert [r[0] for r in filtered] == truth(chunks, q, metric, 5, offset=2, tag=7), (metric, fraction)


def test_psql_literal(proxy, chunks) -> None:
    migrate(chunks, 0.005)
    q = np.random.default_rng(11).standard_normal(DIMS).astype(np.float32)
    wait_for_store(proxy, chunks, q)
    sql = f"SELECT id FROM fb_chunks ORDER BY embedding <=> '{Vector(q).to_text()}' LIMIT 7"
    out = subprocess.run([pg_binary("psql"), "-X", "-At", "-d", proxy.dsn(), "-c", sql], capture_output=True,
                         text=True, check=True).stdout
    assert [int(x) for x in out.split()] == truth(chunks, q, "cosine", 7)


def test_asyncpg_named_statement_reused_with_different_vectors(proxy, chunks) -> None:
    migrate(chunks, 0.005)
    rng = np.random.default_rng(12)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        await conn.set_type_codec("vector", encoder=lambda v: Vector(v).to_text(), decoder=Vector.from_text,
                                  format="text")
        try:
            stmt = await conn.prepare("SELECT id, tag FROM fb_chunks ORDER BY embedding <-> $1::vector LIMIT $2")
            assert [a.name for a in stmt.get_attributes()] == ["id", "tag"]
            for _ in range(4):
                q = rng.standard_normal(DIMS).astype(np.float32)
                rows = await stmt.fetch(q, 8)
                assert [r["id"] for r in rows] == truth(chunks, q, "l2", 8)
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_prepared_text_and_binary(proxy, chunks, binary: bool) -> None:
    from pgvector.psycopg import register_vector

    migrate(chunks, 0.5)
    rng = np.random.default_rng(13)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        register_vector(conn)
        wait_for_store(proxy, chunks, rng.standard_normal(DIMS).astype(np.float32))
        cur = conn.cursor(binary=binary)
        for _ in range(3):
            q = rng.standard_normal(DIMS).astype(np.float32)
            rows = cur.execute("SELECT id FROM fb_chunks ORDER BY embedding <=> %b LIMIT 6" if binary else
                               "SELECT id FROM fb_chunks ORDER BY embedding <=> %s LIMIT 6", [q],
                               prepare=True).fetchall()
            assert [r[0] for r in rows] == truth(chunks, q, "cosine", 6)


def test_changes_while_querying_never_give_a_stale_answer(proxy, chunks) -> None:
    migrate(chunks, 0.005)
    q = np.random.default_rng(14).standard_normal(DIMS).astype(np.float32)
    wait_for_store(proxy, chunks, q)
    nearest = truth(chunks, q, "l2", 3)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        def top(k: int = 3) -> list[int]:
            return [r[0] for r in conn.execute("SELECT id FROM fb_chunks ORDER BY embedding <-> %s LIMIT %s",
                                               [Vector(q).to_text(), k]).fetchall()]

        assert top() == nearest
        chunks.psql(f"DELETE FROM fb_chunks WHERE id = {nearest[0]}")  # gone: never returned again
        assert nearest[0] not in top()
        far = json.dumps([100.0] * DIMS)
        chunks.psql(f"UPDATE fb_chunks SET embedding = '{far}' WHERE id = {nearest[1]}")  # moved away
        assert nearest[1] not in top()
        chunks.psql(f"UPDATE fb_chunks SET embedding_vector = embedding::vector WHERE id = {nearest[2]}")
        assert top() == truth(chunks, q, "l2", 3)  # migrated: found once, by its vector
    rows = chunks.psql(f"SELECT count(*) FROM fb_chunks WHERE id = {nearest[0]}")
    assert rows.strip() == "0"
