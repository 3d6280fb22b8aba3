"""pgbench (the wheel's) through the proxy in its three query modes: no failed transaction, exit code 0.

`pgbench -i` runs through the proxy too, so its COPY-based initialisation is exercised as well.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from pgcutover.proxy.embedded import pg_binary

DATABASE = "pgbench_it"


def pgbench(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([pg_binary("pgbench"), *args, dsn], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bench_db(pg, proxy) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg.psql(f"CREATE DATABASE {DATABASE}")
    result = pgbench(proxy.dsn(database=DATABASE), "-i", "-s", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert pg.psql("SELECT count(*) FROM pgbench_accounts", database=DATABASE).strip() == "100000"
    return proxy.dsn(database=DATABASE)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_mode(bench_db: str, mode: str):
    result = pgbench(bench_db, "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^number of failed transactions: 0 \(", result.stdout, re.M), result.stdout
    processed = re.search(r"^number of transactions actually processed: (\d+)", result.stdout, re.M)
    assert processed and int(processed.group(1)) > 0, result.stdout
    assert f"query mode: {mode}" in result.stdout


def test_pgbench_select_only_with_many_clients(bench_db: str):
    result = pgbench(bench_db, "-S", "-M", "prepared", "-c", "16", "-j", "2", "-t", "200", "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "number of transactions actually processed: 3200/3200" in result.stdout
    assert re.search(r"^number of failed transactions: 0 \(", result.stdout, re.M)
