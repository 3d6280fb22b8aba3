"""Every expected failure of every command: one line (what, where, what to do), a non-zero code, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pgcutover.proxy.embedded import EmbeddedPostgres, free_port
from tests.operator.cli import config_text, one_line_failure, pgcutover

ROUTE = '[[route]]\ntable = "public.op_items"\ncolumn = "embedding"\nshadow_table = "public.op_items_shadow"\n'
SERVER_COMMANDS = [
    ["init"], ["route", "list"], ["route", "set", "op_items", "--split", "5"], ["route", "history", "op_items"],
    ["rollback", "--all"], ["report"], ["status"], ["backfill"], ["index"], ["install-triggers"],
    ["uninstall-triggers"], ["check-config", "--live"],
]


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()  # nothing listens there: the server is "down"


@pytest.mark.parametrize("argv", SERVER_COMMANDS, ids=lambda a: " ".join(a))
def test_server_down(tmp_path: Path, dead_port: int, argv: list[str]) -> None:
    config = tmp_path / "down.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{dead_port}/postgres?sslmode=disable",
                                  routes=ROUTE))
    line = one_line_failure(pgcutover(*argv, "--config", str(config)), code=1)
    assert f"127.0.0.1:{dead_port}" in line and "connection refused" in line and str(config) in line


def test_debug_shows_the_traceback(tmp_path: Path, dead_port: int) -> None:
    config = tmp_path / "down.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{dead_port}/postgres", routes=ROUTE))
    run = pgcutover("--debug", "route", "list", "--config", str(config))
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_wrong_password(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    config = tmp_path / "auth.toml"
    config.write_text(config_text(f"postgresql://scramuser:s3cr3t-xyz@127.0.0.1:{pg.port}/postgres?sslmode=disable"))
    line = one_line_failure(pgcutover("route", "list", "--config", str(config)), code=1)
    assert "scramuser" in line and "password" in line and "s3cr3t-xyz" not in line


def test_missing_database(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    config = tmp_path / "db.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/nosuchdb?sslmode=disable"))
    line = one_line_failure(pgcutover("init", "--config", str(config)), code=1)
    assert "nosuchdb" in line and "[proxy] upstream" in line


def test_missing_table(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    config = tmp_path / "missing.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
                                  routes=ROUTE))
    for argv in (["install-triggers"], ["index"], ["status"], ["route", "set", "op_items", "--split", "5"]):
        line = one_line_failure(pgcutover(*argv, "--config", str(config)))
        assert "op_items" in line, line


def test_permission_denied(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    pg.psql("DO $$ BEGIN CREATE ROLE op_weak LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
            "REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
    config = tmp_path / "weak.toml"
    config.write_text(config_text(f"postgresql://op_weak@127.0.0.1:{pg.port}/postgres?sslmode=disable"))
    line = one_line_failure(pgcutover("init", "--config", str(config)), code=1)
    assert "permission denied" in line and "op_weak" in line


def test_unreadable_and_missing_config(tmp_path: Path) -> None:
    line = one_line_failure(pgcutover("route", "list", "--config", str(tmp_path / "nope.toml")), code=2)
    assert "nope.toml" in line
    folder = tmp_path / "a-folder.toml"
    folder.mkdir()
    assert "a-folder.toml" in one_line_failure(pgcutover("serve", "--config", str(folder)), code=2)


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("which", ["listen", "metrics"])
def test_serve_port_in_use(pg: EmbeddedPostgres, tmp_path: Path, which: str) -> None:
    with _held_port() as held:
        port = held.getsockname()[1]
        addresses = {"listen": f"127.0.0.1:{free_port()}", "metrics": f"127.0.0.1:{free_port()}"}
        addresses[which] = f"127.0.0.1:{port}"
        config = tmp_path / "busy.toml"
        config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
                                      **addresses))
        line = one_line_failure(pgcutover("serve", "--config", str(config)), code=1)
    assert f"port 127.0.0.1:{port} is already in use" in line and f"[proxy] {which}" in line


def test_demo_port_in_use(tmp_path: Path) -> None:
    with _held_port() as held:
        port = held.getsockname()[1]
        line = one_line_failure(pgcutover("demo", "--port", str(port), "--data-dir", str(tmp_path / "demo")), code=1)
    assert f"port {port} (--port) is already in use" in line
    assert not (tmp_path / "demo" / "pgdata").exists()  # refused before starting anything


def test_bad_log_level_and_unknown_route(tmp_path: Path, pg: EmbeddedPostgres) -> None:
    config = tmp_path / "ok.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
                                  routes=ROUTE))
    assert "--log-level" in one_line_failure(pgcutover("--log-level", "LOUD", "route", "list",
                                                       "--config", str(config)), code=2)
    line = one_line_failure(pgcutover("report", "--route", "nope", "--config", str(config)), code=2)
    assert "nope" in line


def test_second_demo_in_the_same_folder(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    first = pgcutover("demo", "--no-serve", "--rows", "200", "--data-dir", str(data), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    # the first demo still running: its PostgreSQL holds the folder
    running = EmbeddedPostgres(data / "pgdata", port=int((data / "pg.port").read_text())).start()
    try:
        line = one_line_failure(pgcutover("demo", "--no-serve", "--data-dir", str(data)), code=1)
        assert "a demo is already running in" in line and "--data-dir" in line
    finally:
        running.stop()
    reset = pgcutover("demo", "--no-serve", "--reset", "--rows", "200", "--data-dir", str(data), timeout=300)
    assert reset.returncode == 0 and "$ pgcutover install-triggers" in reset.stdout, reset.stdout + reset.stderr
