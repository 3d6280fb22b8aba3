"""Benchmark of the legacy-vector fallback (issue 4). Not a test: it prints figures and ratios to anchors it
measures in the same run.

    python bench/fallback.py                        # 203,727 rows x 1536 dims, 0.5% migrated (the seed's scale)
    python bench/fallback.py --rows 20000           # scaled down
    python bench/fallback.py --dims 3072 --no-db    # search figures only, matrix generated in memory

With a database (default) it starts its own EmbeddedPostgres in a temporary directory, generates the seed-shaped
`article_chunks` table (embedding TEXT holding JSON arrays of unit-norm float32 values in shortest round-trip form,
embedding_vector set for 0.5% of rows) with numpy + COPY, then, in fresh child processes (so that peak RSS is the
loader's own): loads the store with each lane strategy and reports time and peak RSS against the matrix size;
the last child also runs the search figures. Anchor: the memory-bandwidth bound, i.e. the time numpy needs to
stream the same bytes once (the fastest of a single-thread sum, a two-thread sum and a matrix-vector product with a
vector of ones), measured on the very matrix searched.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fallback.knn import BatchSearcher, Query, search_snapshot  # noqa: E402
from fallback.store import LegacyStore  # noqa: E402
from proxy.config import Route  # noqa: E402
from proxy.embedded import EmbeddedPostgres  # noqa: E402

TABLE = "article_chunks"
GEN_ROWS = 2000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's own high-water RSS (VmHWM; ru_maxrss would carry the parent's over fork+exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- data generation ---------------------------------------------------------------------------------------
def unit_rows(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    rows = rng.standard_normal((n, dims), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


async def generate(dsn: str, rows: int, dims: int, migrated: float) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, content text, embedding text,"
                       f" embedding_vector vector({dims}), embedding_f32 bytea)")
    rng = np.random.default_rng(42)

    async def chunks():
        for start in range(0, rows, GEN_ROWS):
            block = unit_rows(rng, min(GEN_ROWS, rows - start), dims)
            # The same vector twice: JSON text (seed 000) and little-endian float32 bytea (seed 002).
            lines = [b"%d\tchunk %d\t%s\t\\\\x%s\n" % (start + i, start + i,
                                                       orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY),
                                                       row.astype("<f4").tobytes().hex().encode())
                     for i, row in enumerate(block)]
            yield b"".join(lines)

    await conn.copy_to_table(TABLE, source=chunks(), columns=["id", "content", "embedding", "embedding_f32"])
    step = max(1, round(1 / migrated)) if migrated else 0
    if step:
        await conn.execute(f"UPDATE {TABLE} SET embedding_vector = embedding::vector WHERE id % {step} = 0")
    await conn.execute(f"VACUUM ANALYZE {TABLE}")
    await conn.close()


# -- child: load, then (optionally) search -------------------------------------------------------------------
def stream_once(store: LegacyStore, pool: ThreadPoolExecutor) -> dict[str, float]:
    """Seconds to stream the store's matrix once, four ways (the bound is the fastest of them)."""
    views = [v.data for v in store.snapshot().segments]
    ones = np.ones(store.dims or 0, dtype=np.float32)

    def shared(fn) -> None:  # segments handed out to two threads, as the search does
        counter = itertools.count()

        def work() -> None:
            while (i := next(counter)) < len(views):
                fn(views[i])

        list(pool.map(lambda _: work(), range(2)))

    out = {}
    for name, fn in (("sum_1_thread", lambda: [d.sum() for d in views]),
                     ("sum_2_threads", lambda: shared(np.sum)),
                     ("gemv_ones_1_thread", lambda: [d @ ones for d in views]),
                     ("gemv_ones_2_threads", lambda: shared(lambda d: d @ ones))):
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    out["bound"] = min(out.values())
    return out


def make_queries(store: LegacyStore, n: int, seed: int) -> list[np.ndarray]:
    """Stored rows plus noise: realistic queries with a clear nearest neighbour."""
    rng = np.random.default_rng(seed)
    snap = store.snapshot()
    queries = []
    for _ in range(n):
        view = snap.segments[int(rng.integers(len(snap.segments)))]
        row = view.data[int(rng.integers(view.count))].astype(np.float32)
        q = row + rng.standard_normal(len(row)).astype(np.float32) * 0.02
        queries.append(q / np.linalg.norm(q))
    return queries


async def concurrent(store: LegacyStore, clients: int, rounds: int, k: int, metric: str) -> dict[str, float]:
    """`clients` sessions each running `rounds` searches back to back through one BatchSearcher."""
    searcher = BatchSearcher()
    queries = make_queries(store, clients * rounds, seed=clients)
    latencies: list[float] = []

    async def client(i: int) -> None:
        for r in range(rounds):
            t = time.perf_counter()
            await searcher.search(store, queries[i * rounds + r], k, metric)
            latencies.append(time.perf_counter() - t)

    await client(0)  # warm-up
    latencies.clear()
    searcher.batch_sizes.clear()
    t = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t
    sizes = searcher.batch_sizes
    await searcher.close()
    mean_batch = sum(s * n for s, n in sizes.items()) / max(1, sum(sizes.values()))
    return {"qps": len(latencies) / wall, "p50": pct(latencies, 50), "p95": pct(latencies, 95),
            "mean_batch": mean_batch}


def search_figures(store: LegacyStore, n_single: int, k: int, metric: str) -> dict[str, object]:
    """Single queries interleaved with the bandwidth anchor (each way of streaming the matrix once, then one
    query, round after round, so a busy shared machine slows both alike); the bound is the fastest way's
    median, compared with the queries' median. Then closed-loop concurrency, best of two rounds."""
    queries = make_queries(store, n_single + 3, seed=1)
    snap = store.snapshot()
    pool = ThreadPoolExecutor(2)
    search_snapshot(snap, [Query(queries[0], k, metric)])  # sets up the search threads (and OpenBLAS to 1)
    stream_once(store, pool)
    for q in queries[:3]:
        search_snapshot(snap, [Query(q, k, metric)])
    single, streams = [], []
    for q in queries[3:]:
        streams.append(stream_once(store, pool))
        t = time.perf_counter()
        search_snapshot(snap, [Query(q, k, metric)])
        single.append(time.perf_counter() - t)
    ways = {w: pct([s[w] for s in streams], 50) for w in streams[0] if w != "bound"}
    bound = min(ways.values())
    per_metric = {}
    for other in ("l2", "cosine", "ip"):
        times = []
        for q in queries[3:13]:
            t = time.perf_counter()
            search_snapshot(snap, [Query(q, k, other)])
            times.append(time.perf_counter() - t)
        per_metric[other] = pct(times, 50)
    conc: dict[int, dict[str, float]] = {}
    for _ in range(2):
        for c in (1, 8, 32):
            got = asyncio.run(concurrent(store, c, rounds=max(4, 96 // c), k=k, metric=metric))
            if c not in conc or got["qps"] > conc[c]["qps"]:
                conc[c] = got
    return {"bound_p50": bound, "ways": ways, "single_p50": pct(single, 50), "single_p95": pct(single, 95),
            "single_min": min(single), "ratio_p50": pct(single, 50) / bound,
            "per_metric_p50": per_metric, "concurrent": conc, "loadavg": os.getloadavg()}


def child(args: argparse.Namespace) -> None:
    route = Route(table=TABLE, column="embedding_vector", legacy_column=args.column, dims=args.dims,
                  legacy_format="bytea_f32" if args.column == "embedding_f32" else "json")
    baseline = rss_bytes()
    store = LegacyStore(route, lanes=tuple(args.lanes.split(",")) if args.lanes else None, dtype=args.dtype)
    report: dict[str, object] = {"lanes": list(store.lanes), "baseline_rss": baseline}
    if args.dsn:
        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(args.dsn)

        t = time.perf_counter()
        load = asyncio.run(store.load(connect))
        report.update(load_s=time.perf_counter() - t, rows=load.rows, skipped=load.skipped, chunks=load.chunks)
    else:
        rng = np.random.default_rng(42)
        t = time.perf_counter()
        for start in range(0, args.rows, 8192):
            n = min(8192, args.rows - start)
            store.bulk_upsert(list(range(start, start + n)), unit_rows(rng, n, args.dims))
        report.update(load_s=time.perf_counter() - t, rows=len(store), generated=True)
    report.update(peak_rss=peak_rss_bytes(), store_bytes=store.nbytes,
                  matrix_bytes=len(store) * (store.dims or 0) * store.dtype.itemsize)
    if args.search:
        report["search"] = search_figures(store, args.queries, args.k, args.metric)
    print("RESULT " + json.dumps(report), flush=True)


def run_child(extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *extra], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stdout}\n{out.stderr}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# -- printing ----------------------------------------------------------------------------------------------
def print_load(r: dict) -> None:
    """One load: rows, time, peak RSS of the child process against the matrix it built."""
    mb = 1e6
    grown = r["peak_rss"] - r["baseline_rss"]
    print(f"  lanes={','.join(r['lanes']):<22} {r['rows']:>8} rows in {r['load_s']:6.1f} s"
          f" ({r['rows'] / r['load_s']:,.0f} rows/s)  skipped={sum(r.get('skipped', {}).values())}"
          f"  peak RSS {r['peak_rss'] / mb:,.0f} MB = {r['peak_rss'] / r['matrix_bytes']:.2f}x matrix"
          f" ({r['matrix_bytes'] / mb:,.0f} MB; growth over the {r['baseline_rss'] / mb:.0f} MB baseline:"
          f" {grown / r['matrix_bytes']:.2f}x)")


def print_search(r: dict, k: int, metric: str) -> None:
    s = r["search"]
    ms = 1e3
    ways = s["ways"]
    gbs = r["matrix_bytes"] / s["bound_p50"] / 1e9
    print(f"\nmemory-bandwidth bound for {r['matrix_bytes'] / 1e9:.2f} GB: {s['bound_p50'] * ms:.1f} ms"
          f" ({gbs:.1f} GB/s), the fastest median of: " + ", ".join(f"{w.replace('_', ' ')} {v * ms:.1f} ms"
                                                                 for w, v in ways.items()))
    print(f"single query ({metric}, k={k}): p50 {s['single_p50'] * ms:.1f} ms, p95 {s['single_p95'] * ms:.1f} ms,"
          f" min {s['single_min'] * ms:.1f} ms;  p50 / bound = {s['ratio_p50']:.2f}  (target <= 1.3)")
    print("  p50 per metric: " + ", ".join(f"{m} {v * ms:.1f} ms" for m, v in s["per_metric_p50"].items()))
    base = s["concurrent"]["1"]["qps"]
    for c in ("1", "8", "32"):
        row = s["concurrent"][c]
        print(f"{c:>3} concurrent: {row['qps']:7.1f} queries/s ({row['qps'] / base:4.1f}x one session),"
              f" per-query p50 {row['p50'] * ms:6.1f} ms p95 {row['p95'] * ms:6.1f} ms,"
              f" mean batch {row['mean_batch']:.1f}  (best of 2 rounds)")
    print(f"  32 concurrent / single-query throughput = {s['concurrent']['32']['qps'] / base:.1f}x  (target >= 8)")
    print(f"  vs the seed's 300 ms per query: single {0.3 / s['single_p50']:.1f}x faster; 32 concurrent:"
          f" {0.3 * s['concurrent']['32']['qps']:.0f}x the throughput of one 300 ms query at a time")
    print(f"  load average at the end: {', '.join(f'{x:.2f}' for x in s['loadavg'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=203_727)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--migrated", type=float, default=0.005)
    parser.add_argument("--queries", type=int, default=40, help="single queries timed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--metric", default="cosine", choices=("l2", "cosine", "ip"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--no-db", action="store_true", help="search figures only, on a generated matrix")
    parser.add_argument("--strategies", default="server;client",
                        help="lane strategies to time, ';'-separated (the default lanes run last, with search)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--lanes", help=argparse.SUPPRESS)
    parser.add_argument("--column", default="embedding", help=argparse.SUPPRESS)
    parser.add_argument("--search", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    common = ["--rows", str(args.rows), "--dims", str(args.dims), "--queries", str(args.queries), "--k",
              str(args.k), "--metric", args.metric, "--dtype", args.dtype]
    print(f"pgcutover fallback bench: {args.rows:,} legacy rows x {args.dims} dims, {args.migrated:.1%} migrated,"
          f" {os.cpu_count()} CPUs, storage {args.dtype}, load average {os.getloadavg()[0]:.2f}")
    if args.no_db:
        result = run_child([*common, "--search"])
        print_load(result)
        print_search(result, args.k, args.metric)
        return None
    with tempfile.TemporaryDirectory(prefix="pgcutover-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", settings={"max_wal_size": "'4GB'"}).start()
        try:
            pg.psql("CREATE EXTENSION IF NOT EXISTS vector")
            t = time.perf_counter()
            asyncio.run(generate(pg.dsn(), args.rows, args.dims, args.migrated))
            size = pg.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))").strip()
            print(f"generated {TABLE} ({size}) with numpy + COPY in {time.perf_counter() - t:.0f} s")
            print("\nload of the JSON TEXT table (fresh process each; target <= 10 s, peak RSS <= 1.2x matrix):")
            for lanes in args.strategies.split(";"):
                print_load(run_child([*common, "--dsn", pg.dsn(), "--lanes", lanes]))
            print("load of the same vectors as float32 bytea (seed 002's layout):")
            print_load(run_child([*common, "--dsn", pg.dsn(), "--column", "embedding_f32"]))
            print("load of the JSON TEXT table with the default lanes, then the search figures:")
            result = run_child([*common, "--dsn", pg.dsn(), "--search"])
            print_load(result)
            print_search(result, args.k, args.metric)
        finally:
            pg.destroy()
    return None


if __name__ == "__main__":
    main()
