"""index --dry-run with an existing index, the missing extension named first, SHOW FALLBACK used vs allocated."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from pgcutover.proxy.embedded import EmbeddedPostgres
from tests.operator.cli import config_text, one_line_failure, pgcutover


def test_index_dry_run_skips_an_existing_index(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    pg.psql("DROP SCHEMA IF EXISTS lo CASCADE; CREATE SCHEMA lo;"
            "CREATE TABLE lo.items (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE lo.other (id bigint PRIMARY KEY, embedding vector(3))")
    config = tmp_path / "index.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable", routes=(
        '[[route]]\ntable = "lo.items"\ncolumn = "embedding"\n\n'
        '[[route]]\ntable = "lo.other"\ncolumn = "embedding"\n')))
    built = pgcutover("index", "--route", "lo.items", "--config", str(config))
    assert built.returncode == 0, built.stderr
    dry = pgcutover("index", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    items, other = dry.stdout.split("CREATE INDEX", 1)[0], dry.stdout
    assert "lo.items: index items_embedding_hnsw_cosine already exists and is valid; nothing to do" in items
    assert other.count("CREATE INDEX CONCURRENTLY") == 1 and '"lo"."other"' in other


def test_missing_extension_is_said_first(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    pg.psql("DROP DATABASE IF EXISTS noext")
    pg.psql("CREATE DATABASE noext")
    pg.psql("CREATE TABLE items (id bigint PRIMARY KEY, embedding text)", database="noext")
    config = tmp_path / "noext.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/noext?sslmode=disable", routes=(
        '[[route]]\ntable = "public.items"\ncolumn = "embedding"\nvector_column = "embedding_vector"\n'
        'legacy_column = "embedding"\ndims = 3\n')))
    for command in ("install-triggers", "index", "status"):
        line = one_line_failure(pgcutover(command, "--config", str(config)), code=1)
        assert "vector extension is not installed" in line and "ADD COLUMN" not in line, (command, line)


def test_show_fallback_used_and_allocated_bytes(pg: EmbeddedPostgres, start_proxy) -> None:
    pg.psql("DROP SCHEMA IF EXISTS lf CASCADE; CREATE SCHEMA lf;"
            "CREATE TABLE lf.docs (id bigint PRIMARY KEY, embedding text, embedding_vector vector(8));"
            "INSERT INTO lf.docs SELECT i, '[' || array_to_string(array_fill(i::float8, ARRAY[8]), ',') || ']', NULL "
            "FROM generate_series(1, 300) i")
    proxy = start_proxy('[admin]\nusers = ["postgres"]\n\n[[route]]\ntable = "lf.docs"\ncolumn = "embedding"\n'
                        'vector_column = "embedding_vector"\nlegacy_column = "embedding"\ndims = 8\n')
    with psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True, prepare_threshold=None) as admin:
        deadline = time.monotonic() + 60
        while True:
            cur = admin.execute("SHOW FALLBACK")
            names = [c.name for c in cur.description]
            row = dict(zip(names, next(r for r in cur.fetchall() if r[0] == "lf.docs"), strict=True))
            if row["state"] == "loaded":
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.1)
    assert row["legacy_rows"] == 300
    assert 0 < row["bytes_used"] < row["bytes_allocated"]
    assert row["bytes_used"] >= 300 * 8 * 2  # at least the vectors themselves (half precision or more)
