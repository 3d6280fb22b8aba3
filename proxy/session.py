"""One client session after its set-up: the two byte paths between client and server, and what rides on them.

- the session's state, moved only through proxy/states.py's transition table;
- client -> server: frames the client's bytes, keeps the reply queue (protocol/replies.py) of what the server
  owes, hands Query/Parse (and Bind/Close of routed statements) to proxy/statements.py and applies what it
  returns: the message unchanged, bytes in its place, or a Deferred (the client's later bytes wait, in order,
  until it resolves);
- server -> client: frames the server's bytes, pops the reply queue, drops the replies owed to messages of the
  proxy's own, and tracks ReadyForQuery, BackendKeyData, ParameterStatus and ErrorResponse;
- the failover of a guarded shadow-routed cycle (proxy/failover.py): replies held back, re-run on the primary;
- PAUSE/RESUME from the admin console, the shutdown drain, flow control between the two sockets.

Set-up lives elsewhere: SSL/GSS negotiation, the TLS handshake, the upstream connect and the startup relay in
proxy/startup.py; the admin console's hand-off in proxy/admin_handoff.py. The session is given the transports
by client_side/server_side and writes through their `write`; it opens no socket itself, except the short
connection of a CancelRequest it sends for its own client (proxy/upstream.py's send_cancel).

Both paths walk message headers in place and forward the caller's buffer whole whenever nothing in it changes,
so a pass-through query costs one read and one write per direction and no per-message allocation.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgcutover.core import sqlstate as errcodes  # `sqlstate` names a parameter here
from pgcutover.core.enums import Target

from . import states
from .admin_handoff import hand_over_to_admin
from .cancel import BackendKey
from .deferred import Deferred, Outgoing
from .failover import ShadowCycle
from .protocol import codes, replies
from .protocol import messages as msg
from .protocol.replies import FORWARD, ReplyTracker
from .protocol.replies import STARTUP as STARTUP_CYCLE
from .startup import PRE_AUTH_LIMIT, Startup
from .statements import StatementRouting
from .states import (
    ACTIVE,
    ADMIN,
    AUTH,
    CANCELLING,
    CLOSED,
    CONNECTING,
    LOCAL_AUTH,
    PAUSED,
    RELAY,
    STARTUP,
    TERMINATING,
    WAITING,
    transition,
)
from .upstream import UpstreamAddress, send_cancel

if TYPE_CHECKING:
    from .admin import AdminConsole
    from .runtime import Runtime

log = logging.getLogger("pgcutover.session")

_unpack_i32 = struct.Struct("!i").unpack_from

_WAITING_BUFFER = 1 << 20  # client bytes held while waiting before its socket stops being read
_PRE_AUTH_STATES = frozenset((STARTUP, CONNECTING, AUTH, RELAY, LOCAL_AUTH))


class _RateLimit:
    """At most `per_second` log lines a second; says how many were held back when it speaks again."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.window = 0
        self.count = 0
        self.suppressed = 0

    def allow(self) -> int | None:
        now = int(time.monotonic())
        if now != self.window:
            self.window, self.count = now, 0
        self.count += 1
        if self.count > self.per_second:
            self.suppressed += 1
            return None
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


_violation_log = _RateLimit(per_second=5)

_ROUTED_TYPES = frozenset((codes.F_QUERY, codes.F_PARSE))  # held whole and shown to the router
_STATEMENT_TYPES = _ROUTED_TYPES | {codes.F_BIND, codes.F_CLOSE}
_SERVER_WHOLE = frozenset((codes.B_READY, codes.B_BACKEND_KEY, codes.B_PARAM_STATUS, codes.B_ERROR))
_DATA_ROW = codes.B_DATA_ROW
_FRONTEND = codes.FRONTEND_TYPES
_TERMINATE = codes.F_TERMINATE
_FLUSH = codes.F_FLUSH
_PORTAL = ord("P")
_CLIENT_KIND = replies.CLIENT_KIND
_COMPLETES = replies.COMPLETES
_NEEDS_TRACKER = replies.NEEDS_TRACKER
_READY = codes.B_READY
_ENDS_CYCLE = frozenset((replies.SYNC, replies.QUERY))  # plain entries a ReadyForQuery completes
_QUERY, _DESCRIBE_STATEMENT, _DESCRIBE_PORTAL, _COPY_END, _SYNC = (
    replies.QUERY, replies.DESCRIBE_STATEMENT, replies.DESCRIBE_PORTAL, replies.COPY_END, replies.SYNC)

Writer = Callable[[bytes], object]


class Session:
    """State machine of one client connection. Fed bytes by client_side/server_side; writes via callables."""

    def __init__(self, runtime: Runtime, tls_context: ssl.SSLContext | None = None) -> None:
        self.rt = runtime
        self.state = STARTUP
        self.tracker = ReplyTracker()
        self.startup: msg.Startup | None = None
        self.server_params: dict[str, str] = {}
        self.tx_status = codes.TX_IDLE
        self.key: BackendKey | None = None  # the server's, as the client also has it
        self.upstream_addr: UpstreamAddress | None = None
        self.peer: str = "?"
        self.max_message = min(PRE_AUTH_LIMIT, runtime.config.proxy.max_message_size)  # raised at ReadyForQuery
        self._startup_timer: asyncio.TimerHandle | None = None

        self.client_transport: asyncio.BaseTransport | None = None
        self.server_transport: asyncio.Transport | None = None
        self._to_client: Writer = _nowhere
        self._to_server: Writer = _nowhere
        self.setup = Startup(self, tls_context)  # the way in: TLS, the upstream connect, the startup relay
        self._early: list[bytes] = []  # client bytes that arrived before the upstream was ready
        self._deferred_task: asyncio.Task | None = None
        self._cycle: ShadowCycle | None = None  # a shadow-routed cycle that may fail over to the primary
        self.cycle_request: str | None = None  # the routing's Outgoing.guard: start guarding at the current message
        self._hold_types: frozenset[int] = _ROUTED_TYPES if runtime.router is not None else frozenset()
        self.routing: StatementRouting | None = StatementRouting(self) if runtime.router is not None else None
        self._plain_ready = self.routing is None  # ReadyForQuery needs no hook but the state check

        # client -> server framing state
        self._cpend = bytearray()  # a message held back until whole (or a partial header)
        self._cneed = 0  # bytes _cpend must reach before it is looked at again (0: header incomplete)
        self._cskip = 0  # bytes of a streamed message still to come: forwarded without looking
        # server -> client framing state
        self._spend = bytearray()
        self._sneed = 0
        self._sskip = 0
        self._sdrop = False  # the streamed message is being dropped rather than forwarded

        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self.messages_from_client = 0
        self.queries = 0
        self.fatal_from_server = False
        self.connected_at = time.monotonic()
        self.admin_requested = False
        self.admin: AdminConsole | None = None

    def _to(self, event: str) -> None:
        """The one way the session changes state: proxy/states.py's table (SessionStateError otherwise)."""
        self.state = transition(self.state, event)

    # -- wiring ---------------------------------------------------------------------------------------------
    def client_connected(self, transport: asyncio.BaseTransport) -> None:
        self.client_transport = transport
        self._to_client = transport.write  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.rt.sessions.add(self)
        self.rt.totals.client_connections += 1
        proxy = self.rt.config.proxy
        self._startup_timer = asyncio.get_running_loop().call_later(proxy.startup_timeout, self._startup_expired)
        if len(self.rt.sessions) > proxy.max_client_conn:
            self.setup.over_limit = True
            if len(self.rt.sessions) > 2 * proxy.max_client_conn:  # a flood: not even a startup packet is read
                self.close()

    def _startup_expired(self) -> None:
        """startup_timeout passed before ReadyForQuery: close silently, as the server's authentication_timeout."""
        if self.state in _PRE_AUTH_STATES or self.state == CANCELLING:
            self._count_problem(logging.INFO, "closing", "startup not finished within startup_timeout")
            self.close()

    def _startup_done(self) -> None:
        """ReadyForQuery reached the client: the normal message limit and no startup deadline from now on."""
        self.max_message = self.rt.config.proxy.max_message_size
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None

    def client_lost(self) -> None:
        if self.state == CLOSED:
            return
        in_flight = not self.tracker.idle and self.state in (ACTIVE, WAITING)
        self._to(states.CLOSE)
        self._cancel_tasks()
        if self.server_transport is not None:
            if in_flight:  # an abrupt disconnect mid-query: stop the backend's work rather than let it run on
                self.cancel_upstream()
            self.server_transport.close()
        self._finish()

    def server_lost(self) -> None:
        if self.state == CLOSED or self.state == ADMIN:
            return
        if self.state == TERMINATING:  # the server's own close after the client's Terminate
            self.close()
            return
        if self.client_transport is not None and not self.fatal_from_server and self._server_at_boundary():
            self._to_client(msg.error_response(errcodes.CONNECTION_FAILURE,
                                               "pgcutover: the upstream server closed the connection unexpectedly",
                                               "FATAL"))
        if not self.fatal_from_server:  # a FATAL from the server is its own account of the close
            self.rt.totals.upstream_errors += 1
        self.close()

    def close(self) -> None:
        """Close both sides (buffered writes are flushed first)."""
        if self.state == CLOSED:
            return
        self._to(states.CLOSE)
        self._cancel_tasks()
        if self.server_transport is not None:
            self.server_transport.close()
        if self.client_transport is not None:
            self.client_transport.close()
        self._finish()

    def _cancel_tasks(self) -> None:
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None
        self.setup.cancel()
        if self._deferred_task is not None and not self._deferred_task.done():
            self._deferred_task.cancel()

    def _finish(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.routing is not None:
            self.routing.release()  # the plans its prepared statements held (rewrite/router.py, hold)
        self.rt.session_ended(self)

    # flow control: a slow reader on one side pauses reading on the other, so memory stays bounded
    def pause_server_reading(self) -> None:
        if self.server_transport is not None and not self.server_transport.is_closing():
            self.server_transport.pause_reading()

    def resume_server_reading(self) -> None:
        if self.server_transport is not None and not self.server_transport.is_closing():
            self.server_transport.resume_reading()

    def pause_client_reading(self) -> None:
        transport = self.client_transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()  # type: ignore[attr-defined]

    def resume_client_reading(self) -> None:
        transport = self.client_transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()  # type: ignore[attr-defined]

    # -- errors ---------------------------------------------------------------------------------------------
    def _server_at_boundary(self) -> bool:
        return not self._sskip and not self._spend

    def fail_client(self, sqlstate: str, text: str) -> None:
        """Send a FATAL error (when it cannot land inside a half-forwarded message) and close the session."""
        if self.client_transport is not None and self._server_at_boundary():
            self._to_client(msg.error_response(sqlstate, text, "FATAL"))
        self.close()

    def _count_problem(self, level: int, what: str, text: str) -> None:
        """A client's protocol or startup problem: counted, and logged at most a few times a second (a hostile
        client must not be able to fill the logs)."""
        self.rt.totals.protocol_errors += 1
        suppressed = _violation_log.allow()
        if suppressed is not None:
            more = f" ({suppressed} more not logged)" if suppressed else ""
            log.log(level, "%s from %s: %s%s", what, self.peer, text, more)

    def _violation(self, text: str, sqlstate: str = errcodes.PROTOCOL_VIOLATION) -> None:
        self._count_problem(logging.WARNING, "protocol violation", text)
        self.fail_client(sqlstate, f"pgcutover: {text}")

    def send_startup(self, packet: bytes) -> None:
        """The upstream is connected (proxy/startup.py): the startup packet goes, its replies are owed, and the
        client's bytes that came meanwhile follow it."""
        self.tracker.expect(STARTUP_CYCLE)
        self._to_server(packet)
        self._to(states.STARTUP_SENT)
        early, self._early = self._early, []
        for chunk in early:
            if self.state != CLOSED:
                self.client_data(chunk)

    # -- client -> server -------------------------------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        """Frame client bytes; forward them whole unless a message is held, rewritten or invalid.

        This is the hot path (uvloop calls it directly): per message it reads the 5-byte header and
        appends the expected reply's kind; the buffer goes out in one write when nothing in it changed.
        """
        state = self.state
        if state is not ACTIVE and state is not AUTH:
            self._client_data_elsewhere(data)
            return
        self.bytes_from_client += len(data)
        if self._cpend:
            self._cpend += data
            if len(self._cpend) < self._cneed:
                return
            data = bytes(self._cpend)
            self._cpend.clear()
            self._cneed = 0
        n = len(data)
        pos = self._cskip
        cycle = self._cycle
        if pos:
            if pos >= n:
                self._cskip = pos - n
                self._to_server(data)
                if cycle is not None:
                    cycle.recorded += data
                return
            self._cskip = 0
        start = 0
        recorded_from = 0  # where this call's bytes of a guarded cycle begin
        tracker = self.tracker
        plain = tracker.plain
        append = tracker.queue.append
        hold = self._hold_types
        maxsize = self.max_message
        count = queries = 0
        while pos < n:
            if n - pos < 5:
                break
            kind = data[pos]
            length = _unpack_i32(data, pos + 1)[0]
            if length < 4 or length > maxsize or kind not in _FRONTEND:
                self._bad_client_header(kind, length)
                return
            end = pos + 1 + length
            if kind in hold:
                if end > n:
                    break
                count += 1
                try:
                    replacement = self._on_client_message(kind, data, pos, end)
                except msg.ProtocolViolation as exc:
                    self._violation(str(exc), getattr(exc, "sqlstate", errcodes.PROTOCOL_VIOLATION))
                    return
                plain = tracker.plain
                hold = self._hold_types
                if self.cycle_request is not None:
                    cycle = self._start_cycle(kind)
                    recorded_from = pos
                elif cycle is not None:
                    cycle.count(kind)
                if replacement is not None:
                    if pos > start:
                        self._to_server(data[start:pos])
                    if replacement.__class__ is Deferred:
                        self.messages_from_client += count
                        self.queries += queries
                        self._wait_for(replacement, data[end:])  # type: ignore[arg-type]
                        return
                    if replacement:
                        self._to_server(replacement)
                    start = end
                if cycle is not None and cycle.simple:
                    self._cycle_sent(data, start, recorded_from, end)
                    return
            else:
                expected = _CLIENT_KIND[kind]
                if expected >= 0:
                    if expected == _DESCRIBE_STATEMENT:
                        if n - pos < 6:
                            break  # its first byte says statement or portal: wait for it
                        if data[pos + 5] == _PORTAL:
                            expected = _DESCRIBE_PORTAL
                    elif expected == _QUERY:
                        queries += 1
                    elif expected == _SYNC and self.routing is not None:
                        self.routing.on_sync()  # a transaction's end as the client sends it (statements.py)
                    if plain:
                        append(expected)
                    else:
                        tracker.expect(expected)
                        plain = tracker.plain
                elif kind == _TERMINATE:
                    self._on_terminate(data, start, end)
                    return
                count += 1
                if cycle is not None:
                    cycle.count(kind)
                    if (expected == _SYNC or kind == _FLUSH) and end <= n:
                        cycle.synced = expected == _SYNC
                        self.messages_from_client += count
                        self._cycle_sent(data, start, recorded_from, end)
                        return
                if end > n:  # stream the rest of this message as it comes; nothing in it matters to us
                    self._cskip = end - n
                    pos = n
                    break
            pos = end
        self.messages_from_client += count
        self.queries += queries
        if cycle is not None:
            cycle.recorded += data[recorded_from:pos]
        if pos < n:
            if pos > start:
                self._to_server(data[start:pos])
            self._cpend += data[pos:]
            self._cneed = (1 + _unpack_i32(data, pos + 1)[0]) if n - pos >= 5 else 5
        elif start == 0:
            self._to_server(data)
        elif start < n:
            self._to_server(data[start:])

    # -- failover of a shadow-routed cycle -------------------------------------------------------------------
    def _start_cycle(self, kind: int) -> ShadowCycle:
        table, self.cycle_request = self.cycle_request, None
        assert table is not None
        self._cycle = ShadowCycle(table, simple=kind == codes.F_QUERY)
        self._cycle.count(kind)
        return self._cycle

    def _cycle_sent(self, data: bytes, start: int, recorded_from: int, end: int) -> None:
        """The whole cycle is upstream: hold the client's next bytes until its ReadyForQuery is judged."""
        cycle = self._cycle
        assert cycle is not None
        if end > start:
            self._to_server(data[start:end])
        cycle.recorded += data[recorded_from:end]
        cycle.sent = True
        route = self.rt.routing.route(cycle.table)
        if route is not None and route.shadow_timeout_ms > 0:
            cycle.timer = asyncio.get_running_loop().call_later(route.shadow_timeout_ms / 1000,
                                                                self._cycle_timed_out, cycle)
        self._to(states.HOLD)
        if end < len(data):
            self._early.insert(0, data[end:])

    def _cycle_timed_out(self, cycle: ShadowCycle) -> None:
        if self._cycle is cycle and not cycle.done and self.cancel_upstream() is not None:
            cycle.timed_out = True

    def _resolve_cycle(self) -> None:
        cycle, self._cycle = self._cycle, None
        assert cycle is not None
        if cycle.timer is not None:
            cycle.timer.cancel()  # type: ignore[attr-defined]
        if self.state == CLOSED:
            return
        self._to(states.RELEASE)
        if cycle.should_fail_over and self.routing is not None:
            log.warning("session %s: shadow of %s failed with %s%s; re-running on the primary", self.peer,
                        cycle.table, cycle.sqlstate, " (timeout)" if cycle.timed_out else "")
            self.rt.count_failover(cycle.table, cycle.sqlstate or "")
            self._to_client(cycle.asynchronous_replies())
            if not cycle.synced:  # the error left the server discarding messages until a Sync: send ours
                self.tracker.expect(replies.SYNC, replies.DROP)
                self._to_server(msg.SYNC)
            self.routing.force_target = Target.PRIMARY
            try:
                self.client_data(bytes(cycle.recorded))
            finally:
                self.routing.force_target = None
        elif cycle.captured:
            self._to_client(cycle.replies())
        self.resume_client_reading()
        while self._early and self.state is ACTIVE:
            self.client_data(self._early.pop(0))

    def _client_data_elsewhere(self, data: bytes) -> None:
        if self.state == ADMIN:
            assert self.admin is not None
            self.admin.feed(data)
        elif self.state == STARTUP:
            self.setup.feed(data)
        elif self.state == CONNECTING or self.state == PAUSED or self.state == WAITING:
            self._early.append(data)
            limit = PRE_AUTH_LIMIT if self.state == CONNECTING else _WAITING_BUFFER
            if self.state == PAUSED or sum(map(len, self._early)) > limit:
                self.pause_client_reading()
        elif self.state == RELAY:
            self._to_server(data)
        elif self.state == LOCAL_AUTH:
            self.setup.local_login_data(data)

    # -- asynchronous routing decisions ---------------------------------------------------------------------
    def _wait_for(self, deferred: Deferred, rest: bytes) -> None:
        """Hold the client's later bytes, in order, until the deferred message's replacement is sent."""
        self._to(states.HOLD)
        if rest:
            self._early.insert(0, rest)
        self._deferred_task = asyncio.get_running_loop().create_task(self._send_deferred(deferred))

    async def _send_deferred(self, deferred: Deferred) -> None:
        try:
            outgoing: Outgoing | None = await deferred.replacement
        except asyncio.CancelledError:
            raise
        except Exception:  # the client still gets an answer: the one its own message gets unchanged
            log.exception("session %s: deferred routing failed; forwarding the message unchanged", self.peer)
            outgoing = None
        if self.state != WAITING:
            return
        if deferred.replay:  # planned off the loop: the message is routed again, from the top, counted once
            self._early.insert(0, deferred.original)
            self.bytes_from_client -= len(deferred.original)
            self.messages_from_client -= 1
            self.queries -= deferred.kind == codes.F_QUERY
        elif outgoing is None:
            self.tracker.expect_client(deferred.kind)
            self._to_server(deferred.original)
        else:
            self.tracker.record(outgoing.replies)
            if outgoing.notice is not None:
                self._notice(outgoing.notice)
            self._to_server(deferred.original if outgoing.data is None else outgoing.data)
        self._to(states.RELEASE)
        self.resume_client_reading()
        while self._early and self.state is ACTIVE:
            self.client_data(self._early.pop(0))

    # -- PAUSE / RESUME (admin console) ---------------------------------------------------------------------
    def pause_if_idle(self) -> None:
        if self.idle and self.rt.paused:
            self._to(states.PAUSE)

    def resume_if_paused(self) -> None:
        if self.state != PAUSED:
            return
        self._to(states.RESUME)
        self.resume_client_reading()
        early, self._early = self._early, []
        for chunk in early:
            if self.state == ACTIVE:
                self.client_data(chunk)

    def _bad_client_header(self, kind: int, length: int) -> None:
        if kind not in _FRONTEND:
            self._violation(f"invalid frontend message type {kind}")
        elif length > self.max_message and self.state in _PRE_AUTH_STATES:
            self._violation(f"message of {length} bytes before authentication exceeds the limit of "
                            f"{self.max_message}")
        elif length > self.max_message:
            self._violation(f"message of {length} bytes exceeds the maximum of {self.max_message}")
        else:
            self._violation(f"invalid message length {length}")

    def _on_terminate(self, data: bytes, start: int, end: int) -> None:
        self._to_server(data[start:end])
        if self.tracker.idle:
            self.close()
        else:  # a Query pipelined before the Terminate: the server answers it, then closes
            self._to(states.TERMINATE)

    def _on_client_message(self, kind: int, data: bytes, pos: int, end: int) -> bytes | Deferred | None:
        """A Query/Parse (and Bind/Close once statements are routed), whole. Returns None to forward it as
        is, or the bytes to send instead; either way the reply queue already holds what the server will owe
        (the routing says what that is; the session alone writes it)."""
        routing = self.routing
        assert routing is not None
        payload = data[pos + 5 : end]
        try:
            if kind == codes.F_QUERY:
                self.queries += 1
                out = routing.on_query(payload)
            elif kind == codes.F_PARSE:
                out = routing.on_parse(payload)
            elif kind == codes.F_BIND:
                out = routing.on_bind(payload)
            else:
                out = routing.on_close(payload)
        except msg.ProtocolViolation:
            raise
        except Exception:  # routing must never cost the client its query: forward it untouched
            log.exception("session %s: routing failed; forwarding the message unchanged", self.peer)
            self.tracker.expect_client(kind)
            return None
        if routing.holds_statement_messages:  # routed named statements exist: Bind and Close are looked at too
            self._hold_types = _STATEMENT_TYPES
        if isinstance(out, Deferred):
            return out
        self.tracker.record(out.replies)
        if out.notice is not None:
            self._notice(out.notice)
        if out.guard is not None:
            self.cycle_request = out.guard
        return out.data

    def _notice(self, text: str, tries: int = 200) -> None:
        """A NoticeResponse to the client (one may come at any time), between two whole server messages: while a
        large reply of an earlier pipelined query streams through, it waits for the boundary (up to ~1 s)."""
        if self.state == CLOSED:
            return
        if self._server_at_boundary():
            self._to_client(msg.notice_response(text, errcodes.WARNING))
        elif tries > 0:
            asyncio.get_running_loop().call_later(0.005, self._notice, text, tries - 1)
        else:  # the refusal is still counted (metrics, SHOW FALLBACK) and logged
            log.warning("could not place the notice %r between server messages", text)

    # -- server -> client -------------------------------------------------------------------------------------
    def server_data(self, data: bytes) -> None:
        """Frame server bytes; only headers are read, plus the few messages the session tracks.

        The hot path for results: DataRows are stepped over by their length; replies that complete a
        request pop the queue inline while nothing queued needs dropping.
        """
        self.bytes_from_server += len(data)
        if self._spend:
            self._spend += data
            if len(self._spend) < self._sneed:
                return
            data = bytes(self._spend)
            self._spend.clear()
            self._sneed = 0
        n = len(data)
        pos = self._sskip
        edits: list[tuple[int, int, bytes]] | None = None
        if pos:
            if pos >= n:
                self._sskip = pos - n
                if not self._sdrop:
                    self._to_client(data)
                return
            self._sskip = 0
            if self._sdrop:
                edits = [(0, pos, b"")]
                self._sdrop = False
        tracker = self.tracker
        special = tracker.special
        queue = tracker.queue
        while pos < n:
            if n - pos < 5:
                break
            kind = data[pos]
            length = _unpack_i32(data, pos + 1)[0]
            end = pos + 1 + length
            if kind == _DATA_ROW and not special:  # the bulk of any result: nothing to look at
                if end > n:
                    self._sskip = end - n
                    pos = n
                    break
                pos = end
                continue
            if length < 4:
                self._upstream_garbage()
                return
            replacement = None
            if kind == _READY and not special and self._plain_ready:
                # once per transaction: the end of a Sync or Query cycle, popped inline when nothing is special
                if end > n:
                    break
                action = FORWARD
                if queue and queue[0] in _ENDS_CYCLE:
                    queue.popleft()
                    while queue and queue[0] == _COPY_END:
                        queue.popleft()
                    self.tx_status = data[pos + 5]
                    if self.state is not ACTIVE or self.rt.attention:
                        self._ready_outside_steady_state()
                else:
                    action = tracker.on_server(kind)
                    self._on_server_message(kind, data, pos, end)
            elif kind in _SERVER_WHOLE:
                if end > n:
                    break
                action = tracker.on_server(kind)
                special = tracker.special
                replacement = self._on_server_message(kind, data, pos, end)
            elif special or kind in _NEEDS_TRACKER:
                action = tracker.on_server(kind)
                special = tracker.special
            else:
                action = FORWARD
                if queue and queue[0] in _COMPLETES[kind]:
                    queue.popleft()
                    while queue and queue[0] == _COPY_END:
                        queue.popleft()
            if action != FORWARD:
                replacement = b""
            if replacement is not None:
                if edits is None:
                    edits = []
                edits.append((pos, min(end, n), replacement))
            if end > n:
                self._sskip = end - n
                self._sdrop = action != FORWARD
                pos = n
                break
            pos = end
        if pos < n:
            self._spend += data[pos:]
            self._sneed = (1 + _unpack_i32(data, pos + 1)[0]) if n - pos >= 5 else 5
        out = (data if pos == n else data[:pos]) if edits is None else _apply_edits(data, pos, edits)
        cycle = self._cycle
        if cycle is None:
            self._to_client(out)
            return
        cycle.capture(out)
        if cycle.sent and self.tracker.idle:
            cycle.done = True  # every reply of the cycle is in (after a Sync: its ReadyForQuery)
        if not cycle.pure:  # no longer guarded: what was held goes out, and so does the rest as it comes
            self._to_client(cycle.replies())
            cycle.captured.clear()
        if cycle.done:
            self._resolve_cycle()

    def _upstream_garbage(self) -> None:
        log.error("session %s: upstream sent a malformed message; closing", self.peer)
        self.rt.totals.upstream_errors += 1
        self.fail_client(errcodes.CONNECTION_FAILURE, "pgcutover: the upstream server sent a malformed message")

    def _on_server_message(self, kind: int, data: bytes, pos: int, end: int) -> bytes | None:
        if kind == codes.B_READY:
            self.tx_status = data[pos + 5]
            if self.routing is not None:
                self.routing.on_ready()
            if self.state is not ACTIVE or self.rt.attention:
                self._ready_outside_steady_state()
            return None
        if kind == codes.B_PARAM_STATUS:
            name, value = msg.parse_parameter_status(data[pos + 5 : end])
            self.server_params[name] = value
            return None
        if kind == codes.B_ERROR:
            if b"SFATAL\0" in data[pos + 5 : end] or b"SPANIC\0" in data[pos + 5 : end]:
                self.fatal_from_server = True
            if self.routing is not None:
                self.routing.on_error(data[pos + 5 : end])
                if self._cycle is not None:
                    self._cycle.on_error(data[pos + 5 : end])
            return None
        # BackendKeyData: the client gets it unchanged (see cancel.py); kept for the cancels we send ourselves
        pid, secret = msg.parse_backend_key_data(data[pos + 5 : end])
        self.key = BackendKey(pid, secret)
        return None

    def _ready_outside_steady_state(self) -> None:
        if self.state == AUTH:
            if self.admin_requested:
                hand_over_to_admin(self)
                return
            self._to(states.READY)  # authentication is over: the hot path takes the client's bytes from now on
            self._startup_done()
        if self.rt.shutting_down and self.tx_status == codes.TX_IDLE and self.tracker.idle:
            # Not now: this ReadyForQuery (and the result before it) is still in the batch being framed,
            # and must reach the client before the FATAL that ends the session.
            asyncio.get_running_loop().call_soon(self._close_if_idle_for_shutdown)
        elif self.rt.paused:
            self.pause_if_idle()

    def cancel_upstream(self) -> asyncio.Task | None:
        """Send the server a CancelRequest for this session's running query, if one is in flight."""
        if self.tracker.idle or self.key is None or self.upstream_addr is None:
            return None
        packet = msg.cancel_request(self.key.pid, self.key.secret)
        return asyncio.get_running_loop().create_task(send_cancel(self.upstream_addr, packet))

    def close_for_shutdown(self) -> None:
        self.fail_client(errcodes.ADMIN_SHUTDOWN, "terminating connection: pgcutover is shutting down")

    def _close_if_idle_for_shutdown(self) -> None:
        if self.idle:
            self.close_for_shutdown()

    @property
    def guarded_cycle(self) -> bool:
        """A shadow-routed cycle is in flight that fails over to the primary if it fails (proxy/failover.py)."""
        return self._cycle is not None

    @property
    def replies_idle(self) -> bool:
        return self.tracker.idle

    @property
    def replies_skipping(self) -> bool:
        return self.tracker.skipping

    @property
    def idle(self) -> bool:
        return self.state == ACTIVE and self.tx_status == codes.TX_IDLE and self.tracker.idle

    @property
    def user(self) -> str:
        return self.startup.params.get("user", "") if self.startup else ""

    @property
    def database(self) -> str:
        return self.startup.params.get("database", self.user) if self.startup else ""

    @property
    def application_name(self) -> str:
        return self.server_params.get("application_name") or (
            self.startup.params.get("application_name", "") if self.startup else "")


def _apply_edits(data: bytes, stop: int, edits: list[tuple[int, int, bytes]]) -> bytes:
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    cursor = 0
    for begin, end, replacement in edits:
        parts.append(view[cursor:begin])
        parts.append(replacement)
        cursor = end
    parts.append(view[cursor:stop])
    return b"".join(parts)


def _nowhere(_: bytes) -> None:
    """Writer before a side is connected: nothing can be sent yet."""
