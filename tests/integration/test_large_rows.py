"""Rows of 50 MB through the proxy: bytea and text values written and read back with asyncpg and psycopg
(text and binary), a 50 MB COPY row in both directions, and a 50 MB simple-query literal. Values are
compared by hash."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from pgcutover.proxy.protocol import messages as msg

from .conftest import rss_kib
from .wire import RawClient, data_rows, sqlstates

SIZE = 50 * 1024 * 1024


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@pytest.fixture(scope="module")
def big_bytes() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture(scope="module")
def big_text() -> str:
    return os.urandom(SIZE // 2).hex()  # 50 MB of ASCII


@pytest.fixture
def big_table(pg) -> Iterator[str]:
    pg.psql("DROP TABLE IF EXISTS big_rows; CREATE TABLE big_rows (id int PRIMARY KEY, b bytea, t text); "
            "ALTER TABLE big_rows ALTER COLUMN b SET STORAGE EXTERNAL, ALTER COLUMN t SET STORAGE EXTERNAL")
    yield "big_rows"
    pg.psql("DROP TABLE big_rows")


def test_asyncpg_50mb_values(proxy, big_table, big_bytes, big_text):
    async def scenario() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        try:
            await conn.execute(f"INSERT INTO {big_table} VALUES (1, $1, $2)", big_bytes, big_text)
            row = await conn.fetchrow(f"SELECT b, t, sha256(b) AS server_sha FROM {big_table} WHERE id = 1")
            assert sha(row["b"]) == sha(big_bytes) == row["server_sha"].hex()
            assert sha(row["t"]) == sha(big_text)
            records = [(2, big_bytes, None)]
            assert await conn.copy_records_to_table(big_table, records=records) == "COPY 1"  # binary COPY
            assert await conn.fetchval(f"SELECT sha256(b) FROM {big_table} WHERE id = 2") == row["server_sha"]
            assert await conn.fetchval("SELECT 'small after big'") == "small after big"
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_psycopg_50mb_values_text_and_binary(proxy, big_table, big_bytes, big_text):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {big_table} VALUES (3, %s, %s)", (big_bytes, big_text))
        text_row = conn.execute(f"SELECT b, t FROM {big_table} WHERE id = 3").fetchone()
        assert text_row is not None
        assert sha(text_row[0]) == sha(big_bytes)  # bytea in text: 100 MB of hex on the wire
        assert sha(text_row[1]) == sha(big_text)
        binary_row = conn.cursor(binary=True).execute(f"SELECT b, t FROM {big_table} WHERE id = 3").fetchone()
        assert binary_row is not None
        assert sha(binary_row[0]) == sha(big_bytes)
        assert sha(binary_row[1]) == sha(big_text)


def test_copy_of_a_50mb_row(proxy, big_table, big_text):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy(f"COPY {big_table} (id, t) FROM STDIN") as copy:
            copy.write_row((4, big_text))
        with cur.copy(f"COPY (SELECT t FROM {big_table} WHERE id = 4) TO STDOUT") as copy:
            out = b"".join(bytes(block) for block in copy)
        assert out == big_text.encode() + b"\n"
        with cur.copy(f"COPY (SELECT id, t FROM {big_table} WHERE id = 4) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            rows = list(copy.rows())
        assert len(rows) == 1 and sha(rows[0][1]) == sha(big_text)


def test_50mb_simple_query_literal(proxy, big_text):
    with RawClient(proxy.port, timeout=60) as client:
        client.startup()
        replies = client.query(f"SELECT md5('{big_text}'), length('{big_text[:10]}')")
        assert sqlstates(replies) == []
        assert data_rows(replies) == [[hashlib.md5(big_text.encode()).hexdigest().encode(), b"10"]]
        client.send(msg.query("SELECT 1"))
        assert data_rows(client.until_ready()) == [[b"1"]]
    assert proxy.proc is not None
    assert rss_kib(proxy.proc.pid) < 300 * 1024  # large messages are streamed, not accumulated
