"""What mirroring costs the client: p50/p95 and TPS through pgcutover with mirror = 0 and mirror = 100.

    python bench/mirror.py [--rows 50000] [--dims 128] [--duration 15] [--clients 8]

Same data as bench/rewrite.py (HNSW on primary and shadow). Two proxies on the same database, identical but for
`mirror`; pgbench -M prepared alternates between them. The mirror runs both targets on its own connections, off
the client's path, so the client's latency should not move; the figure printed is the p95 ratio
(issue 7's goal: within 10%), plus how many samples the mirror compared and dropped. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_pgcutover, stop
from bench.rewrite import PRIMARY_SQL, load, percentile, pgbench
from pgcutover.proxy.embedded import EmbeddedPostgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-per-s", type=float, default=5.0, help="mirror_max_per_s of the mirrored proxy")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pgcutover-mirror-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "data", settings={"shared_buffers": "'1GB'"}).start()
    procs: list[subprocess.Popen] = []
    try:
        print(f"loading {args.rows} x {args.dims} (HNSW on primary and shadow)...", flush=True)
        load(pg, args.rows, args.dims)
        # mirrored statements run as the client (postgres here) via a role that may only SET ROLE (SECURITY.md)
        pg.psql("CREATE ROLE bench_mirror LOGIN NOINHERIT; GRANT postgres TO bench_mirror")
        route = ('mirror_user = "bench_mirror"\n'
                 '[[route]]\ntable = "public.items"\ncolumn = "embedding"\nshadow_table = "shadow.items"\n'
                 f"mirror_max_per_s = {args.max_per_s}\n")
        plain, plain_port, _ = start_pgcutover(workdir, pg.port, route + "mirror = 0\n", name="mirror0")
        mirrored, mirrored_port, _ = start_pgcutover(workdir, pg.port, route + "mirror = 100\n", name="mirror100")
        procs = [plain, mirrored]
        script = workdir / "knn.sql"
        script.write_text("\\set qid random(1, 1000)\n" + PRIMARY_SQL + "\n")
        runs: dict[str, list] = {"mirror 0": [], "mirror 100": []}
        order = [("mirror 0", plain_port, "m0"), ("mirror 100", mirrored_port, "m100")]
        for round_no in range(args.rounds):  # ABBA: neither proxy always runs on the warmer cache
            for name, port, tag in order if round_no % 2 == 0 else order[::-1]:
                runs[name].append(pgbench(port, script, args.clients, args.duration, workdir, tag))
        print(f"\npgbench -M prepared, {args.clients} clients, {args.duration}s x {args.rounds} rounds (ABBA), "
              f"split 0, mirror_max_per_s {args.max_per_s:g}")
        figures = {}
        for name, results in runs.items():
            lat = [x for _, lats in results for x in lats]
            figures[name] = (statistics.mean(t for t, _ in results), percentile(lat, 50), percentile(lat, 95))
            print(f"  {name:<11} tps {figures[name][0]:8.0f}   p50 {figures[name][1]:7.3f} ms   "
                  f"p95 {figures[name][2]:7.3f} ms")
        base, mirr = figures["mirror 0"], figures["mirror 100"]
        print(f"  mirror 100 / mirror 0: p95 {mirr[2] / base[2]:.3f}, p50 {mirr[1] / base[1]:.3f}, "
              f"tps {mirr[0] / base[0]:.3f}")
        samples = pg.psql("SELECT count(*) FROM pgcutover.mirror_samples").strip() if pg.psql(
            "SELECT to_regclass('pgcutover.mirror_samples') IS NOT NULL").strip() == "t" else "0"
        print(f"  mirrored samples stored: {samples} (the rest: over the mirror_max_per_s budget or a full queue, "
              "by design)")
    finally:
        for proc in procs:
            stop(proc)
        pg.destroy()


if __name__ == "__main__":
    main()
