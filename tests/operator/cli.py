"""Run `pgcutover` as a real child process, as an operator does, and check what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a child's import path: this checkout's package (the root conftest.py put it on PYTHONPATH), then tests/
CHILD_PATH = os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(ROOT)])


def pgcutover(*argv: str, env: dict[str, str] | None = None, timeout: float = 120,
              cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "PGCUTOVER_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_failure(run: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The failure was one line on stderr, without a traceback, with a non-zero (or the given) exit code."""
    assert run.returncode != 0, run.stdout + run.stderr
    if code is not None:
        assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("pgcutover")]
    assert len(lines) == 1, run.stderr
    print(lines[0])  # shown with pytest -s: the line an operator reads
    return lines[0]


def config_text(upstream: str, listen: str = "127.0.0.1:0", metrics: str = "", routes: str = "") -> str:
    return (f'[proxy]\nlisten = "{listen}"\nupstream = "{upstream}"\nmetrics = "{metrics}"\n'
            f'shutdown_timeout = 2\n\n{routes}')
