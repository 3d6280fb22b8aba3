"""Pass-through cost of pgcutover against PostgreSQL directly and PgBouncer (session mode), measured in one run.

    python bench/passthrough.py [--duration 20] [--rounds 2] [--clients 8] [--scale 10]

pgbench -S in each of -M simple / extended / prepared, targets alternated (direct, pgbouncer, pgcutover) and
repeated --rounds times; prints TPS, mean latency, the proxies' CPU per transaction, and the ratios
pgcutover/direct and pgcutover/PgBouncer. Then a -c 1 run with every process pinned to CPU 0 (taskset) for
the latency each proxy adds to one query. PgBouncer is Debian's package, installed here if missing.
Not a test: it asserts nothing, it prints figures.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_pgcutover, wait_port
from pgcutover.proxy.embedded import SYSTEM_USER, EmbeddedPostgres, free_port, pg_binary

MODES = ("simple", "extended", "prepared")


@dataclass
class Run:
    tps: float
    latency_ms: float
    cpu_us_per_tx: float | None


def ensure_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if found:
        return found
    print("installing pgbouncer (Debian package)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, env=env, capture_output=True)
    subprocess.run(["service", "pgbouncer", "stop"], capture_output=True)  # the package starts its own
    return "/usr/sbin/pgbouncer"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def start_pgbouncer(binary: str, workdir: Path, pg_port: int, port: int) -> subprocess.Popen:
    user = pwd.getpwnam(SYSTEM_USER) if os.geteuid() == 0 else None  # PgBouncer refuses to run as root
    ini = workdir / "pgbouncer.ini"
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    ini.write_text(
        "[databases]\n"
        f"postgres = host=127.0.0.1 port={pg_port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = session\nmax_client_conn = 500\ndefault_pool_size = 100\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    if user:
        for path in (workdir, ini, workdir / "userlist.txt"):
            os.chown(path, user.pw_uid, user.pw_gid)
    proc = subprocess.Popen([binary, str(ini)], user=user.pw_name if user else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return proc


def pgbench(port: int, mode: str, clients: int, duration: int, pin: str | None = None) -> tuple[float, float, int]:
    cmd = [pg_binary("pgbench"), "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
           "-T", str(duration), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return tps, latency, txs


def measure(port: int, proc: subprocess.Popen | None, mode: str, clients: int, duration: int,
            pin: str | None = None) -> Run:
    before = cpu_seconds(proc.pid) if proc else 0.0
    tps, latency, txs = pgbench(port, mode, clients, duration, pin)
    cpu = (cpu_seconds(proc.pid) - before) / txs * 1e6 if proc else None
    return Run(tps, latency, cpu)


def pin_all(pids: list[int], cpu: str) -> None:
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True)


def unpin_all(pids: list[int]) -> None:
    pin_all(pids, f"0-{os.cpu_count() - 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--pinned-duration", type=int, default=10)
    args = parser.parse_args()

    bouncer_bin = ensure_pgbouncer()
    workdir = Path(tempfile.mkdtemp(prefix="pgcutover-bench-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "data", settings={"max_connections": "200"}).start()
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run([pg_binary("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1",
                        "-p", str(pg.port), "-U", "postgres", "postgres"], check=True, capture_output=True)
        bouncer_port = free_port()
        bouncer = start_pgbouncer(bouncer_bin, workdir, pg.port, bouncer_port)
        cutover, cutover_port, _ = start_pgcutover(workdir, pg.port)
        procs = [bouncer, cutover]
        targets = {"direct": (pg.port, None), "pgbouncer": (bouncer_port, bouncer),
                   "pgcutover": (cutover_port, cutover)}
        print(f"pgbench -S, {args.clients} clients, {args.duration}s per run, {args.rounds} rounds, "
              f"targets alternated; PostgreSQL {pg.psql('show server_version').strip()}, "
              f"{subprocess.run([bouncer_bin, '--version'], capture_output=True, text=True).stdout.split()[1]}",
              flush=True)
        results: dict[tuple[str, str], list[Run]] = {}
        for mode in MODES:
            for _ in range(args.rounds):
                for name, (port, proc) in targets.items():
                    results.setdefault((mode, name), []).append(
                        measure(port, proc, mode, args.clients, args.duration))
        print(f"\n{'mode':<9} {'target':<10} {'tps':>9} {'lat ms':>7} {'cpu us/tx':>9}   runs (tps)")
        for mode in MODES:
            for name in targets:
                runs = results[(mode, name)]
                cpu = [r.cpu_us_per_tx for r in runs if r.cpu_us_per_tx is not None]
                print(f"{mode:<9} {name:<10} {statistics.mean(r.tps for r in runs):>9.0f} "
                      f"{statistics.mean(r.latency_ms for r in runs):>7.3f} "
                      f"{(f'{statistics.mean(cpu):.1f}' if cpu else '-'):>9}   "
                      + " ".join(f"{r.tps:.0f}" for r in runs))
        print("\nratios (mean TPS):")
        for mode in MODES:
            tps = {name: statistics.mean(r.tps for r in results[(mode, name)]) for name in targets}
            print(f"  {mode:<9} pgcutover/direct = {tps['pgcutover'] / tps['direct']:.2f}   "
                  f"pgbouncer/direct = {tps['pgbouncer'] / tps['direct']:.2f}   "
                  f"pgcutover/pgbouncer = {tps['pgcutover'] / tps['pgbouncer']:.2f}")

        # One client, everything on CPU 0: the per-query latency each proxy adds.
        postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        pin_all([postmaster, bouncer.pid, cutover.pid], "0")
        try:
            pinned = {name: measure(port, None, "simple", 1, args.pinned_duration, pin="0")
                      for name, (port, _) in targets.items()}
        finally:
            unpin_all([postmaster, bouncer.pid, cutover.pid])
        base = pinned["direct"].latency_ms
        added = {name: (run.latency_ms - base) * 1000 for name, run in pinned.items()}
        print(f"\n-c 1 -M simple, all processes pinned to CPU 0 ({args.pinned_duration}s each):")
        for name, run in pinned.items():
            print(f"  {name:<10} latency {run.latency_ms * 1000:7.1f} us   added {added[name]:6.1f} us")
        if added["pgbouncer"] > 0:
            print(f"  added latency pgcutover/pgbouncer = {added['pgcutover'] / added['pgbouncer']:.2f}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
