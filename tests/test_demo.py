"""`pgcutover demo` sets itself up from nothing with the operator's own commands (the README's first command)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_demo_sets_itself_up(tmp_path) -> None:
    data = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", "demo", "--no-serve", "--rows", "2000",
                          "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for command in ("install-triggers", "backfill", "index", "status"):
        assert f"$ pgcutover {command}" in run.stdout
    # a second run finds its data and only reports the status
    again = subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", "demo", "--no-serve", "--rows", "2000",
                            "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ pgcutover install-triggers" not in again.stdout  # second run: no reload
    assert "public.article_chunks" in again.stdout and "0.5%" in again.stdout
    assert (data / "pgcutover.toml").exists()
