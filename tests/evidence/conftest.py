"""A database of its own for the evidence tests (its `pgcutover` schema is not the other suites'), with a
primary table and shadows of known quality: a faithful copy, and one behind a deliberately coarse IVFFlat
index (lists = 50, probes = 1) whose top-k misses many true neighbours."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pgcutover.core.config import Config, parse_config
from pgcutover.proxy.runtime import Runtime
from pgcutover.proxy.services import make_router

DATABASE = "evidence"
DIMS = 16
ROWS = 2000
APP_ROLE = "ev_app"  # the application role the mirrored requests come from (no superuser)
MIRROR_ROLE = "ev_mirror"  # [proxy] mirror_user: no privileges of its own, member of ev_app (NOINHERIT)
TABLES = ("ev_good", "ev_bad", "ev_slow", "ev_gone", "ev_writes", "ev_report", "ev_breaker")


def route_toml(table: str, shadow: str, **keys: object) -> dict[str, object]:
    route: dict[str, object] = {"table": f"public.{table}", "column": "embedding", "key": "id",
                                "shadow_table": shadow, "shadow_column": "embedding", "sticky": "query",
                                "min_samples": 30, "min_recall": 0.9, "max_latency_ratio": 3.0,
                                "max_error_rate": 0.05}
    route.update(keys)
    return route


def make_config(pg, routes: list[dict[str, object]], port: int = 6999) -> Config:
    return parse_config({
        "proxy": {"listen": f"127.0.0.1:{port}", "metrics": "",
                  "upstream": f"postgresql://postgres@127.0.0.1:{pg.port}/{DATABASE}?sslmode=disable",
                  "mirror_user": MIRROR_ROLE},
        "route": routes,
    })


async def make_runtime(config: Config) -> Runtime:
    """A Runtime with the router and catalog serve() would build."""
    runtime = Runtime(config)
    attach(runtime, router=await make_router(config))
    return runtime


def attach(runtime: Runtime, **services: Any) -> None:
    """Give a test's own service (a Mirror, a Breaker) to the runtime, as ServiceSupervisor does in serve()."""
    runtime.services = replace(runtime.services, **services)


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32)


def vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


@pytest.fixture(scope="session")
def evidence_db(pg) -> Iterator[object]:
    pg.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg.psql(f"CREATE DATABASE {DATABASE}")
    asyncio.run(_load(pg))
    yield pg


async def _load(pg) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn(database=DATABASE))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector; CREATE SCHEMA good; CREATE SCHEMA bad;"
                           "CREATE SCHEMA slow")
        rows = [(i + 1, f"row {i + 1}", vector_text(v)) for i, v in enumerate(vectors(ROWS, seed=7))]
        for table in TABLES:
            await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, content text, "
                               f"uid uuid DEFAULT gen_random_uuid(), embedding vector({DIMS}))")
            await conn.executemany(f"INSERT INTO {table} (id, content, embedding) VALUES ($1, $2, $3::vector)",
                                   rows)
            await conn.execute(f"CREATE INDEX ON {table} USING hnsw (embedding vector_l2_ops)")
        for schema in ("good", "bad"):
            await conn.execute(f"CREATE TABLE {schema}.items (LIKE ev_good INCLUDING ALL)")
            await conn.execute(f"INSERT INTO {schema}.items SELECT * FROM ev_good")
        await conn.execute("DROP INDEX good.items_embedding_idx")
        await conn.execute("CREATE INDEX ON good.items USING hnsw (embedding vector_l2_ops)")
        # the bad shadow: every probe reads one of 50 lists, so a top-10 misses most true neighbours
        await conn.execute("DROP INDEX bad.items_embedding_idx")
        await conn.execute("CREATE INDEX ON bad.items USING ivfflat (embedding vector_l2_ops) WITH (lists = 50)")
        # the slow shadow: right answers, each row it reads costs a millisecond
        await conn.execute("CREATE FUNCTION slow.pause() RETURNS boolean VOLATILE LANGUAGE sql "
                           "AS 'SELECT pg_sleep(0.001) IS NOT NULL'")
        await conn.execute("CREATE VIEW slow.items AS SELECT * FROM ev_slow WHERE slow.pause()")
        await conn.execute("ANALYZE")
        # the roles SECURITY.md asks for: the app reads its tables and the shadows; the mirror role only SETs ROLE
        await conn.execute(f"""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} LOGIN; END IF;
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MIRROR_ROLE}') THEN
                CREATE ROLE {MIRROR_ROLE} LOGIN NOINHERIT; END IF;
            END $$;
            GRANT {APP_ROLE} TO {MIRROR_ROLE};
            GRANT USAGE ON SCHEMA good, bad, slow TO {APP_ROLE};
            GRANT SELECT ON ALL TABLES IN SCHEMA public, good, bad, slow TO {APP_ROLE};""")
    finally:
        await conn.close()
