"""Cost of routing a similarity query: pgcutover at split 0 and 100 against the hand-written query sent directly.

    python bench/rewrite.py [--rows 50000] [--dims 128] [--duration 15] [--clients 8]

A table of --rows x --dims vectors with an HNSW index, its shadow copy (same rows, own HNSW index), and a table of
query vectors. pgbench -M prepared runs `ORDER BY embedding <-> (query vector) LIMIT 10` with a random query id:
directly on the primary and directly on the shadow with the hand-rewritten SQL (the anchors), and through
pgcutover at split 0 and split 100. Prints TPS, p50/p95 latency and the ratios, then the router's own cost per
statement: a cache miss (parse + plan) and a cache hit. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, start_pgcutover, stop
from pgcutover.core.config import parse_config
from pgcutover.proxy.embedded import EmbeddedPostgres, pg_binary

PRIMARY_SQL = "SELECT id, content FROM items ORDER BY embedding <-> (SELECT v FROM queries WHERE qid = :qid) LIMIT 10;"
SHADOW_SQL = ("SELECT id, content FROM shadow.items ORDER BY embedding <-> (SELECT v FROM queries WHERE qid = :qid)"
              "::vector LIMIT 10;")


def load(pg: EmbeddedPostgres, rows: int, dims: int) -> None:
    gen = f"(SELECT array_agg(random()::real)::vector({dims}) FROM generate_series(1, {dims}) WHERE g > 0)"
    pg.psql(
        "CREATE EXTENSION IF NOT EXISTS vector; SELECT setseed(0.5);"
        f"CREATE TABLE items (id bigint PRIMARY KEY, content text, embedding vector({dims}));"
        f"INSERT INTO items SELECT g, 'item ' || g, {gen} FROM generate_series(1, {rows}) g;"
        "CREATE SCHEMA shadow; CREATE TABLE shadow.items AS SELECT * FROM items;"
        "ALTER TABLE shadow.items ADD PRIMARY KEY (id);"
        f"CREATE TABLE queries (qid int PRIMARY KEY, v vector({dims}));"
        f"INSERT INTO queries SELECT g, {gen} FROM generate_series(1, 1000) g;"
        "SET maintenance_work_mem = '512MB';"
        "CREATE INDEX ON items USING hnsw (embedding vector_l2_ops);"
        "CREATE INDEX ON shadow.items USING hnsw (embedding vector_l2_ops);"
        "ANALYZE;"
    )


def pgbench(port: int, script: Path, clients: int, duration: int, logdir: Path, tag: str) -> tuple[float, list[float]]:
    prefix = logdir / tag
    out = subprocess.run(
        [pg_binary("pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(duration),
         "-D", "qid=1", "-f", str(script), "-l", "--log-prefix", str(prefix),
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
        check=True, capture_output=True, text=True, cwd=logdir).stdout
    tps = float(out.split("tps = ")[1].split()[0])
    latencies = []
    for log in logdir.glob(f"{tag}.*"):
        latencies += [int(line.split()[2]) / 1000 for line in log.read_text().splitlines()]
        log.unlink()
    return tps, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def router_costs(routes) -> tuple[float, float]:
    from pgcutover.rewrite.router import Router, build_plan

    sql = PRIMARY_SQL.replace(":qid", "$1")
    miss = min(timeit.repeat(lambda: build_plan(sql, routes), number=20, repeat=5)) / 20
    router = Router(routes)
    router.plan(sql)
    hit = min(timeit.repeat(lambda: router.plan(sql), number=20000, repeat=5)) / 20000
    return miss, hit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pgcutover-rewrite-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "data", settings={"shared_buffers": "'1GB'"}).start()
    proxy = None
    try:
        print(f"loading {args.rows} x {args.dims} (HNSW on primary and shadow)...", flush=True)
        load(pg, args.rows, args.dims)
        proxy, port, config = start_pgcutover(
            workdir, pg.port, '[[route]]\ntable = "public.items"\ncolumn = "embedding"\n'
            'shadow_table = "shadow.items"\nsticky = "query"\n')
        primary_script, shadow_script = workdir / "primary.sql", workdir / "shadow.sql"
        primary_script.write_text("\\set qid random(1, 1000)\n" + PRIMARY_SQL + "\n")
        shadow_script.write_text("\\set qid random(1, 1000)\n" + SHADOW_SQL + "\n")

        def route_set(split: int) -> None:
            subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", "route", "set", "items", "--split", str(split),
                            "--config", str(config)], check=True, capture_output=True, cwd=ROOT)

        targets = [  # (name, port, script, split to set first or None)
            ("direct primary", pg.port, primary_script, None),
            ("pgcutover split 0", port, primary_script, 0),
            ("direct shadow (hand-written)", pg.port, shadow_script, None),
            ("pgcutover split 100", port, primary_script, 100),
        ]
        runs: dict[str, list] = {}
        for round_no in range(args.rounds):  # ABBA order: no target always runs on the warmest cache
            for name, target_port, script, split in targets if round_no % 2 == 0 else targets[::-1]:
                if split is not None:
                    route_set(split)
                runs.setdefault(name, []).append(
                    pgbench(target_port, script, args.clients, args.duration, workdir, f"r{round_no}"))
        print(f"\npgbench -M prepared, {args.clients} clients, {args.duration}s x {args.rounds} rounds (ABBA), "
              "LIMIT 10 over "
              f"{args.rows} x {args.dims} HNSW")
        print(f"{'target':<30} {'tps':>8} {'p50 ms':>8} {'p95 ms':>8}")
        summary = {}
        for name, results in runs.items():
            tps = statistics.mean(t for t, _ in results)
            lat = [x for _, lats in results for x in lats]
            summary[name] = (tps, percentile(lat, 50), percentile(lat, 95))
            print(f"{name:<30} {tps:>8.0f} {summary[name][1]:>8.3f} {summary[name][2]:>8.3f}")
        for mine, anchor in (("pgcutover split 0", "direct primary"),
                             ("pgcutover split 100", "direct shadow (hand-written)")):
            print(f"{mine} / {anchor}: TPS {summary[mine][0] / summary[anchor][0]:.3f}, "
                  f"p50 {summary[mine][1] / summary[anchor][1]:.3f}, p95 {summary[mine][2] / summary[anchor][2]:.3f}")
        routes = parse_config({"proxy": {"upstream": "postgresql://x@127.0.0.1/x"},
                               "route": [{"table": "public.items", "column": "embedding",
                                          "shadow_table": "shadow.items"}]}).routes
        miss, hit = router_costs(routes)
        print(f"router: cache miss (parse + plan) {miss * 1e6:.0f} us, cache hit {hit * 1e6:.2f} us")
    finally:
        stop(proxy)
        pg.destroy()


if __name__ == "__main__":
    main()
