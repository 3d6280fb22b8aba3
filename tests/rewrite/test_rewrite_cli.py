"""`pgcutover explain`: offline and with the catalog of a live upstream."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from pgcutover.rewrite.cli import cmd_explain, register

ROUTE = """
[[route]]
table = "public.items"
column = "embedding"
vector_column = "embedding_vector"
shadow_table = "ruvector_new.items"
shadow_column = "embedding"
shadow_type = "ruvector_new.vector"
split = 25
"""


def explain(tmp_path: Path, sql: str, *extra: str, upstream: str = "postgresql://postgres@127.0.0.1:1/postgres") -> str:
    config = tmp_path / "pgcutover.toml"
    config.write_text(f'[proxy]\nupstream = "{upstream}"\nconnect_timeout = 2\n{ROUTE}')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["explain", "--config", str(config), *extra, sql])
    out = io.StringIO()
    assert args.func(args, out) == 0
    return out.getvalue()


def test_explain_rewrite(tmp_path: Path) -> None:
    text = explain(tmp_path, "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5")
    assert "decision:    rewrite" in text
    assert "primary:     SELECT id FROM items WHERE embedding_vector IS NOT NULL " \
           "ORDER BY embedding_vector <-> $1 LIMIT 5" in text
    assert "shadow:      SELECT id FROM ruvector_new.items ORDER BY embedding <-> $1::ruvector_new.vector LIMIT 5" \
        in text
    assert "split 25% to shadow" in text and "query vector $1; limit 5" in text


def test_explain_passthrough_without_catalog(tmp_path: Path) -> None:
    text = explain(tmp_path, "SELECT * FROM items ORDER BY embedding <-> $1")
    assert "decision:    forward" in text and "reason:      star-needs-catalog" in text
    assert "catalog:     none" in text


def test_explain_search_path(tmp_path: Path) -> None:
    text = explain(tmp_path, "SELECT id FROM items ORDER BY embedding <-> $1", "--search-path", "app,public")
    assert "reason:      search-path-ambiguous" in text


def test_explain_live_upstream_down_still_answers(tmp_path: Path) -> None:
    text = explain(tmp_path, "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5", "--live")
    assert "unavailable" in text and "decision:    rewrite" in text


def test_explain_live_catalog(tmp_path: Path, pg) -> None:
    pg.psql("CREATE SCHEMA IF NOT EXISTS cli_explain; "
            "CREATE TABLE IF NOT EXISTS cli_explain.items (id int, embedding text, embedding_vector vector(3)); "
            "CREATE SCHEMA IF NOT EXISTS cli_shadow; "
            "CREATE TABLE IF NOT EXISTS cli_shadow.items (id int, embedding text, emb vector(3))")
    config = ROUTE.replace("public.items", "cli_explain.items").replace("ruvector_new.items", "cli_shadow.items") \
        .replace('shadow_column = "embedding"', 'shadow_column = "emb"').replace('"ruvector_new.vector"', '"vector"')
    path = tmp_path / "live.toml"
    path.write_text(f'[proxy]\nupstream = "{pg.dsn()}?sslmode=disable"\n{config}')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["explain", "--config", str(path), "--live",
                              "SELECT * FROM cli_explain.items ORDER BY embedding <-> $1 LIMIT 2"])
    out = io.StringIO()
    cmd_explain(args, out)
    text = out.getvalue()
    assert "catalog:     loaded from" in text
    assert "shadow:      SELECT id, embedding, emb AS embedding_vector FROM cli_shadow.items " \
           "ORDER BY emb <-> $1::vector LIMIT 2" in text
