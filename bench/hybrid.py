"""End to end, seed 000's situation: a partly migrated table answered exactly through pgcutover, against the same
query on a fully migrated copy with an HNSW index (what the team will have when the backfill is done).

    python bench/hybrid.py [--rows 203727] [--dims 1536] [--migrated 0.005] [--queries 200] [--clients 1,8]

`article_chunks` keeps embeddings as JSON TEXT with --migrated of them in `embedding_vector`; `article_chunks_full`
has every vector and an HNSW index. The proxy loads the legacy rows into its fallback store at start: the script
prints that load time and the proxy's peak RSS against the matrix size. Then asyncpg clients send
`ORDER BY embedding <=> $1 LIMIT 10` with random vectors through the proxy (hybrid: pgvector rows + in-memory
legacy rows, merged exactly) and directly to the full copy, and it prints p50/p95 latency, queries/s and ratios.
Not a test: it prints figures. Loading the full seed scale takes a few minutes (it is 3 GB of JSON text).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_pgcutover, stop
from pgcutover.proxy.embedded import EmbeddedPostgres, free_port, pg_binary


def load(pg: EmbeddedPostgres, rows: int, dims: int, migrated: float) -> None:
    rng = np.random.default_rng(1)
    pg.psql("CREATE EXTENSION IF NOT EXISTS vector;"
            f"CREATE TABLE article_chunks (id bigint PRIMARY KEY, content text, embedding text, "
            f"embedding_vector vector({dims}));")
    copy = subprocess.Popen([pg_binary("psql"), "-X", "-q", "-d", pg.dsn(), "-c",
                             "COPY article_chunks (id, content, embedding) FROM STDIN"], stdin=subprocess.PIPE)
    assert copy.stdin is not None
    for start in range(0, rows, 5000):
        block = rng.standard_normal((min(5000, rows - start), dims), dtype=np.float32)
        text = "".join(f"{start + i + 1}\tchunk {start + i + 1}\t[{','.join(f'{x:.6f}' for x in v)}]\n"
                       for i, v in enumerate(block))
        copy.stdin.write(text.encode())
    copy.stdin.close()
    assert copy.wait() == 0
    n = int(rows * migrated)
    ops = "halfvec_cosine_ops" if dims > 2000 else "vector_cosine_ops"
    expression = f"(embedding_vector::halfvec({dims}))" if dims > 2000 else "embedding_vector"
    pg.psql(
        f"UPDATE article_chunks SET embedding_vector = embedding::vector WHERE id <= {n};"
        f"CREATE INDEX ON article_chunks USING hnsw ({expression} {ops});"
        f"CREATE TABLE article_chunks_full AS SELECT id, content, embedding::vector({dims}) AS embedding_vector "
        "FROM article_chunks; ALTER TABLE article_chunks_full ADD PRIMARY KEY (id);"
        "SET maintenance_work_mem = '2GB';"
        f"CREATE INDEX ON article_chunks_full USING hnsw ({expression} {ops});"
        "ANALYZE;")


async def run_clients(dsn: str, sql: str, vectors: np.ndarray, clients: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
    for v in vectors:
        queue.put_nowait(v)

    async def client() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            stmt = await conn.prepare(sql)
            while not queue.empty():
                v = queue.get_nowait()
                text = "[" + ",".join(f"{x:.6f}" for x in v) + "]"
                started = time.perf_counter()
                await stmt.fetch(text)
                latencies.append(time.perf_counter() - started)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, len(vectors) / (time.perf_counter() - started)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=203_727)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--migrated", type=float, default=0.005)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--storage", default="float32", choices=("float32", "int8", "float16"),
                        help="the route's fallback_storage (default float32, the shipped default)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pgcutover-hybrid-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "data", settings={"shared_buffers": "'2GB'"}).start()
    proxy = None
    try:
        print(f"fallback_storage = {args.storage}; loading {args.rows} x {args.dims} JSON TEXT,"
              f" {args.migrated:.1%} migrated, and a fully migrated copy with HNSW...", flush=True)
        started = time.perf_counter()
        load(pg, args.rows, args.dims, args.migrated)
        print(f"  loaded in {time.perf_counter() - started:.0f}s", flush=True)
        metrics_port = free_port()
        started = time.perf_counter()
        proxy, port, _ = start_pgcutover(
            workdir, pg.port, '[[route]]\ntable = "public.article_chunks"\ncolumn = "embedding"\n'
            f'vector_column = "embedding_vector"\nlegacy_column = "embedding"\nlegacy_format = "json"\n'
            f'dims = {args.dims}\nfallback_storage = "{args.storage}"\n', metrics_port=metrics_port)
        while True:  # ready = the fallback store is loaded
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        ready_after = time.perf_counter() - started
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{proxy.pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM")) * 1024
        matrix = metric(text, "pgcutover_fallback_bytes")
        print(f"\nproxy ready (fallback store loaded) {ready_after:.1f}s after start; store load "
              f"{metric(text, 'pgcutover_fallback_load_seconds'):.1f}s; legacy rows "
              f"{metric(text, 'pgcutover_fallback_legacy_rows'):.0f}; store {matrix / 2**20:.0f} MiB; "
              f"proxy peak RSS {rss / 2**20:.0f} MiB = {rss / matrix:.2f}x the store")

        vectors = np.random.default_rng(2).standard_normal((args.queries, args.dims), dtype=np.float32)
        hybrid_sql = "SELECT id, content FROM article_chunks ORDER BY embedding <=> $1::vector LIMIT 10"
        full_sql = "SELECT id, content FROM article_chunks_full ORDER BY embedding_vector <=> $1::vector LIMIT 10"
        if args.dims > 2000:
            full_sql = (f"SELECT id, content FROM article_chunks_full ORDER BY embedding_vector::halfvec({args.dims})"
                        f" <=> $1::vector::halfvec({args.dims}) LIMIT 10")
        print(f"\n{'clients':>7} {'target':<34} {'p50 ms':>8} {'p95 ms':>8} {'q/s':>8}")
        for clients in (int(c) for c in args.clients.split(",")):
            results = {}
            for name, dsn, sql in (
                ("pgcutover hybrid (0.5% pgvector)", f"postgresql://postgres@127.0.0.1:{port}/postgres", hybrid_sql),
                ("direct, fully migrated + HNSW", pg.dsn(), full_sql),
            ):
                latencies, qps = asyncio.run(run_clients(dsn, sql, vectors, clients))
                q = statistics.quantiles(latencies, n=100)
                results[name] = (q[49] * 1000, q[94] * 1000, qps)
                print(f"{clients:>7} {name:<34} {q[49] * 1000:>8.1f} {q[94] * 1000:>8.1f} {qps:>8.1f}")
            hybrid, full = results.values()
            print(f"{'':>7} hybrid / fully migrated: p50 {hybrid[0] / full[0]:.2f}x, q/s {hybrid[2] / full[2]:.2f}x")
    finally:
        stop(proxy)
        pg.destroy()


if __name__ == "__main__":
    main()
