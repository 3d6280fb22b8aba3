"""Benchmark of the fallback store's first load (issue 16, item 4): today's way against the new one, same run.

    python bench/fallback_load.py              # 203,727 x 1536 JSON TEXT (seed 000's shape): target <= 10 s
    python bench/fallback_load.py --quick      # 20,000 rows: a minute or two
    python bench/fallback_load.py --dsn URL    # an existing database (the table is (re)built only when missing
                                               # or of another size)
    python bench/fallback_load.py --strategies "orjson:server,client;simdjson:client,client;simdjson:server,client"

Each load runs in a fresh child process (so peak RSS is the load's own), strategies interleaved `--repeat` times
(the machine is shared: the best of the repeats is compared, the median printed too). A strategy is
`parser:lanes[:storage]` (storage as `fallback_storage`, float32 by default): `orjson` is the JSON reader the
loader had before (a list of Python floats per row, then numpy), `simdjson` the new default (pysimdjson straight
into a float64 buffer), `simdjson-4k` the same with numpy's huge-page advice off (before segments had pages of
their own, this showed what first-touching the store's memory cost); lanes as `LegacyStore(lanes=...)`
(`server`: PostgreSQL casts `legacy::vector` and sends pgvector's binary form, `client`: raw text decoded here).
The anchor ("old") is `orjson:server,client`, the loader's default before this change. Every child also hashes
its store (keys in order, the stored bytes): equal hashes mean the strategies of one storage loaded
bit-identical rows. `simdjson:default:int8` is the same load into an int8 store (codes quantized on the decode
thread).

Data: bench/fallback.py's `article_chunks (id bigint, content text, embedding text, embedding_vector vector(1536),
embedding_f32 bytea)`, of which the load reads `embedding`: unit-norm float32 rows printed
in shortest round-trip form (~19 KB of JSON per row, ~3.9 GB in all), 0.5% migrated, written with COPY.

Why the loader reads JSON with simdjson on two client lanes (figures of this 2-core machine, PostgreSQL on the
same machine, CPU time per row of 1536 dims; the load is CPU-bound, so what counts is the CPU both processes
spend, and the old load's ~206 us a row is its 20.5 s on 2 cores):
- the server spends ~55-60 us on every row whatever it sends: the ~19 KB value is pglz-compressed TOAST (~11 KB),
  so it is fetched, decompressed and sent (perf: pglz_decompress and its back-reference memcpy are half of it, then
  TCP, page reads). No way around it: textsend(), the text column in binary or in text format, and binary COPY
  all cost the server the same 54-60 us (shared_buffers 6 GB instead of 256 MB: ~54 instead of ~60); a Unix socket
  instead of TCP made the whole load slower here (13.3-13.6 s against 11.2 s).
- `legacy::vector` on the server adds pgvector's parse (strtof per element): ~169 us a row in all, measured with
  `COPY (SELECT id, embedding::vector ...) TO '/dev/null' (FORMAT binary)` (raw text the same way: ~42 us). So a
  server cast, binary COPY or not, one or two connections in parallel, costs more CPU than the old load
  (`orjson:server,server`: 1.18x its CPU); on 2 busy cores parallel casts cannot win.
- the client: orjson + `np.array` ~90 us a row (a Python float per element); simdjson straight into a float64
  buffer ~27 us (its parse alone ~20 us), plus ~18 us for asyncpg to receive the row. The store's memory is a
  private mapping, faulted in ahead on the decode thread with the GIL released (shared anonymous memory, Python's
  `mmap` default, is shmem: 0.6-1.4 s instead of 0.37 s per 1.25 GB, and `mmap.madvise` holds the GIL). Each lane
  reads its next chunk while the decode thread works on the last (idle CPU in a perf profile: 12-16% -> ~5%).
  Binary COPY instead of asyncpg's fetch costs the client more (29-30 against 18-20 us a row to receive) and
  cannot bind the key bounds as parameters, so the loader keeps its prepared range queries.
- numpy's C text readers (`np.fromstring`) are slower than orjson (~1 ms a row) and round through float64 too.
- float64 -> float32 rounds twice; `fallback/formats.py` re-reads the elements where that can differ from strtof
  (float32 midpoints, subnormals, `-0`), so every strategy loads bit-identical rows (the hash column).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fallback import generate  # noqa: E402
from pgcutover.core.config import Route  # noqa: E402
from pgcutover.fallback import formats  # noqa: E402
from pgcutover.fallback.store import LegacyStore  # noqa: E402
from pgcutover.proxy.app import install_event_loop_policy  # noqa: E402
from pgcutover.proxy.embedded import EmbeddedPostgres  # noqa: E402

TABLE = "article_chunks"
OLD = "orjson:server,client"
NEW = "simdjson:default"


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def ensure_table(dsn: str, rows: int, dims: int, migrated: float = 0.005) -> bool:
    """Build the table unless it is there with `rows` rows of `dims` dimensions; True when built."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE):
            have = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
            width = await conn.fetchval(f"SELECT atttypmod FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass"
                                        " AND attname = 'embedding_vector'")
            if have == rows and width == dims:
                return False
    finally:
        await conn.close()
    await generate(dsn, rows, dims, migrated)  # bench/fallback.py's table (the load reads `embedding` only)
    return True


def store_hash(store: LegacyStore) -> str:
    """sha256 over (key, float32 row) in key order: equal for two stores holding bit-identical rows."""
    snap = store.snapshot()
    keys = np.concatenate([seg.keys for seg in snap.segments]).astype(np.int64)
    data = np.concatenate([seg.data for seg in snap.segments])
    order = np.argsort(keys, kind="stable")
    digest = hashlib.sha256(keys[order].tobytes())
    for start in range(0, len(order), 8192):
        digest.update(np.ascontiguousarray(data[order[start:start + 8192]]).tobytes())
    return digest.hexdigest()[:16]


def load_child(args: argparse.Namespace) -> None:
    parser, _, lanes = args.strategy.partition(":")
    lanes, _, storage = lanes.partition(":")
    parser, _, pages = parser.partition("-")
    if parser == "orjson":
        formats.simdjson = None  # the reader the loader had before: orjson, row by row
    if pages == "4k":  # segments without transparent huge pages (numpy madvises arrays >= 4 MB by default)
        np._core.multiarray._set_madvise_hugepage(False)
    route = Route(table=TABLE, column="embedding_vector", legacy_column="embedding", dims=args.dims,
                  legacy_format="json")
    store = LegacyStore(route, lanes=None if lanes == "default" else tuple(lanes.split(",")),
                        dtype=storage or "float32")

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(args.dsn)

    loop = install_event_loop_policy()  # the proxy loads inside its own event loop: uvloop
    t = time.perf_counter()
    report = asyncio.run(store.load(connect))
    seconds = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"strategy": args.strategy, "lanes": list(store.lanes), "seconds": seconds,
                                  "cpu": usage.ru_utime + usage.ru_stime,
                                  "rows": report.rows, "skipped": sum(report.skipped.values()),
                                  "peak_rss": peak_rss_bytes(), "hash": store_hash(store), "loop": loop,
                                  "loadavg": os.getloadavg()[0]}), flush=True)


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of the postmaster's exited children (the load's backends, once they are gone)."""
    if postmaster is None:
        return float("nan")
    try:
        with open(f"/proc/{postmaster}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


async def find_postmaster(dsn: str) -> int | None:
    """The server's postmaster pid when it runs on this machine (the parent of a backend), else None."""
    conn = await asyncpg.connect(dsn)
    try:
        with open(f"/proc/{conn.get_server_pid()}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
    finally:
        await conn.close()


def run_child(dsn: str, dims: int, strategy: str, postmaster: int | None = None) -> dict:
    before = server_cpu(postmaster)
    out = subprocess.run([sys.executable, __file__, "--child", "--dsn", dsn, "--dims", str(dims),
                          "--strategy", strategy], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stdout}\n{out.stderr}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    time.sleep(0.5)  # the backends exit after the child's connections close
    result["server_cpu"] = server_cpu(postmaster) - before
    return result


def bench(dsn: str, rows: int, dims: int, strategies: list[str], repeat: int) -> None:
    t = time.perf_counter()
    built = asyncio.run(ensure_table(dsn, rows, dims))
    print(f"{TABLE}: {rows:,} x {dims} JSON TEXT" + (f", built in {time.perf_counter() - t:.0f} s" if built else
                                                     " (already there)"))
    postmaster = asyncio.run(find_postmaster(dsn))
    runs: dict[str, list[dict]] = {s: [] for s in strategies}
    print("wall s | CPU s of this process + the server's backends (load-independent: total / 2 = the wall time on"
          " 2 idle cores)")
    for i in range(repeat):
        for strategy in strategies:
            r = run_child(dsn, dims, strategy, postmaster)
            runs[strategy].append(r)
            print(f"  run {i + 1}  {strategy:<26} lanes={','.join(r['lanes']):<14} {r['seconds']:6.2f} s"
                  f" | CPU {r['cpu']:5.1f} + {r['server_cpu']:5.1f} = {r['cpu'] + r['server_cpu']:5.1f} s"
                  f" ({r['rows'] / r['seconds']:,.0f} rows/s) rows={r['rows']} skipped={r['skipped']}"
                  f" peak RSS {r['peak_rss'] / 1e6:,.0f} MB  hash {r['hash']}  {r['loop']}"
                  f"  load avg {r['loadavg']:.1f}",
                  flush=True)
    best = {s: min(r["seconds"] for r in rs) for s, rs in runs.items()}
    median = {s: statistics.median(r["seconds"] for r in rs) for s, rs in runs.items()}
    cpu = {s: min(r["cpu"] + r["server_cpu"] for r in rs) for s, rs in runs.items()}
    hashes: dict[str, set[str]] = {}  # per storage: int8 stores hash their codes
    for strategy, rs in runs.items():
        hashes.setdefault(strategy.split(":")[2] if strategy.count(":") > 1 else "float32", set()).update(
            r["hash"] for r in rs)
    print(f"\nload of {rows:,} x {dims} JSON TEXT, best (median) of {repeat}; target <= 10 s at 203,727 rows:")
    for strategy in strategies:
        ratio = best[strategy] / best[OLD] if OLD in best else float("nan")
        cpu_ratio = cpu[strategy] / cpu[OLD] if OLD in cpu else float("nan")
        print(f"  {strategy:<26} {best[strategy]:6.2f} s ({median[strategy]:6.2f} s)  new/old {ratio:.2f}x"
              f" | CPU {cpu[strategy]:6.1f} s, new/old {cpu_ratio:.2f}x")
    if OLD in best and NEW in best:
        print(f"new/old: {best[NEW] / best[OLD]:.2f}x ({best[NEW]:.2f} s vs {best[OLD]:.2f} s; medians"
              f" {median[NEW] / median[OLD]:.2f}x; CPU {cpu[NEW] / cpu[OLD]:.2f}x); rows bit-identical across"
              " strategies (per storage):"
              f" {'yes' if all(len(h) == 1 for h in hashes.values()) else 'NO ' + str(hashes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows (default 203,727; --quick 20,000)")
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--quick", action="store_true", help="20,000 rows")
    parser.add_argument("--repeat", type=int, default=2, help="loads per strategy, interleaved")
    parser.add_argument("--strategies", default=f"{OLD};{NEW};{NEW}:int8",
                        help="parser:lanes[:storage], ';'-separated")
    parser.add_argument("--dsn", help="use this database instead of a temporary embedded PostgreSQL")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return load_child(args)
    rows = args.rows or (20_000 if args.quick else 203_727)
    strategies = args.strategies.split(";")
    print(f"pgcutover fallback load bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if args.dsn:
        return bench(args.dsn, rows, args.dims, strategies, args.repeat)
    with tempfile.TemporaryDirectory(prefix="pgcutover-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", settings={"max_wal_size": "'4GB'"}).start()
        try:
            bench(pg.dsn(), rows, args.dims, strategies, args.repeat)
        finally:
            pg.destroy()
    return None


if __name__ == "__main__":
    main()
