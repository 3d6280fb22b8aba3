"""Issue 12 item 3: can one client starve the others or grow the proxy without bound?

Three attacks on one pgcutover with a similarity route (and a shadow, so every plan is rewritten twice):

1. similarity flood: FLOODERS processes send distinct similarity queries, each with its own 1,536-dimension
   literal (every one a plan-cache miss, ~20 ms of sqlglot). Meanwhile a probe client runs `SELECT 1` at a
   steady pace: its p99 during the flood is compared with its p99 idle, in alternating rounds (idle, flood,
   idle, flood, ...) of the same run, so a shared host's changing load hits both alike (goal: within 2x);
2. literal flood: the same queries with a 100 kB literal (8,000 dimensions): the proxy's RSS against its idle
   RSS and `plan_cache_bytes`;
3. Parse flood: sessions that Parse named similarity statements (distinct texts) and never close them; each
   session ends with 54000 at max_prepared_statements and the attacker reconnects. RSS again.

    python -m bench.security [--duration 10] [--flooders 2]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import start_pgcutover, stop
from pgcutover.proxy.embedded import EmbeddedPostgres
from pgcutover.proxy.protocol import messages as msg
from tests.integration.wire import Closed, RawClient

DIMS = 1536
ROUTE = ('plan_cache_bytes = {cache}\nmax_prepared_statements = {prepared}\n'
         '[[route]]\ntable = "public.items"\ncolumn = "embedding"\nshadow_table = "shadow.items"\n')


def literal(dims: int, rng: random.Random) -> str:
    return "[" + ",".join(f"{rng.random():.9f}" for _ in range(dims)) + "]"


def flood_queries(port: int, dims: int, seconds: float, seed: int, counter) -> None:
    """Distinct similarity queries back to back (errors such as a dimension mismatch count too: the proxy
    planned them all the same)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"SELECT id FROM items ORDER BY embedding <-> '{literal(dims, rng)}' LIMIT 5")
            with counter.get_lock():
                counter.value += 1


def flood_parses(port: int, seconds: float, seed: int, counter) -> None:
    """Named Parses of distinct similarity statements, never closed; reconnect when the proxy ends the session."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        try:
            with RawClient(port, timeout=30) as client:
                client.startup()
                while time.monotonic() < deadline:
                    batch = b""
                    for _ in range(20):
                        n += 1
                        sql = f"SELECT id FROM items ORDER BY embedding <-> '{literal(DIMS, rng)}' LIMIT 5"
                        batch += msg.parse_message(f"p{seed}_{n}", sql)
                    client.send(batch + msg.message(b"S"))
                    client.until_ready()
                    with counter.get_lock():
                        counter.value += 20
        except (Closed, OSError):
            continue  # 54000 at max_prepared_statements: a new session


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(port: int, seconds: float, pace: float = 0.005) -> list[float]:
    """`SELECT 1` latencies (ms) of one well-behaved client, one every `pace` seconds."""
    out = []
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
        conn.execute("SELECT 1")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(pace)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def attack(target, args: tuple, flooders: int, pid: int, seconds: float, port: int | None = None):
    """Run `flooders` processes of `target`; returns (probe latencies or None, peak RSS MB, operations)."""
    counter = multiprocessing.Value("l", 0)
    procs = [multiprocessing.Process(target=target, args=(*args, seconds, 1000 + i, counter))
             for i in range(flooders)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let the flood build up
    peak = rss_mb(pid)
    latencies = None
    if port is not None:
        latencies = probe(port, seconds - 2)
    while any(p.is_alive() for p in procs):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.2)
    for p in procs:
        p.join()
    return latencies, max(peak, rss_mb(pid)), counter.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--cache-mb", type=int, default=64, help="plan_cache_bytes of the proxy, in MB")
    parser.add_argument("--prepared", type=int, default=1000, help="max_prepared_statements of the proxy")
    parser.add_argument("--rounds", type=int, default=3, help="idle/flood probe rounds")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pgcutover-security-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "data").start()
    proxy = None
    try:
        pg.psql(f"CREATE EXTENSION vector; CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({DIMS}));"
                f"INSERT INTO items SELECT i, (SELECT array_agg(random())::real[]::vector FROM generate_series(1, "
                f"{DIMS}) WHERE i > 0) FROM generate_series(1, 200) i;"
                "CREATE SCHEMA shadow; CREATE TABLE shadow.items AS SELECT * FROM items;"
                "ALTER TABLE shadow.items ADD PRIMARY KEY (id)")
        routes = ROUTE.format(cache=args.cache_mb << 20, prepared=args.prepared)
        proxy, port, _ = start_pgcutover(workdir, pg.port, routes, name="security")
        idle_rss = rss_mb(proxy.pid)
        print(f"proxy: plan_cache_bytes {args.cache_mb} MB, max_prepared_statements {args.prepared}; "
              f"{args.flooders} flooding clients, {args.duration:g} s per attack; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        idle: list[float] = []
        latencies: list[float] = []
        ops = 0
        peak = idle_rss
        for _ in range(args.rounds):
            idle += probe(port, args.duration - 2)
            flooded, round_peak, round_ops = attack(flood_queries, (port, DIMS), args.flooders, proxy.pid,
                                                    args.duration, port)
            assert flooded is not None
            latencies += flooded
            ops += round_ops
            peak = max(peak, round_peak)
        print(f"idle anchor     SELECT 1 p50 {statistics.median(idle):6.2f} ms  p99 {p99(idle):6.2f} ms   "
              f"(n={len(idle)})   RSS {idle_rss:7.1f} MB")
        ratio = p99(latencies) / p99(idle)
        seconds = args.duration * args.rounds
        print(f"query flood     SELECT 1 p50 {statistics.median(latencies):6.2f} ms  p99 {p99(latencies):6.2f} ms   "
              f"(n={len(latencies)})   p99 / idle p99 = {ratio:.2f} (goal <= 2)   {ops} distinct queries "
              f"({ops / seconds:.0f}/s)   peak RSS {peak:7.1f} MB")

        _, peak, ops = attack(flood_queries, (port, 8000), args.flooders, proxy.pid, args.duration)
        print(f"literal flood   {ops} distinct 100 kB-literal queries: peak RSS {peak:7.1f} MB = idle + "
              f"{peak - idle_rss:.1f} MB (plan_cache_bytes {args.cache_mb} MB, merge cache as much again)")

        _, peak, ops = attack(flood_parses, (port,), args.flooders, proxy.pid, args.duration)
        print(f"Parse flood     {ops} named statements never closed: peak RSS {peak:7.1f} MB = idle + "
              f"{peak - idle_rss:.1f} MB (per session at most {args.prepared} statements / 64 MB)")
        after = probe(port, 3)
        print(f"after           SELECT 1 p99 {p99(after):6.2f} ms   RSS {rss_mb(proxy.pid):7.1f} MB")
    finally:
        stop(proxy)
        pg.destroy()


if __name__ == "__main__":
    main()
