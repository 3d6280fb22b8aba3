"""One line for every expected failure: what went wrong, where, and what to do.

Every `pgcutover` command runs under `run_command()` (proxy/cli.py, deploy/cli.py): an exception an operator can
cause (server down, wrong password, missing table, port taken, unreadable file, bad config) becomes one line on
stderr and a non-zero exit code. Only `--debug` shows a traceback; an unexpected exception says so and asks for
`--debug`.

Exit codes: 1 a problem in the environment (network, auth, missing objects, permissions, ports), 2 a bad config
or command line, 70 a bug (EX_SOFTWARE), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
import subprocess
import sys
from dataclasses import dataclass

EXIT_PROBLEM, EXIT_CONFIG, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130


class OperatorError(Exception):
    """A failure whose message is already the one line the operator should read (deploy's DeployError is one)."""

    def __init__(self, message: str, code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Context:
    """What the failing command was talking to, so the line can say where."""

    config_path: str | None = None
    upstream: str | None = None  # host:port (password never included)
    user: str | None = None
    database: str | None = None
    ports: tuple[tuple[str, str], ...] = ()  # (host:port, which setting) the command binds


def context_for(config_path: str | None) -> Context:
    """Best effort: the upstream and ports named by the config file, if it loads at all."""
    if not config_path:
        return Context()
    try:
        from .config import load_config

        config = load_config(config_path)
    except Exception:
        return Context(config_path=config_path)
    up = config.proxy.upstream
    where = up.host if up.is_unix else f"{up.host}:{up.port}"
    ports = [(str(config.proxy.listen), "[proxy] listen")]
    if config.proxy.metrics is not None:
        ports.append((str(config.proxy.metrics), "[proxy] metrics"))
    return Context(config_path, where, up.user, up.database, tuple(ports))


def describe(exc: BaseException, ctx: Context) -> tuple[str, int]:
    """(one line, exit code) for an exception; EXIT_BUG when it is not one we expect."""
    from .config import ConfigError

    cfg = f" in {ctx.config_path}" if ctx.config_path else ""
    server = f"PostgreSQL at {ctx.upstream}" if ctx.upstream else "PostgreSQL"
    if isinstance(exc, OperatorError):
        return str(exc), exc.code
    if isinstance(exc, ConfigError):
        text = str(exc)
        return (f"configuration error:{chr(10) if chr(10) in text else ' '}{text}", EXIT_CONFIG)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    pg = _postgres(exc, ctx, server, cfg)
    if pg is not None:
        return pg, EXIT_PROBLEM
    if isinstance(exc, subprocess.CalledProcessError):
        tool = exc.cmd[0] if isinstance(exc.cmd, list | tuple) and exc.cmd else exc.cmd
        detail = _last_line(exc.stderr) or _last_line(exc.stdout) or f"exit code {exc.returncode}"
        return f"{tool} failed: {detail}", EXIT_PROBLEM
    if isinstance(exc, OSError):
        return _os_error(exc, ctx, server, cfg), EXIT_PROBLEM
    if isinstance(exc, TimeoutError):
        return (f"timed out talking to {server}: is it reachable? check [proxy] upstream and connect_timeout{cfg}",
                EXIT_PROBLEM)
    return (f"unexpected error {type(exc).__name__}: {_last_line(str(exc))} (a bug: rerun with --debug for the "
            f"traceback and report it)", EXIT_BUG)


def _os_error(exc: OSError, ctx: Context, server: str, cfg: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        addr = _address_in(str(exc))
        which = next((name for where, name in ctx.ports if addr and _same_address(where, addr)), None)
        setting = f" ({which}{cfg})" if which else ""
        return (f"port {addr or '?'} is already in use{setting}: stop the process that holds it "
                f"(`ss -ltnp | grep {addr.rpartition(':')[2] if addr else 'PORT'}`) or choose another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {_address_in(str(exc)) or 'that address'}: not an address of this machine{cfg}"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        target = exc.filename or _address_in(str(exc)) or "?"
        return (f"permission denied: {target}: run as a user who may use it, or change the path/port "
                f"(ports below 1024 need privileges){cfg}")
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory: {exc.filename}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {server}: {exc.strerror}: check [proxy] upstream{cfg}"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED or "Connect call failed" in str(exc):
        return (f"cannot connect to {server}: connection refused: is the server running? "
                f"check [proxy] upstream{cfg}")
    if isinstance(exc, ConnectionError):
        return f"lost the connection to {server}: {exc.strerror or exc}: check the server log"
    return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"


def _postgres(exc: BaseException, ctx: Context, server: str, cfg: str) -> str | None:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return (f"{server} refused user {ctx.user or '?'}: {exc}: check the user and password in [proxy] upstream"
                f"{cfg} (or PGPASSWORD / ~/.pgpass) and pg_hba.conf")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{server}: {exc}: create the database or fix the database name in [proxy] upstream{cfg}"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return (f"{server}: {exc}: grant the privilege to {ctx.user or 'the upstream user'} or use a user who "
                f"has it")
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError | asyncpg.InvalidSchemaNameError):
        return f"{server}: {exc}: check the [[route]] names{cfg} against the database (pgcutover check-config --live)"
    if isinstance(exc, asyncpg.UndefinedObjectError | asyncpg.UndefinedFunctionError):
        return f"{server}: {exc}: is the extension installed? (CREATE EXTENSION vector)"
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return f"{server} is not accepting connections now: {exc}: retry in a moment"
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or "?"
        return f"{server} answered SQLSTATE {state}: {_last_line(str(exc))}"
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return f"{server}: {exc}"
    return None


_ADDR = re.compile(r"\('([^']*)', (\d+)")


def _address_in(text: str) -> str | None:
    match = _ADDR.search(text)
    return f"{match.group(1)}:{match.group(2)}" if match else None


def _same_address(configured: str, bound: str) -> bool:
    c_host, _, c_port = configured.rpartition(":")
    b_host, _, b_port = bound.rpartition(":")
    return c_port == b_port and (c_host == b_host or c_host in ("", "0.0.0.0", "::") or b_host in ("0.0.0.0", "::"))


def _last_line(text: object) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; an expected failure becomes one line on stderr and its exit code."""
    try:
        code: int = args.func(args)
        return code
    except (Exception, KeyboardInterrupt) as exc:
        if getattr(args, "debug", False):
            raise
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        line, code = describe(exc, context_for(getattr(args, "config", None)))
        command = " ".join(w for w in (getattr(args, "command", None), getattr(args, "route_command", None)) if w)
        print(f"pgcutover {command}: {line}" if command else f"pgcutover: {line}", file=sys.stderr)
        return code
