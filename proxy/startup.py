"""Connection set-up of one client session: SSL/GSS negotiation and the TLS handshake, CancelRequest relay, the
upstream connect and the startup packet relay, and the admin console's own login ([admin] auth = "local").

The session (proxy/session.py) hands its client's bytes here while it is in state startup (and local-auth); this
module opens the upstream connection and moves the session to auth (the server's authentication exchange is then
relayed by the session's framing loops) or to relay (a startup packet the server will refuse). It follows the
server's ProcessStartupPacket: the same answers, SQLSTATEs and texts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from typing import TYPE_CHECKING

from pgcutover.core import sqlstate

from . import states
from .admin import ADMIN_DATABASE
from .admin_handoff import hand_over_to_admin
from .protocol import codes
from .protocol import messages as msg
from .protocol.framing import FirstPacketReader
from .states import CLOSED, STARTUP
from .upstream import UpstreamError, address_of, open_upstream, send_cancel

if TYPE_CHECKING:
    from .admin import LocalLogin
    from .session import Session

log = logging.getLogger("pgcutover.session")

# Before ReadyForQuery no client message above this is buffered or even accepted (an unauthenticated client
# must not make the proxy grow); authentication messages are far smaller (the server caps them at 65535).
PRE_AUTH_LIMIT = 64 * 1024
_AFTER_SSL = "received unencrypted data after SSL request"
_MITM_DETAIL = "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack."


class Startup:
    """One session's way in: from its first byte to the startup packet sent upstream (or refused)."""

    def __init__(self, session: Session, tls_context: ssl.SSLContext | None) -> None:
        self.session = session
        self.tls_context = tls_context
        self._first = FirstPacketReader()
        self._ssl_done = self._gss_done = False  # as the server's ProcessStartupPacket tracks them
        self.over_limit = False  # connected beyond max_client_conn: refused with 53300 at its startup packet
        self._login: LocalLogin | None = None
        self.task: asyncio.Task | None = None  # the TLS handshake or the upstream connect
        self._cancel_task: asyncio.Task | None = None  # a relayed CancelRequest (held so it is not collected)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- first packets --------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes of the first packets (state startup)."""
        self._first.feed(data)
        try:
            while self.session.state == STARTUP:
                packet = self._first.next_packet()
                if packet is None:
                    return
                self._on_first_packet(packet)
        except msg.StartupFatal as exc:  # what the server itself answers (its own SQLSTATE and text)
            self._startup_problem(exc.text)
            if self.session.client_transport is not None:
                self.session._to_client(msg.error_response(exc.sqlstate, exc.text, "FATAL", exc.detail))
            self.session.close()
        except msg.StartupRefused as exc:  # the server only logs these and closes: no message either
            self._startup_problem(str(exc))
            self.session.close()
        except msg.ProtocolViolation as exc:
            self.session._violation(str(exc))

    def _startup_problem(self, text: str) -> None:
        self.session._count_problem(logging.INFO, "startup refused", text)

    def _on_first_packet(self, packet: msg.FirstPacket) -> None:
        # SSL and GSS negotiation follow the server's ProcessStartupPacket: each may come once, except that
        # a declined GSSENCRequest allows an SSLRequest again (and a declined SSLRequest a GSSENCRequest).
        # A repeated one is an "unsupported frontend protocol" like any unknown code.
        if isinstance(packet, msg.SSLRequest):
            if self._ssl_done:
                raise msg.StartupFatal(sqlstate.FEATURE_NOT_SUPPORTED, _unsupported_protocol(codes.SSL_REQUEST))
            if self.tls_context is not None:
                if self._first.take_rest():
                    raise msg.StartupFatal(sqlstate.PROTOCOL_VIOLATION, _AFTER_SSL, _MITM_DETAIL)
                self.session._to_client(b"S")
                self._ssl_done = self._gss_done = True
                self.session._to(states.TLS_REQUESTED)  # nothing may arrive until the handshake is done
                self.task = asyncio.get_running_loop().create_task(self._start_tls())
            else:
                self.session._to_client(b"N")
                self._ssl_done, self._gss_done = True, False
                if self._first.buffered:
                    raise msg.StartupFatal(sqlstate.PROTOCOL_VIOLATION, _AFTER_SSL, _MITM_DETAIL)
        elif isinstance(packet, msg.GSSEncRequest):
            if self._gss_done:
                raise msg.StartupFatal(sqlstate.FEATURE_NOT_SUPPORTED, _unsupported_protocol(codes.GSSENC_REQUEST))
            self.session._to_client(b"N")
            self._ssl_done, self._gss_done = False, True
            if self._first.buffered:
                raise msg.StartupFatal(sqlstate.PROTOCOL_VIOLATION,
                                       "received unencrypted data after GSSAPI encryption request", _MITM_DETAIL)
        elif isinstance(packet, msg.CancelRequest):
            self._forward_cancel(packet)
        else:
            self._on_startup(packet)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        transport = self.session.client_transport
        assert transport is not None and self.tls_context is not None
        try:
            new_transport = await loop.start_tls(transport, transport.get_protocol(), self.tls_context,
                                                 server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.session.peer, exc)
            self.session.close()
            return
        if new_transport is None:
            self.session.close()
            return
        if self.session.state == CLOSED:
            new_transport.close()
            return
        self.session.client_transport = new_transport
        self.session._to_client = new_transport.write
        self.session._to(states.TLS_DONE)

    def _forward_cancel(self, packet: msg.CancelRequest) -> None:
        """Relay the CancelRequest to the upstream as received; the server checks the key itself.

        The client's socket is closed once the server has closed ours, as a direct cancel would see it: a
        client that waits for that close (libpq does) knows the signal has been delivered."""
        self.session._to(states.CANCEL_REQUESTED)  # like the server, ignore whatever follows the request
        self.session.rt.totals.cancels_forwarded += 1
        self._end_store_wait(packet)
        addr = address_of(self.session.rt.config.proxy.upstream)
        # Not cancelled when the client hangs up first: many clients close right after sending the request.
        self._cancel_task = asyncio.get_running_loop().create_task(send_cancel(addr, packet.raw))
        self._cancel_task.add_done_callback(lambda _: self.session.close())

    def _end_store_wait(self, packet: msg.CancelRequest) -> None:
        """A query waiting for a fallback store has not reached the server: the server's cancel would miss it,
        so the proxy ends that wait itself (57014). The key is matched against the sessions' real server keys
        (a linear scan: cancels are rare and sessions bounded by max_client_conn)."""
        for session in self.session.rt.sessions:
            key, routing = session.key, session.routing
            if (key is not None and routing is not None and key.pid == packet.pid
                    and hmac.compare_digest(key.secret, packet.secret)):
                routing.cancel_wait()
                return

    def _on_startup(self, startup: msg.Startup) -> None:
        self.session.startup = startup
        if self.session.rt.shutting_down:
            self.session.fail_client(sqlstate.ADMIN_SHUTDOWN, "pgcutover is shutting down")
            return
        if self.over_limit and not self._admin_may_exceed(startup):
            # PostgreSQL's own words and SQLSTATE for a full server, after the startup packet as it does
            self.session.fail_client(sqlstate.TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            return
        if not startup.valid:  # bad version or layout: let the server answer it, in its own words and format
            self.session._to(states.CONNECT)
            self.task = asyncio.get_running_loop().create_task(self._connect())
            return
        if startup.params.get("database") == ADMIN_DATABASE and self.session.rt.config.admin.auth == "local":
            self._start_local_login(startup)
            return
        if startup.params.get("database") == ADMIN_DATABASE:
            if startup.params["user"] not in self.session.rt.config.admin.users:
                self.session.fail_client(sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                                         f'pgcutover: user "{startup.params["user"]}" is not an admin user')
                return
            self.session.admin_requested = True  # authenticated by the upstream, then served by the proxy itself
        rest = self._first.take_rest()
        if rest:
            self.session._early.append(rest)
        self.session._to(states.CONNECT)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    def _start_local_login(self, startup: msg.Startup) -> None:
        """The console's own SCRAM exchange: no upstream connection at all, so it works with the server down."""
        from .admin import LocalLogin

        self.session.admin_requested = True
        self.session._to(states.LOCAL_LOGIN)
        self._login = LocalLogin(self.session.rt.config.admin, startup, self.session._to_client, PRE_AUTH_LIMIT)
        self._login.begin()
        rest = self._first.take_rest()
        if rest:
            self.local_login_data(rest)

    def local_login_data(self, data: bytes) -> None:
        from .admin import LoginFailed

        assert self._login is not None
        try:
            done = self._login.feed(data)
        except LoginFailed as exc:
            if exc.sqlstate:
                self.session.fail_client(exc.sqlstate, exc.text)
            else:
                self.session.close()
            return
        if done:
            rest = bytes(self._login.reader._buf)
            self._login = None
            hand_over_to_admin(self.session)
            if rest:
                self.session.client_data(rest)

    def _admin_may_exceed(self, startup: msg.Startup) -> bool:
        """The console stays reachable during a connection storm (as superuser_reserved_connections would)."""
        return (startup.params.get("database") == ADMIN_DATABASE
                and startup.params.get("user") in self.session.rt.config.admin.users
                and len(self.session.rt.sessions) <= 2 * self.session.rt.config.proxy.max_client_conn)

    async def _connect(self) -> None:
        from .server_side import ServerProtocol

        dsn = self.session.rt.config.proxy.upstream
        protocol = ServerProtocol(self.session)
        assert self.session.startup is not None
        relay = not self.session.startup.valid
        if relay:  # the server's answer may not even be protocol 3 (a 2.0 client gets a 2.0-style error)
            protocol.data_received = self.relay_from_server  # type: ignore[method-assign]
        try:
            transport = await open_upstream(dsn, protocol, self.session.rt.config.proxy.connect_timeout)
        except UpstreamError as exc:
            self.session.rt.upstream_ok = False
            self.session.rt.totals.upstream_errors += 1
            log.warning("session %s: %s", self.session.peer, exc)
            self.session.fail_client(sqlstate.CONNECTION_FAILURE, f"pgcutover: {exc}")
            return
        if self.session.state == CLOSED:
            transport.close()
            return
        self.session.rt.upstream_ok = True
        self.session.upstream_addr = address_of(dsn)
        self.session.server_transport = transport
        self.session._to_server = transport.write
        if relay:
            self.session._to(states.RELAY_STARTUP)
            transport.write(self.session.startup.raw)
            early, self.session._early = self.session._early, []
            for chunk in early:
                transport.write(chunk)
            return
        if self.session.admin_requested:
            params = {**self.session.startup.params, "database": dsn.database}
            self.session.send_startup(msg.startup_packet(params, self.session.startup.version))
        else:
            self.session.send_startup(self.session.startup.raw)  # byte for byte: user, database, options, version

    def relay_from_server(self, data: bytes) -> None:
        """RELAY: the server's answer to a startup packet it refuses goes to the client as it comes."""
        self.session.bytes_from_server += len(data)
        self.session.fatal_from_server = True  # whatever it says is its own account of the close
        self.session._to_client(data)


def _unsupported_protocol(code: int) -> str:
    """The server's message for a first packet code it does not know (it supports 3.0 to 3.2)."""
    latest = codes.PROTOCOL_3_2
    return (f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports "
            f"{codes.PROTOCOL_3_0 >> 16}.0 to {latest >> 16}.{latest & 0xFFFF}")
