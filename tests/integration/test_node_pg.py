"""node-postgres (the `pg` npm package), differential: each scenario runs against the server directly and
through the proxy and must come out the same. `pg` is installed with npm into a folder of this test run
(the npm registry is reachable from here and from CI); node itself is on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "node" / "pg_scenarios.js"


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm must be installed"
    where = tmp_path_factory.mktemp("node-pg")
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(where), "pg@8"],
                   check=True, capture_output=True, timeout=300)
    return where / "node_modules"


def run_scenario(node_modules: Path, dsn: str, scenario: str) -> dict:
    result = subprocess.run(["node", str(SCRIPT), dsn, scenario], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "NODE_PATH": str(node_modules)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", ["endAtOnce", "connectThenEnd", "identity", "terminateSelf"])
def test_node_pg_same_as_direct(pg, proxy, node_modules, scenario: str):
    direct = run_scenario(node_modules, pg.dsn(), scenario)
    through = run_scenario(node_modules, proxy.dsn(), scenario)
    assert through == direct
    if scenario == "identity":
        assert through == {"pidMatches": True, "notifyPidMatches": True, "payload": "mine"}
    if scenario == "terminateSelf":
        assert through["queryError"]["code"] == "57P01"
