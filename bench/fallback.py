"""Benchmark of the legacy-vector fallback (issues 4 and 16). Not a test: it prints figures and ratios to anchors
it measures in the same run.

    python bench/fallback.py                 # 203,727 rows, 1536 and 3072 dims, random and clustered data,
                                             # float32 vs int8 storage, then the load of the 1536-dim JSON table
    python bench/fallback.py --quick         # 50,000 rows, fewer queries: a few minutes
    python bench/fallback.py --no-db         # search figures only
    python bench/fallback.py --storages float32,int8,float16 --dims 1536 --data clustered
    python bench/fallback.py --storages float32,int8,int8-numpy   # int8 without the SIMD kernel (the old path)

Search figures: each (dims, data, storage) runs in a fresh child process that generates the same rows (same seed)
straight into its store, so peak RSS is the store's own. Data: "random" (Gaussian, unit norm: the worst case for
any screening bound, all distances concentrate) and "clustered" (a mixture of 2,000 Gaussians around a common
direction, with the spread of text embeddings: random pairs at cosine ~0.3, same-cluster pairs ~0.6), queries
drawn from the same distribution. Anchor: the float32 memory-bandwidth bound, i.e. the time numpy needs to stream
rows x dims x 4 bytes once (the fastest of a one- and a two-thread sum and a matrix-vector product over a 512 MB
float32 scratch array, scaled to the matrix), measured interleaved with the queries in the same child.

Load figures (with a database): an EmbeddedPostgres in a temporary directory, the seed-shaped `article_chunks`
table (embedding TEXT holding JSON arrays of unit-norm float32 values in shortest round-trip form, 0.5% migrated),
loaded in fresh child processes with each lane strategy and storage.
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

from pgcutover.core.config import Route  # noqa: E402
from pgcutover.fallback import kernels  # noqa: E402
from pgcutover.fallback.knn import BatchSearcher, Query, search_snapshot  # noqa: E402
from pgcutover.fallback.store import LegacyStore  # noqa: E402
from pgcutover.proxy.app import install_event_loop_policy  # noqa: E402
from pgcutover.proxy.embedded import EmbeddedPostgres  # noqa: E402

TABLE = "article_chunks"
GEN_ROWS = 2000
SEED_MS = 300.0  # seed 000: ~300 ms and 2.5 GB per request at 203,727 x 3072
SCRATCH_BYTES = 512 * 1024 * 1024
CLUSTERS = 2000


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


# -- search children ---------------------------------------------------------------------------------------
class Mixture:
    """Unit-norm rows: Gaussian ("random"), or a mixture of CLUSTERS Gaussians around a common direction."""

    def __init__(self, kind: str, dims: int, seed: int = 42) -> None:
        self.kind, self.dims = kind, dims
        rng = np.random.default_rng(seed)
        if kind == "clustered":
            common = rng.standard_normal(dims).astype(np.float32)
            self.common = 0.55 * common / np.linalg.norm(common)
            centers = rng.standard_normal((CLUSTERS, dims)).astype(np.float32)
            self.centers = 0.65 * centers / np.linalg.norm(centers, axis=1, keepdims=True)
            self.noise = 0.55 / np.sqrt(dims)

    def rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "random":
            return unit_rows(rng, n, self.dims)
        rows = self.centers[rng.integers(0, CLUSTERS, n)] + self.common
        rows += rng.standard_normal((n, self.dims), dtype=np.float32) * np.float32(self.noise)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows


def anchor_ways(scratch: list[np.ndarray], pool: ThreadPoolExecutor) -> dict[str, float]:
    """Seconds to stream the scratch array once, four ways."""
    ones = np.ones(scratch[0].shape[1], dtype=np.float32)

    def shared(fn) -> None:
        counter = itertools.count()

        def work() -> None:
            while (i := next(counter)) < len(scratch):
                fn(scratch[i])

        list(pool.map(lambda _: work(), range(2)))

    out = {}
    for name, fn in (("sum_1_thread", lambda: [d.sum() for d in scratch]),
                     ("sum_2_threads", lambda: shared(np.sum)),
                     ("gemv_1_thread", lambda: [d @ ones for d in scratch]),
                     ("gemv_2_threads", lambda: shared(lambda d: d @ ones))):
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    return out


async def concurrent(store: LegacyStore, queries: list[np.ndarray], clients: int, rounds: int, k: int,
                     metric: str) -> dict[str, float]:
    """`clients` sessions each running `rounds` searches back to back through one BatchSearcher."""
    searcher = BatchSearcher()
    latencies: list[float] = []

    async def client(i: int) -> None:
        for r in range(rounds):
            t = time.perf_counter()
            await searcher.search(store, queries[(i * rounds + r) % len(queries)], k, metric)
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
    return {"qps": len(latencies) / wall, "p50": pct(latencies, 50), "mean_batch": mean_batch}


def search_child(args: argparse.Namespace) -> None:
    route = Route(table=TABLE, column="embedding_vector", legacy_column="embedding", dims=args.dims)
    baseline = rss_bytes()
    mixture = Mixture(args.data, args.dims)
    store = LegacyStore(route, dtype=args.dtype)
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    for start in range(0, args.rows, 2048):  # small blocks: the generator's temporaries stay out of peak RSS
        n = min(2048, args.rows - start)
        store.bulk_upsert(list(range(start, start + n)), mixture.rows(rng, n))
    gen_s = time.perf_counter() - t
    peak = peak_rss_bytes()  # before the scratch array of the anchor
    matrix32 = args.rows * args.dims * 4
    queries = mixture.rows(np.random.default_rng(1), args.queries + 3)
    k, metric = args.k, args.metric
    snap = store.snapshot()
    scratch_rows = SCRATCH_BYTES // (args.dims * 4)
    whole = np.random.default_rng(3).standard_normal((scratch_rows, args.dims), dtype=np.float32)
    scratch = [whole[i:i + 8192] for i in range(0, scratch_rows, 8192)]
    pool = ThreadPoolExecutor(2)
    for q in queries[:3]:  # warm-up (sets up the search threads and OpenBLAS to 1)
        search_snapshot(snap, [Query(q, k, metric)])
    anchor_ways(scratch, pool)
    single, streams, sizes = [], [], []
    for q in queries[3:]:
        streams.append(anchor_ways(scratch, pool))
        t = time.perf_counter()
        result = search_snapshot(snap, [Query(q, k, metric)])[0]
        single.append(time.perf_counter() - t)
        sizes.append(len(result))
    scale = matrix32 / (scratch_rows * args.dims * 4)
    ways = {w: pct([s[w] for s in streams], 50) * scale for w in streams[0]}
    bound = min(ways.values())
    del scratch, whole
    conc: dict[int, dict[str, float]] = {}
    for _ in range(2):
        for c in (1, 32):
            got = asyncio.run(concurrent(store, list(queries), c, rounds=max(3, 64 // c), k=k, metric=metric))
            if c not in conc or got["qps"] > conc[c]["qps"]:
                conc[c] = got
    dtype = args.dtype if kernels.available() or args.dtype != "int8" else "int8-numpy"
    report = {"rows": len(store), "dims": args.dims, "data": args.data, "dtype": dtype, "gen_s": gen_s,
              "baseline_rss": baseline, "peak_rss": peak, "store_bytes": store.nbytes, "matrix32": matrix32,
              "bound": bound, "ways": ways, "p50": pct(single, 50), "p95": pct(single, 95),
              "cands_mean": float(np.mean(sizes)), "cands_max": int(max(sizes)), "concurrent": conc,
              "loadavg": os.getloadavg()}
    print("RESULT " + json.dumps(report), flush=True)


# -- load children -----------------------------------------------------------------------------------------
def load_child(args: argparse.Namespace) -> None:
    route = Route(table=TABLE, column="embedding_vector", legacy_column=args.column, dims=args.dims,
                  legacy_format="bytea_f32" if args.column == "embedding_f32" else "json")
    baseline = rss_bytes()
    lanes = tuple(args.lanes.split(",")) if args.lanes and args.lanes != "default" else None  # None: the store's own
    store = LegacyStore(route, lanes=lanes, dtype=args.dtype)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(args.dsn)

    install_event_loop_policy()  # the proxy loads inside its own event loop: uvloop
    t = time.perf_counter()
    load = asyncio.run(store.load(connect))
    report = {"lanes": list(store.lanes), "baseline_rss": baseline, "load_s": time.perf_counter() - t,
              "rows": load.rows, "skipped": load.skipped, "peak_rss": peak_rss_bytes(), "store_bytes": store.nbytes,
              "matrix32": len(store) * (store.dims or 0) * 4, "dtype": args.dtype}
    print("RESULT " + json.dumps(report), flush=True)


def run_child(extra: list[str]) -> dict:
    env = dict(os.environ)
    if "--dtype" in extra and extra[extra.index("--dtype") + 1] == "int8-numpy":  # int8 without fallback.kernels
        extra = list(extra)
        extra[extra.index("--dtype") + 1] = "int8"
        env["PGCUTOVER_INT8_KERNEL"] = "numpy"
    out = subprocess.run([sys.executable, __file__, "--child", *extra], capture_output=True, text=True, check=False,
                         env=env)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stdout}\n{out.stderr}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# -- printing ----------------------------------------------------------------------------------------------
def print_load(r: dict) -> None:
    mb = 1e6
    print(f"  {r['dtype']:<8} lanes={','.join(r['lanes']):<14} {r['rows']:>8} rows in {r['load_s']:6.1f} s"
          f" ({r['rows'] / r['load_s']:,.0f} rows/s)  skipped={sum(r.get('skipped', {}).values())}"
          f"  peak RSS {r['peak_rss'] / mb:,.0f} MB = {r['peak_rss'] / r['matrix32']:.2f}x the float32 matrix"
          f" ({r['matrix32'] / mb:,.0f} MB)")


def print_search_header() -> None:
    print(f"{'dims':>5} {'data':<9} {'storage':<8} {'bound ms':>8} {'p50 ms':>7} {'p50/bound':>9} {'p95 ms':>7}"
          f" {'cands':>7} {'max':>5} {'1 q/s':>7} {'32 q/s':>7} {'batch':>5} {'store MB':>8} {'peak RSS':>14}"
          f" {'vs 300ms':>8}")


def print_search(r: dict) -> None:
    ms = 1e3
    c1, c32 = r["concurrent"]["1"], r["concurrent"]["32"]
    grown = (r["peak_rss"] - r["baseline_rss"]) / r["matrix32"]
    print(f"{r['dims']:>5} {r['data']:<9} {r['dtype']:<8} {r['bound'] * ms:8.1f} {r['p50'] * ms:7.1f}"
          f" {r['p50'] / r['bound']:9.2f} {r['p95'] * ms:7.1f} {r['cands_mean']:7.1f} {r['cands_max']:5d}"
          f" {c1['qps']:7.1f} {c32['qps']:7.1f} {c32['mean_batch']:5.1f} {r['store_bytes'] / 1e6:8.0f}"
          f" {r['peak_rss'] / 1e6:6.0f}={r['peak_rss'] / r['matrix32']:.2f}x {SEED_MS / (r['p50'] * ms):7.1f}x"
          f"   (growth {grown:.2f}x)")


def print_targets(results: list[dict]) -> None:
    by = {(r["dims"], r["data"], r["dtype"]): r for r in results}
    print("\ntargets (issue 16), each against its same-run anchor:")
    for (dims, data, dtype), r in sorted(by.items()):
        if dtype == "float32":
            continue
        f32 = by.get((dims, data, "float32"))
        line = (f"  {dims} {data:<9} {dtype}: p50 = {r['p50'] / r['bound']:.2f}x the float32 bound"
                f"{' (target <= 0.4 on clustered 1536)' if dims == 1536 and data == 'clustered' else ''}")
        if f32:
            line += (f"; {r['p50'] / f32['p50']:.2f}x float32's p50 ({f32['p50'] * 1e3:.1f} ms; must be <= 1 on"
                     f" random); 32-concurrent {r['concurrent']['32']['qps'] / f32['concurrent']['32']['qps']:.2f}x"
                     f" float32's q/s (target >= 1)")
        if dims == 3072:
            line += (f"; {SEED_MS / (r['p50'] * 1e3):.1f}x faster than 300 ms (target >= 10);"
                     f" peak RSS {r['peak_rss'] / r['matrix32']:.2f}x the float32 matrix (target <= 0.35)")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows (default 203,727; --quick 50,000)")
    parser.add_argument("--dims", default="1536,3072", help="comma-separated")
    parser.add_argument("--data", default="random,clustered", help="random | clustered, comma-separated")
    parser.add_argument("--storages", default="float32,int8",
                        help="float32 | int8 | float16 | int8-numpy (int8 without the SIMD kernel), comma-separated")
    parser.add_argument("--queries", type=int, default=None, help="single queries timed (default 30; --quick 12)")
    parser.add_argument("--quick", action="store_true", help="50,000 rows and fewer queries: a few minutes")
    parser.add_argument("--k", type=int, default=11, help="what the merged query asks for LIMIT 10 (k + n + 1)")
    parser.add_argument("--metric", default="cosine", choices=("l2", "cosine", "ip"))
    parser.add_argument("--no-db", action="store_true", help="search figures only")
    parser.add_argument("--load-only", action="store_true", help="load figures only")
    parser.add_argument("--strategies", default="default;server,client",
                        help="load lane strategies, ';'-separated ('default': the store's choice, simdjson on two "
                             "client lanes for JSON; 'server,client': the load before it); bench/fallback_load.py "
                             "compares them in detail")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--lanes", help=argparse.SUPPRESS)
    parser.add_argument("--column", default="embedding", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.dims = int(args.dims)
        return load_child(args) if args.dsn else search_child(args)
    rows = args.rows or (50_000 if args.quick else 203_727)
    queries = args.queries or (12 if args.quick else 30)
    storages = args.storages.split(",")
    print(f"pgcutover fallback bench: {rows:,} rows, dims {args.dims}, data {args.data}, storages {args.storages},"
          f" {args.metric} k={args.k}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if not args.load_only:
        print("\nsearch (one fresh process per line; bound = float32 memory-bandwidth bound of rows x dims x 4"
              " bytes; cands = mean candidate-set size; q/s with 1 and 32 concurrent sessions; peak RSS vs the"
              " float32 matrix):")
        print_search_header()
    results = []
    for dims in args.dims.split(",") if not args.load_only else []:
        for data in args.data.split(","):
            for dtype in storages:
                r = run_child(["--rows", str(rows), "--dims", dims, "--data", data, "--dtype", dtype,
                               "--queries", str(queries), "--k", str(args.k), "--metric", args.metric])
                results.append(r)
                print_search(r)
    if results:
        print_targets(results)
    if args.no_db:
        return None
    dims = 1536
    with tempfile.TemporaryDirectory(prefix="pgcutover-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", settings={"max_wal_size": "'4GB'"}).start()
        try:
            pg.psql("CREATE EXTENSION IF NOT EXISTS vector")
            t = time.perf_counter()
            asyncio.run(generate(pg.dsn(), rows, dims, 0.005))
            size = pg.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))").strip()
            print(f"\ngenerated {TABLE} {rows:,} x {dims} ({size}) with numpy + COPY"
                  f" in {time.perf_counter() - t:.0f} s")
            print("load of the JSON TEXT table (fresh process each; target <= 10 s at 203,727 rows; was 20.5 s):")
            common = ["--rows", str(rows), "--dims", str(dims), "--dsn", pg.dsn()]
            for dtype in storages:
                for lanes in args.strategies.split(";"):
                    print_load(run_child([*common, "--lanes", lanes, "--dtype", dtype]))
            print("load of the same vectors as float32 bytea (seed 002's layout):")
            print_load(run_child([*common, "--column", "embedding_f32", "--dtype", storages[-1]]))
        finally:
            pg.destroy()
    return None


if __name__ == "__main__":
    main()
