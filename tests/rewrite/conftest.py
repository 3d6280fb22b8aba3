"""Fixtures of the rewrite tests: a database of their own, loaded with tests/rewrite/rewrite_schema.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
import rewrite_schema as schema
from rewrite_db import connect

from pgcutover.rewrite.catalog import Catalog, load_catalog

DATABASE = "pgcutover_rewrite_tests"


async def _setup(admin_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    conn = await connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute(schema.DDL)
        for table, rows in schema.rows().items():
            width = len(rows[0])
            placeholders = ", ".join(f"${i + 1}" for i in range(width))
            await conn.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def corpus_dsn(pg) -> Iterator[str]:
    dsn = pg.dsn(database=DATABASE)
    asyncio.run(_setup(pg.dsn(), dsn))
    yield dsn


@pytest.fixture(scope="session")
def live_catalog(corpus_dsn: str) -> Catalog:
    async def load() -> Catalog:
        conn = await connect(corpus_dsn)
        try:
            return await load_catalog(conn, schema.ROUTES)
        finally:
            await conn.close()

    return asyncio.run(load())


