"""Benchmark (not a test): backfill throughput and the per-write cost of the triggers, on a private PostgreSQL.

    python bench/backfill.py [--rows 200000] [--dims 1536] [--workers 2] [--batch 1000] [--writes 3000]

Starts its own EmbeddedPostgres (PostgreSQL 18 + pgvector) in a temporary directory, loads a seed-shaped table
`article_chunks` with JSON TEXT embeddings, and prints, all measured in this one run:

1. anchor: how fast one backend parses the JSON TEXT into vectors (`SELECT count(embedding::vector(N))`), the
   server-side work a backfill cannot avoid;
2. the backfill (`deploy.backfill.backfill`, triggers installed) in rows/s while a light write load runs
   beside it (one writer inserting and updating rows at ~50 statements/s), as absolute rows/s and as a ratio to
   the anchor; target >= 10,000 rows/s at 1536 dims (the seed's script did ~14 rows/s);
3. the SQL decoder for little-endian float32 bytea (what dual write and backfill use for bytea_f32), rows/s;
4. the latency one write pays for the triggers: single-row INSERT and UPDATE (legacy value, other column) on
   a table without triggers, with dual write + notices, and with shadow sync added; target <= 2x plain.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgcutover.core.config import parse_config  # noqa: E402
from pgcutover.deploy.backfill import BackfillOptions, backfill  # noqa: E402
from pgcutover.deploy.triggers import install, uninstall  # noqa: E402
from pgcutover.proxy.embedded import EmbeddedPostgres  # noqa: E402

POOL = 2000  # distinct vectors; rows reuse them (the compressed TOAST value is copied, so loading is fast)


def config_for(pg: EmbeddedPostgres, table: str, dims: int, shadow: str | None = None):
    route = {"table": table, "column": "embedding", "vector_column": "embedding_vector",
             "legacy_column": "embedding", "legacy_format": "json", "dims": dims}
    if shadow:
        route["shadow_table"] = shadow
    return parse_config({"proxy": {"upstream": pg.dsn() + "?sslmode=disable", "metrics": ""}, "route": [route]})


async def load(conn: asyncpg.Connection, rows: int, dims: int) -> float:
    started = time.perf_counter()
    await conn.execute(f"""
        CREATE TABLE pool AS
        SELECT p AS id, (SELECT array_agg(round((random() - 0.5)::numeric, 8)::real)::real[]::vector({dims})::text
                         FROM generate_series(1, {dims}) WHERE p >= 0) AS txt
        FROM generate_series(0, {POOL - 1}) p;
        CREATE TABLE article_chunks (id bigint PRIMARY KEY, chunk_text text, embedding text,
                                     embedding_vector vector({dims}));
        CREATE TABLE chunks_template (LIKE article_chunks INCLUDING ALL);
    """)
    step = 50_000
    for lo in range(1, rows + 1, step):
        await conn.execute(
            "INSERT INTO article_chunks (id, chunk_text, embedding) SELECT i, 'chunk ' || i, txt "
            "FROM generate_series($1::bigint, $2::bigint) i JOIN pool ON pool.id = i % $3",
            lo, min(lo + step - 1, rows), POOL,
        )
    # 0.5% already migrated, as in the seed
    await conn.execute("UPDATE article_chunks SET embedding_vector = embedding::vector WHERE id % 200 = 0")
    await conn.execute("VACUUM ANALYZE article_chunks")
    return time.perf_counter() - started


async def parse_anchor(conn: asyncpg.Connection, dims: int, sample: int) -> float:
    started = time.perf_counter()
    await conn.fetchval(f"SELECT count(embedding::vector({dims})) FROM article_chunks WHERE id <= $1", sample)
    return sample / (time.perf_counter() - started)


async def bytea_anchor(conn: asyncpg.Connection, dims: int, rows: int = 2000) -> float:
    """Server-side decode of little-endian float32 bytea (pgcutover.f32le_to_float8), one backend, rows/s."""
    matrix = np.random.default_rng(0).standard_normal((rows, dims)).astype("<f4")
    await conn.execute("CREATE TABLE legacy_f32 (id int PRIMARY KEY, v bytea)")
    await conn.copy_records_to_table("legacy_f32", records=[(i, matrix[i].tobytes()) for i in range(rows)])
    started = time.perf_counter()
    await conn.fetchval(f"SELECT count(pgcutover.f32le_to_float8(v)::vector({dims})) FROM legacy_f32")
    return rows / (time.perf_counter() - started)


async def light_writes(dsn: str, stop: asyncio.Event, first_key: int, pool_text: str) -> list[float]:
    """~50 statements/s: inserts of new rows (JSON TEXT) and updates of another column."""
    conn = await asyncpg.connect(dsn)
    latencies, key = [], first_key
    try:
        while not stop.is_set():
            started = time.perf_counter()
            if key % 2:
                await conn.execute("INSERT INTO article_chunks (id, chunk_text, embedding) VALUES ($1, 'new', $2)",
                                   key, pool_text)
            else:
                await conn.execute("UPDATE article_chunks SET chunk_text = 'edited' WHERE id = $1", key // 7)
            latencies.append(time.perf_counter() - started)
            key += 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return latencies


VARIANTS = {"no triggers": "w_plain", "dual write + notices": "w_dual", "+ shadow sync": "w_full"}


async def per_write(conn: asyncpg.Connection, writes: int, texts: list[str]) -> dict[str, dict[str, float]]:
    """Median latency (ms) of single-row statements, each its own transaction, like an application's writes.

    The variants take turns statement by statement, so background activity (autovacuum, other processes on
    the machine) weighs on all of them alike."""
    base = 10_000_000
    cases = {
        "insert": ("INSERT INTO {t} (id, chunk_text, embedding) VALUES ($1, 'x', $2)",
                   lambda i: (base + i, texts[i % len(texts)])),
        "update legacy": ("UPDATE {t} SET embedding = $2 WHERE id = $1",
                          lambda i: (base + i, texts[(i + 1) % len(texts)])),
        "update other column": ("UPDATE {t} SET chunk_text = $2 WHERE id = $1", lambda i: (base + i, f"edit {i}")),
    }
    results: dict[str, dict[str, float]] = {variant: {} for variant in VARIANTS}
    for case, (sql, args) in cases.items():
        statements = {variant: await conn.prepare(sql.format(t=table)) for variant, table in VARIANTS.items()}
        samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for i in range(-50, writes):  # the first 50 warm up caches and plans
            for variant, stmt in statements.items():
                started = time.perf_counter()
                await stmt.fetch(*args(i + 50))
                if i >= 0:
                    samples[variant].append(time.perf_counter() - started)
        for variant in VARIANTS:
            results[variant][case] = statistics.median(samples[variant]) * 1000
    return results


async def trigger_overhead(pg: EmbeddedPostgres, dims: int, writes: int) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(pg.dsn())
    try:
        texts = [r[0] for r in await conn.fetch("SELECT txt FROM pool ORDER BY id LIMIT 200")]
        for table in (*VARIANTS.values(), "w_full_shadow"):
            await conn.execute(f"CREATE TABLE {table} (LIKE article_chunks INCLUDING ALL)")
        await conn.execute("ALTER TABLE w_full_shadow DROP COLUMN embedding")
        await install(config_for(pg, "w_dual", dims))
        await install(config_for(pg, "w_full", dims, shadow="w_full_shadow"))
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        return await per_write(conn, writes, texts)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pgcutover-bench-") as tmp:
        settings = {"max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'",
                    "shared_buffers": f"'{args.shared_buffers}'"}
        pg = EmbeddedPostgres(Path(tmp) / "data", settings=settings)
        pg.start()
        try:
            pg.psql("CREATE EXTENSION vector")
            conn = await asyncpg.connect(pg.dsn())
            try:
                print(f"server: shared_buffers {args.shared_buffers}, max_wal_size 8GB; loading {args.rows:,} rows x "
                      f"{args.dims} dims of JSON TEXT ...", flush=True)
                loaded = await load(conn, args.rows, args.dims)
                size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('article_chunks'))")
                avg = await conn.fetchval("SELECT avg(length(txt))::int FROM pool")
                legacy = await conn.fetchval("SELECT count(*) FROM article_chunks WHERE embedding_vector IS NULL")
                print(f"  loaded in {loaded:.1f}s: {size}, {avg:,} chars of JSON per row, {legacy:,} legacy-only")
                anchor = await parse_anchor(conn, args.dims, min(args.rows, 20_000))
                print(f"anchor: one backend parses {anchor:,.0f} rows/s of JSON TEXT into vector({args.dims})")
                pool_text = await conn.fetchval("SELECT txt FROM pool LIMIT 1")
            finally:
                await conn.close()

            config = config_for(pg, "article_chunks", args.dims)
            await install(config)
            stop = asyncio.Event()
            writer = asyncio.create_task(light_writes(pg.dsn(), stop, args.rows + 1, pool_text))
            started = time.perf_counter()
            [result] = await backfill(config, options=BackfillOptions(batch=args.batch, workers=args.workers,
                                                                      progress=False))
            elapsed = time.perf_counter() - started
            stop.set()
            latencies = await writer
            rate = result.rows_done / elapsed
            conn = await asyncpg.connect(pg.dsn())
            try:  # the machine may be shared: take the anchor again after the run and use the mean
                after = await parse_anchor(conn, args.dims, min(args.rows, 20_000))
            finally:
                await conn.close()
            print(f"anchor again after the backfill: {after:,.0f} rows/s; using the mean")
            anchor = (anchor + after) / 2
            print(f"backfill: {result.rows_done:,} rows in {elapsed:.1f}s = {rate:,.0f} rows/s "
                  f"({args.workers} workers, batch {args.batch}); {rate / anchor:.2f}x the one-backend parse anchor; "
                  f"target >= 10,000 rows/s: {'met' if rate >= 10_000 else 'NOT met'}")
            if latencies:
                print(f"  beside it: {len(latencies)} writes, median {statistics.median(latencies) * 1000:.1f} ms, "
                      f"max {max(latencies) * 1000:.1f} ms")
            await uninstall(config)
            conn = await asyncpg.connect(pg.dsn())
            try:
                decoded = await bytea_anchor(conn, args.dims)
            finally:
                await conn.close()
            print(f"bytea_f32 (SQL decoder, one backend): {decoded:,.0f} rows/s at {args.dims} dims, "
                  f"{decoded / anchor:.2f}x the JSON parse anchor")

            overhead = await trigger_overhead(pg, args.dims, args.writes)
            plain = overhead["no triggers"]
            print(f"per-write latency, median of {args.writes} single-row statements (ms, ratio to no triggers):")
            print(f"  {'':22}" + "".join(f"{name:>24}" for name in plain))
            for variant, values in overhead.items():
                cells = "".join(f"{values[n]:>14.3f} ({values[n] / plain[n]:4.2f}x)" for n in plain)
                print(f"  {variant:22}{cells}")
            worst = max(overhead["dual write + notices"][n] / plain[n] for n in ("insert", "update legacy"))
            print(f"  dual write + notices, worst of insert/update legacy: {worst:.2f}x (target <= 2x)")
        finally:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=1000, help="single-row statements per overhead case")
    parser.add_argument("--shared-buffers", default="2GB",
                        help="server shared_buffers (default 2GB, a quarter of a small 8GB database server)")
    asyncio.run(main(parser.parse_args()))
