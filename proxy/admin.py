"""The admin console, in the PgBouncer tradition: the virtual database `pgcutover`, from psql.

Only users listed in `[admin] users` get here, and only after the upstream server itself authenticated
them (the session relays their startup to the real server and hangs up on it once authentication is done).
Commands are simple-protocol SQL-ish words; each answer is rows the proxy builds itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from . import control
from .config import ConfigError
from .protocol import codes
from .protocol import messages as msg
from .protocol.framing import MessageReader
from .report import show_report

if TYPE_CHECKING:
    from .runtime import Runtime
    from .session import Session

log = logging.getLogger("pgcutover.admin")

ADMIN_DATABASE = "pgcutover"
TEXT, INT8, FLOAT8 = 25, 20, 701

Rows = tuple[Sequence[tuple[str, int]], Sequence[Sequence[object]]]


def result(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[object]], tag: str) -> bytes:
    out = [msg.row_description(columns)]
    out.extend(msg.data_row(None if v is None else str(v) for v in row) for row in rows)
    out.append(msg.command_complete(f"{tag} {len(rows)}" if tag == "SELECT" else tag))
    return b"".join(out)


class AdminConsole:
    """One admin session's command loop. Replies go through `write`; commands run one at a time, in order."""

    def __init__(self, session: Session, write: Callable[[bytes], object]) -> None:
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
                    self.write(msg.error_response("0A000", "the admin console speaks the simple query protocol only"))
        except msg.ProtocolViolation as exc:
            self.write(msg.error_response("08P01", f"pgcutover: {exc}", "FATAL"))
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
                reply = msg.error_response("22023", str(exc))
            except Exception as exc:  # an admin command must never take the proxy down
                log.exception("admin command %r failed", sql)
                reply = msg.error_response("XX000", f"pgcutover: {exc}")
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
        conn = await control.connect(self.rt.config)
        try:
            change = await control.set_route(conn, self.rt.config, args[0], float(args[1]), actor=self.actor(),
                                             reason="SET SPLIT")
        finally:
            await conn.close()
        return msg.notice_response(f"{change.table}: split {change.previous_split:g} -> {change.split:g} "
                                   f"(generation {change.generation})") + msg.command_complete("SET")

    async def rollback(self, args: list[str]) -> bytes:
        conn = await control.connect(self.rt.config)
        try:
            changes = await control.rollback(conn, self.rt.config, args or None, actor=self.actor())
        finally:
            await conn.close()
        notes = b"".join(msg.notice_response(f"{c.table}: split {c.previous_split:g} -> 0 (generation "
                                             f"{c.generation})") for c in changes)
        return notes + msg.command_complete("ROLLBACK")

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
               ("generation", INT8), ("changed_by", TEXT), ("changed_at", TEXT)]
    rows = []
    for route in rt.routing.routes:
        override = rt.routing.overrides.get(route.table)
        rows.append([route.table, route.column, route.pg_vector_column, route.shadow_table, route.shadow_type,
                     route.split, route.sticky, route.fallback if route.legacy_column else None,
                     override.generation if override else 0,
                     override.changed_by if override else "config file", override.changed_at if override else None])
    return columns, rows


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
    columns = [("table", TEXT), ("state", TEXT), ("legacy_rows", INT8), ("bytes", INT8), ("skipped_rows", INT8),
               ("refresh_lag_s", FLOAT8), ("notices_applied", INT8), ("reconciles", INT8)]
    rows = []
    service = rt.fallback
    for route in rt.routing.routes:
        if not route.legacy_column:
            continue
        store = service.store_for(route.table) if service is not None else None
        if store is None:
            state = "fallback = false" if not route.fallback else "legacy column is the vector column"
            rows.append([route.table, state, None, None, None, None, None, None])
            continue
        failed = service.failed.get(route.table)
        state = "loaded" if store.loaded else f"load failed: {failed}" if failed else "loading"
        rows.append([route.table, state, len(store), store.nbytes, len(store.skipped), round(store.refresh_lag(), 3),
                     store.notices_applied, store.reconciles])
    return columns, rows


def show_config(rt: Runtime) -> Rows:
    proxy = rt.config.proxy
    items: list[tuple[str, object]] = [
        ("source", rt.config.source), ("listen", proxy.listen), ("upstream", _redact(proxy.upstream.text)),
        ("metrics", proxy.metrics), ("tls", bool(proxy.tls_cert)), ("max_message_size", proxy.max_message_size),
        ("shutdown_timeout", proxy.shutdown_timeout), ("connect_timeout", proxy.connect_timeout),
        ("admin_users", ",".join(rt.config.admin.users)), ("routes", len(rt.routing.routes)),
        ("last_reload_error", rt.last_reload_error or None),
    ]
    return [("key", TEXT), ("value", TEXT)], items


def show_help(_: Runtime) -> Rows:
    lines = ["SHOW ROUTES | STATS | CLIENTS | SERVERS | FALLBACK | CONFIG | REPORT | HELP",
             "SET SPLIT <table> <percent>", "ROLLBACK [<table>]", "RELOAD", "PAUSE", "RESUME", "SHUTDOWN"]
    return [("command", TEXT)], [[line] for line in lines]


def _redact(dsn: str) -> str:
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", dsn)


SHOWS: dict[str, Callable[[Runtime], Rows]] = {
    "ROUTES": show_routes, "STATS": show_stats, "CLIENTS": show_clients, "SERVERS": show_servers,
    "FALLBACK": show_fallback, "CONFIG": show_config, "HELP": show_help, "REPORT": show_report,
}

COMMANDS: dict[str, Callable[[AdminConsole, list[str]], Awaitable[bytes]]] = {
    "SET": AdminConsole.set_command, "ROLLBACK": AdminConsole.rollback, "RELOAD": AdminConsole.reload,
    "PAUSE": AdminConsole.pause, "RESUME": AdminConsole.resume, "SHUTDOWN": AdminConsole.shutdown,
}
