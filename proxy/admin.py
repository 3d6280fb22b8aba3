"""The admin console, in the PgBouncer tradition: the virtual database `pgcutover`, from psql.

Only users listed in `[admin] users` get here. With `[admin] auth = "upstream"` the upstream server itself
authenticates them (the session relays their startup to the real server and hangs up on it once
authentication is done); with `auth = "local"` the proxy runs SCRAM-SHA-256 against `[admin] verifiers`
(LocalLogin below), so the console answers while the server is down. Commands are simple-protocol SQL-ish
words; each answer is rows the proxy builds itself.

ROLLBACK and SET SPLIT write the shared routing table. When it cannot be reached, the change applies to this
replica only, is flagged in SHOW ROUTES (local_only), and is written to the shared table once it is
reachable again (reconcile_local_changes): a rollback (split 0) always, any other split only if nobody
changed that route's shared row in the meantime (the shared table then wins, with a warning).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from pgcutover.core import sqlstate
from pgcutover.core.config import AdminSettings, ConfigError, redact_url
from pgcutover.core.routing import Override, canonical_table

from . import control, scram
from .protocol import codes
from .protocol import messages as msg
from .protocol.framing import MessageReader
from .report import show_report

if TYPE_CHECKING:
    from .runtime import Runtime
    from .view import ConsoleSession

log = logging.getLogger("pgcutover.admin")

ADMIN_DATABASE = "pgcutover"
TEXT, INT8, FLOAT8 = 25, 20, 701

Rows = tuple[Sequence[tuple[str, int]], Sequence[Sequence[object]]]


def result(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[object]], tag: str) -> bytes:
    out = [msg.row_description(columns)]
    out.extend(msg.data_row(None if v is None else str(v) for v in row) for row in rows)
    out.append(msg.command_complete(f"{tag} {len(rows)}" if tag == "SELECT" else tag))
    return b"".join(out)


class LoginFailed(Exception):
    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate, self.text = sqlstate, text


_I32 = struct.Struct("!i")
_SASL, _SASL_CONTINUE, _SASL_FINAL, _AUTH_OK = 10, 11, 12, 0
# What psql and the drivers look for after authentication; the console speaks UTF-8 and ISO dates.
_CONSOLE_PARAMS = (("server_version", "18.0 (pgcutover console)"), ("server_encoding", "UTF8"),
                   ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"), ("IntervalStyle", "postgres"),
                   ("integer_datetimes", "on"), ("standard_conforming_strings", "on"), ("TimeZone", "UTC"),
                   ("is_superuser", "off"))


class LocalLogin:
    """`[admin] auth = "local"`: the console's own SCRAM-SHA-256 exchange, before any upstream is involved.

    feed() takes the client's bytes and returns True once the client is authenticated (everything up to
    ReadyForQuery has been written); it raises LoginFailed with the SQLSTATE to answer with."""

    def __init__(self, admin: AdminSettings, startup: msg.Startup, write: Callable[[bytes], object],
                 max_size: int) -> None:
        self.user = startup.params.get("user", "")
        self.startup = startup
        self.write = write
        self.reader = MessageReader(max_size=max_size, valid_types=codes.FRONTEND_TYPES)
        text = admin.verifier(self.user) if self.user in admin.users else None
        # Unknown names run the same exchange against a random verifier: no hint which admin users exist.
        self.scram = scram.ScramServer(scram.parse_verifier(text) if text else scram.mock_verifier())
        self.step = 0

    def begin(self) -> None:
        out = b""
        unsupported = sorted(k for k in self.startup.params if k.startswith("_pq_."))
        if self.startup.minor > 2 or unsupported:  # as the server: offer the newest we speak, list the rest
            out += msg.message(b"v", _I32.pack(codes.PROTOCOL_3_2) + _I32.pack(len(unsupported))
                               + b"".join(msg.cstr(name) for name in unsupported))
        self.write(out + msg.message(b"R", _I32.pack(_SASL) + msg.cstr(scram.MECHANISM) + b"\0"))

    def feed(self, data: bytes) -> bool:
        self.reader.feed(data)
        try:
            for kind, payload in self.reader:
                if kind == codes.F_TERMINATE:
                    raise LoginFailed("", "")  # a client giving up: close without a word
                if kind != codes.F_PASSWORD:
                    raise LoginFailed(sqlstate.PROTOCOL_VIOLATION, f"expected SASL response, got message type {kind}")
                if self._on_password(payload):
                    return True
        except msg.ProtocolViolation as exc:
            raise LoginFailed(sqlstate.PROTOCOL_VIOLATION, str(exc)) from exc
        except scram.ScramError as exc:
            log.warning("admin console login of %r refused: %s", self.user, exc)
            raise LoginFailed(sqlstate.INVALID_PASSWORD,
                              f'password authentication failed for user "{self.user}"') from exc
        return False

    def _on_password(self, payload: bytes) -> bool:
        if self.step == 0:  # SASLInitialResponse: mechanism, Int32 length, client-first-message
            mechanism, pos = msg.read_cstr(payload, 0)
            if mechanism != scram.MECHANISM:
                raise LoginFailed(sqlstate.PROTOCOL_VIOLATION,
                                  "client selected an invalid SASL authentication mechanism")
            (length,) = _I32.unpack_from(payload, pos)
            first = payload[pos + 4 : pos + 4 + length] if length >= 0 else b""
            self.write(msg.message(b"R", _I32.pack(_SASL_CONTINUE) + self.scram.client_first(first)))
            self.step = 1
            return False
        final = self.scram.client_final(payload)  # SASLResponse: client-final-message
        key = secrets.token_bytes(32 if self.startup.minor >= 2 else 4)
        self.write(b"".join([
            msg.message(b"R", _I32.pack(_SASL_FINAL) + final),
            msg.message(b"R", _I32.pack(_AUTH_OK)),
            *(msg.parameter_status(name, value) for name, value in _CONSOLE_PARAMS),
            msg.parameter_status("application_name", self.startup.params.get("application_name", "")),
            msg.parameter_status("session_authorization", self.user),
            msg.backend_key_data(secrets.randbits(31) or 1, key),  # the console has no backend to cancel
            msg.ready_for_query(),
        ]))
        return True


@dataclass(frozen=True, slots=True)
class LocalChange:
    """A ROLLBACK / SET SPLIT applied to this replica only while the shared table was unreachable."""

    override: Override
    base_generation: int  # the shared row's generation this change was made over (0: none)


_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.InterfaceError)


class AdminConsole:
    """One admin session's command loop. Replies go through `write`; commands run one at a time, in order."""

    def __init__(self, session: ConsoleSession, write: Callable[[bytes], object]) -> None:
        self.session = session
        self.rt: Runtime = session.rt
        self.write = write
        self.reader = MessageReader(max_size=1 << 20, valid_types=codes.FRONTEND_TYPES)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())
        self._in_error = False  # extended-protocol messages are refused up to the next Sync

    def feed(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            for kind, payload in self.reader:
                if kind == codes.F_QUERY:
                    self.queue.put_nowait(msg.parse_query(payload))
                elif kind == codes.F_TERMINATE:
                    self.queue.put_nowait(None)
                elif kind == codes.F_SYNC:
                    self._in_error = False
                    self.write(msg.ready_for_query())
                elif kind != codes.F_FLUSH and not self._in_error:
                    self._in_error = True
                    self.write(msg.error_response(sqlstate.FEATURE_NOT_SUPPORTED,
                                                  "the admin console speaks the simple query protocol only"))
        except msg.ProtocolViolation as exc:
            self.write(msg.error_response(sqlstate.PROTOCOL_VIOLATION, f"pgcutover: {exc}", "FATAL"))
            self.queue.put_nowait(None)

    def close(self) -> None:
        self.task.cancel()

    async def _serve(self) -> None:
        while True:
            sql = await self.queue.get()
            if sql is None:
                self.session.close()
                return
            try:
                reply = await self.execute(sql)
            except ConfigError as exc:
                reply = msg.error_response(sqlstate.INVALID_PARAMETER_VALUE, str(exc))
            except Exception as exc:  # an admin command must never take the proxy down
                log.exception("admin command %r failed", sql)
                reply = msg.error_response(sqlstate.INTERNAL_ERROR, f"pgcutover: {exc}")
            self.write(reply + msg.ready_for_query())

    async def execute(self, sql: str) -> bytes:
        text = sql.strip().rstrip(";").strip()
        if not text:
            return msg.message(b"I")
        words = text.split()
        verb = words[0].upper()
        if verb == "SHOW" and len(words) == 2:
            show = SHOWS.get(words[1].upper())
            if show is None:
                raise ConfigError(f"unknown SHOW {words[1]}; try SHOW HELP")
            columns, rows = show(self.rt)
            return result(columns, rows, "SHOW")
        command = COMMANDS.get(verb)
        if command is None:
            raise ConfigError(f"unknown admin command {words[0]!r}; try SHOW HELP")
        return await command(self, words[1:])

    def actor(self) -> str:
        return f"admin console: {self.session.user}@{self.session.peer}"

    # -- commands that change things --------------------------------------------------------------------------
    async def set_split(self, args: list[str]) -> bytes:
        if len(args) != 2 or not re.fullmatch(r"[0-9]+(\.[0-9]+)?", args[1]):
            raise ConfigError("usage: SET SPLIT <table> <percent>")
        try:
            conn = await control.connect(self.rt.config)
        except _UNREACHABLE as exc:
            return self._apply_locally([canonical_table(self.rt.config.routes, args[0])], float(args[1]),
                                       "SET SPLIT", exc) + msg.command_complete("SET")
        try:
            change = await control.set_route(conn, self.rt.config, args[0], float(args[1]), actor=self.actor(),
                                             reason="SET SPLIT")
        finally:
            await conn.close()
        return msg.notice_response(f"{change.table}: split {change.previous_split:g} -> {change.split:g} "
                                   f"(generation {change.generation})") + msg.command_complete("SET")

    async def rollback(self, args: list[str]) -> bytes:
        try:
            conn = await control.connect(self.rt.config)
        except _UNREACHABLE as exc:
            routes = self.rt.config.routes
            tables = [canonical_table(routes, t) for t in args] if args else [r.table for r in routes]
            return self._apply_locally(tables, 0.0, "rollback", exc) + msg.command_complete("ROLLBACK")
        try:
            changes = await control.rollback(conn, self.rt.config, args or None, actor=self.actor())
        finally:
            await conn.close()
        notes = b"".join(msg.notice_response(f"{c.table}: split {c.previous_split:g} -> 0 (generation "
                                             f"{c.generation})") for c in changes)
        return notes + msg.command_complete("ROLLBACK")

    def _apply_locally(self, tables: list[str], split: float, reason: str, exc: BaseException) -> bytes:
        """The shared table is unreachable: this replica applies the change alone, flagged until reconciled."""
        rt = self.rt
        changes = dict(rt.local_changes)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for table in tables:
            route = rt.config.route_for(table)
            assert route is not None
            route.with_split(split)  # the checks the shared table would make, minus the shadow's presence
            shared = rt.routing.overrides.get(table)
            previous = changes.get(table)
            base = previous.base_generation if previous else (shared.generation if shared else 0)
            changes[table] = LocalChange(Override(table, split, None, rt.routing.generation, self.actor(), now,
                                                  f"{reason} (local only: shared table unreachable)"), base)
        rt.apply_local_changes(changes)
        log.warning("%s applied to this replica only (shared routing table unreachable: %s): %s", reason,
                    type(exc).__name__, ", ".join(f"{t} split {split:g}" for t in tables))
        return b"".join(msg.notice_response(
            f"the shared routing table is unreachable ({type(exc).__name__}); {t}: split {split:g} applied to "
            "this replica only, shown as local_only in SHOW ROUTES until the table is reachable again",
            sqlstate.WARNING, "WARNING") for t in tables)

    async def reload(self, _: list[str]) -> bytes:
        outcome = self.rt.reload() if self.rt.reload else "no config file to reload"
        if outcome != "reloaded":
            raise ConfigError(outcome)
        return msg.command_complete("RELOAD")

    async def pause(self, _: list[str]) -> bytes:
        self.rt.paused = True
        for session in list(self.rt.sessions):
            session.pause_if_idle()
        return msg.command_complete("PAUSE")

    async def resume(self, _: list[str]) -> bytes:
        self.rt.paused = False
        for session in list(self.rt.sessions):
            session.resume_if_paused()
        return msg.command_complete("RESUME")

    async def shutdown(self, _: list[str]) -> bytes:
        if self.rt.request_shutdown is not None:
            asyncio.get_running_loop().call_soon(self.rt.request_shutdown)
        return msg.command_complete("SHUTDOWN")

    async def set_command(self, args: list[str]) -> bytes:
        if args and args[0].upper() == "SPLIT":
            return await self.set_split(args[1:])
        raise ConfigError("usage: SET SPLIT <table> <percent>")


# -- SHOW ---------------------------------------------------------------------------------------------------
def show_routes(rt: Runtime) -> Rows:
    columns = [("table", TEXT), ("column", TEXT), ("vector_column", TEXT), ("shadow_table", TEXT),
               ("shadow_type", TEXT), ("split", FLOAT8), ("sticky", TEXT), ("fallback", TEXT),
               ("generation", INT8), ("changed_by", TEXT), ("changed_at", TEXT), ("local_only", TEXT)]
    rows = []
    for route in rt.routing.routes:
        override = rt.routing.overrides.get(route.table)
        local = rt.local_changes.get(route.table)
        rows.append([route.table, route.column, route.pg_vector_column, route.shadow_table, route.shadow_type,
                     route.split, route.sticky, route.fallback if route.legacy_column else None,
                     override.generation if override else 0,
                     override.changed_by if override else "config file", override.changed_at if override else None,
                     "yes: shared routing table unreachable; written to it when reachable again" if local else None])
    return columns, rows


async def reconcile_local_changes(rt: Runtime, conn: asyncpg.Connection) -> None:
    """The shared table is reachable again: write this replica's local-only changes to it, then drop them.

    A rollback (split 0) is always written: it is the safe direction. Another split is written only when the
    route's shared row is still the one the change was made over; otherwise the shared table wins."""
    if not rt.local_changes:
        return
    for table, change in list(rt.local_changes.items()):
        override = change.override
        current = await conn.fetchval("SELECT generation FROM pgcutover.routing WHERE table_name = $1", table) \
            if await conn.fetchval("SELECT to_regclass('pgcutover.routing') IS NOT NULL") else None
        if override.split == 0 or (current or 0) == change.base_generation:
            try:
                done = await control.set_route(conn, rt.config, table, override.split, actor=override.changed_by,
                                               reason=f"{override.reason}; reconciled")
            except ConfigError as exc:  # e.g. the shadow is gone: the shared table's own checks win
                log.warning("local-only change to %s (split %g) dropped: %s", table, override.split, exc)
                continue
            log.warning("local-only change reconciled: %s split %g (generation %d)", table, done.split,
                        done.generation)
        else:
            log.warning("local-only change to %s (split %g) dropped: the shared row changed meanwhile "
                        "(generation %s); the shared table wins", table, override.split, current)
    loaded = await control.load_overrides(conn)
    rt.local_changes = {}
    try:  # straight from the local changes to the shared table's state: no moment in between
        rt.apply_routing(rt.config, loaded)
    except ConfigError as exc:
        log.error("routing after reconciling refused, routing in force unchanged: %s", exc)


def show_stats(rt: Runtime) -> Rows:
    totals = rt.totals
    sessions = list(rt.sessions)
    stats: list[tuple[str, object]] = [
        ("uptime_seconds", round(time.time() - rt.started_at, 1)),
        ("client_connections_open", len(sessions)),
        ("client_connections_total", totals.client_connections),
        ("server_connections_open", sum(1 for s in sessions if s.server_transport is not None)),
        ("bytes_from_client", totals.bytes_from_client + sum(s.bytes_from_client for s in sessions)),
        ("bytes_from_server", totals.bytes_from_server + sum(s.bytes_from_server for s in sessions)),
        ("messages_from_client", totals.messages_from_client + sum(s.messages_from_client for s in sessions)),
        ("simple_queries", totals.queries + sum(s.queries for s in sessions)),
        ("protocol_errors", totals.protocol_errors),
        ("upstream_errors", totals.upstream_errors),
        ("cancels_forwarded", totals.cancels_forwarded),
        ("reload_errors", totals.reload_errors),
        ("routing_generation", rt.routing.generation),
        ("paused", rt.paused),
    ]
    if rt.router is not None:
        router_stats = rt.router.stats
        stats += [("plan_cache_hits", router_stats.hits), ("plan_cache_misses", router_stats.misses)]
        stats += [(f"passthrough:{reason}", n) for reason, n in sorted(router_stats.passthrough.items())]
        stats += [(f"routed:{table}:{target}", n) for (table, target), n in sorted(rt.routed.items())]
    if rt.fallback is not None:
        stats += [(f"unmerged:{table}:{reason}", n) for (table, reason), n in sorted(rt.fallback.unmerged.items())]
    return [("stat", TEXT), ("value", TEXT)], stats


def show_clients(rt: Runtime) -> Rows:
    columns = [("peer", TEXT), ("user", TEXT), ("database", TEXT), ("application_name", TEXT), ("state", TEXT),
               ("tx", TEXT), ("bytes_in", INT8), ("bytes_out", INT8), ("queries", INT8), ("connected_for_s", FLOAT8)]
    now = time.monotonic()
    rows = [[s.peer, s.user, s.database, s.application_name, s.state, chr(s.tx_status), s.bytes_from_client,
             s.bytes_from_server, s.queries, round(now - s.connected_at, 1)] for s in list(rt.sessions)]
    return columns, rows


def show_servers(rt: Runtime) -> Rows:
    columns = [("client", TEXT), ("upstream", TEXT), ("backend_pid", INT8), ("user", TEXT), ("database", TEXT),
               ("tx", TEXT), ("in_flight", INT8)]
    rows = [[s.peer, str(s.upstream_addr), s.key.pid if s.key else None, s.user, s.database,
             chr(s.tx_status), len(s.tracker)] for s in list(rt.sessions) if s.server_transport is not None]
    return columns, rows


def show_fallback(rt: Runtime) -> Rows:
    columns = [("table", TEXT), ("state", TEXT), ("legacy_rows", INT8), ("bytes_used", INT8),
               ("bytes_allocated", INT8), ("skipped_rows", INT8), ("refresh_lag_s", FLOAT8), ("notices_applied", INT8),
               ("reconciles", INT8), ("on_inexact", TEXT), ("unmerged", TEXT)]
    rows = []
    service = rt.fallback
    for route in rt.routing.routes:
        if not route.legacy_column:
            continue
        store = service.store_for(route.table) if service is not None else None
        if store is None:
            state = "fallback = false" if not route.fallback else "legacy column is the vector column"
            rows.append([route.table, state, None, None, None, None, None, None, None, None, None])
            continue
        failed = service.failed.get(route.table)
        state = "loaded" if store.loaded else f"load failed: {failed}" if failed else "loading"
        unmerged = ", ".join(f"{reason}={n}" for (table, reason), n in sorted(service.unmerged.items())
                             if table == route.table)  # refused or answered from pgvector rows only, by reason
        rows.append([route.table, state, len(store), _used_bytes(store), store.nbytes, len(store.skipped),
                     round(store.refresh_lag(), 3), store.notices_applied, store.reconciles, route.on_inexact,
                     unmerged or None])
    return columns, rows


def _used_bytes(store: object) -> int:
    """Bytes of the filled rows of the store's segments; `nbytes` counts whole preallocated segments."""
    used = 0
    for seg in getattr(store, "_segments", ()):
        if seg.capacity:
            used += seg.nbytes * seg.count // seg.capacity
    return used


def show_config(rt: Runtime) -> Rows:
    proxy = rt.config.proxy
    items: list[tuple[str, object]] = [
        ("source", rt.config.source), ("listen", proxy.listen), ("upstream", _redact(proxy.upstream.text)),
        ("metrics", proxy.metrics), ("tls", bool(proxy.tls_cert)), ("max_message_size", proxy.max_message_size),
        ("shutdown_timeout", proxy.shutdown_timeout), ("connect_timeout", proxy.connect_timeout),
        ("startup_timeout", proxy.startup_timeout), ("max_client_conn", proxy.max_client_conn),
        ("admin_users", ",".join(rt.config.admin.users)), ("admin_auth", rt.config.admin.auth),
        ("routes", len(rt.routing.routes)),
        ("last_reload_error", rt.last_reload_error or None),
    ]
    return [("key", TEXT), ("value", TEXT)], items


def show_version(_: Runtime) -> Rows:
    from .cli import version

    return [("version", TEXT)], [[f"pgcutover {version()}"]]


def show_pools(rt: Runtime) -> Rows:
    """PgBouncer's SHOW POOLS, as far as it fits a proxy without pooling: sessions per database and user."""
    pools: dict[tuple[str, str], list[int]] = {}
    for s in list(rt.sessions):
        counts = pools.setdefault((s.database or "", s.user or ""), [0, 0])
        counts[0] += 1
        counts[1] += s.server_transport is not None
    columns = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("sv_active", INT8), ("pool_mode", TEXT)]
    return columns, [[db, user, cl, sv, "session"] for (db, user), (cl, sv) in sorted(pools.items())]


def show_databases(rt: Runtime) -> Rows:
    """PgBouncer's SHOW DATABASES: where every database is forwarded (one upstream for all)."""
    up = rt.config.proxy.upstream
    columns = [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT), ("current_connections", INT8)]
    names = sorted({s.database or "" for s in list(rt.sessions)} | {"*"})
    rows = [[name, up.host, up.port, name if name != "*" else "(the client's)",
             sum(1 for s in list(rt.sessions) if name in ("*", s.database))] for name in names]
    return columns, rows


def show_help(_: Runtime) -> Rows:
    lines = ["SHOW ROUTES | STATS | CLIENTS | SERVERS | POOLS | DATABASES | FALLBACK | CONFIG | REPORT | VERSION",
             "SHOW HELP",
             "SET SPLIT <table> <percent>", "ROLLBACK [<table>]", "RELOAD", "PAUSE", "RESUME", "SHUTDOWN"]
    return [("command", TEXT)], [[line] for line in lines]


def _redact(dsn: str) -> str:
    return redact_url(dsn)  # also malformed URLs and password= parameters (core/config.py)


SHOWS: dict[str, Callable[[Runtime], Rows]] = {
    "ROUTES": show_routes, "STATS": show_stats, "CLIENTS": show_clients, "SERVERS": show_servers,
    "FALLBACK": show_fallback, "CONFIG": show_config, "HELP": show_help, "REPORT": show_report,
    "VERSION": show_version, "POOLS": show_pools, "DATABASES": show_databases,
}

COMMANDS: dict[str, Callable[[AdminConsole, list[str]], Awaitable[bytes]]] = {
    "SET": AdminConsole.set_command, "ROLLBACK": AdminConsole.rollback, "RELOAD": AdminConsole.reload,
    "PAUSE": AdminConsole.pause, "RESUME": AdminConsole.resume, "SHUTDOWN": AdminConsole.shutdown,
}
