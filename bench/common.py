"""What every benchmark needs: a pgcutover process in front of a PostgreSQL, started and waited for."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from pgcutover.proxy.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def start_pgcutover(workdir: Path, pg_port: int, routes: str = "", *, name: str = "pgcutover",
                    metrics_port: int | None = None) -> tuple[subprocess.Popen, int, Path]:
    """`pgcutover serve` on a free port with `routes` (TOML) appended to its [proxy]; (process, port, config)."""
    port = free_port()
    config = workdir / f"{name}.toml"
    metrics = f"127.0.0.1:{metrics_port}" if metrics_port else ""
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{port}"\n'
        f'upstream = "postgresql://postgres@127.0.0.1:{pg_port}/postgres?sslmode=disable"\n'
        f'metrics = "{metrics}"\n{routes}')
    proc = subprocess.Popen([sys.executable, "-m", "pgcutover.proxy.cli", "--log-level", "WARNING", "serve", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port, config


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    if proc is not None:
        proc.terminate()
        proc.wait(timeout)
