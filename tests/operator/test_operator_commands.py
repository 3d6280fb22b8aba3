"""$PGCUTOVER_CONFIG for every command, --version, SHOW VERSION / POOLS / DATABASES, and the README's commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgcutover.proxy.embedded import EmbeddedPostgres, free_port
from tests.operator.cli import CHILD_PATH, ROOT, config_text, pgcutover


def test_version() -> None:
    run = pgcutover("--version")
    assert run.returncode == 0 and re.fullmatch(r"pgcutover \d+\.\d+\.\d+\S*\n", run.stdout), run.stdout


def test_environment_config_for_serve_and_explain(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "env.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
                                  listen=f"127.0.0.1:{port}",
                                  routes='[[route]]\ntable = "env_t"\ncolumn = "embedding"\n'))
    env = {"PGCUTOVER_CONFIG": str(config)}
    explain = pgcutover("explain", "SELECT id FROM env_t ORDER BY embedding <-> '[1,2]' LIMIT 3", env=env)
    assert explain.returncode == 0 and "decision:" in explain.stdout, explain.stderr

    proc = subprocess.Popen([sys.executable, "-m", "pgcutover.proxy.cli", "serve"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env, "PYTHONPATH": CHILD_PATH})
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 60
        while "pgcutover listening" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert f"pgcutover listening on 127.0.0.1:{port}" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for argv in (["route", "list"], ["status", "--no-diff"], ["check-config"], ["report"]):
        run = pgcutover(*argv, env=env)
        assert "required" not in run.stderr and "--config" not in run.stderr, (argv, run.stderr)


def test_admin_version_pools_databases(start_proxy) -> None:
    proxy = start_proxy('[admin]\nusers = ["postgres"]\n')
    with psycopg.connect(proxy.dsn(), autocommit=True) as _app, \
            psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True) as admin:
        (version,), = admin.execute("SHOW VERSION").fetchall()
        assert version == pgcutover("--version").stdout.strip()
        pools = admin.execute("SHOW POOLS").fetchall()
        assert ("postgres", "postgres") in [(r[0], r[1]) for r in pools]
        assert next(r for r in pools if r[0] == "postgres")[2] >= 1
        databases = admin.execute("SHOW DATABASES").fetchall()
        assert {r[0] for r in databases} >= {"*", "postgres"}
        assert "VERSION" in " ".join(r[0] for r in admin.execute("SHOW HELP").fetchall())


def test_readme_commands_exist() -> None:
    """Every `pgcutover <command>` the README prints is a command that answers --help, and it says how to run it."""
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pgcutover" in readme
    commands = set(re.findall(r"`pgcutover ([a-z][a-z-]+)", readme)) | set(
        re.findall(r"\.venv/bin/pgcutover ([a-z][a-z-]+)", readme))
    assert {"serve", "demo", "report", "check-config", "route", "rollback"} <= commands
    for command in sorted(commands):
        run = pgcutover(command, "--help")
        assert run.returncode == 0, (command, run.stderr)
    make = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", readme, flags=re.MULTILINE):
        assert re.search(rf"^{target}:", make, flags=re.MULTILINE), target
