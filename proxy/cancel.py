"""Cancel keys: the server's own BackendKeyData goes to the client unchanged, so cancels need no table.

A client cancels by opening a new connection and sending CancelRequest(pid, secret). One proxy has one
upstream, so the proxy forwards that packet to it byte for byte: the server checks the key, exactly as for
a direct connection. Handing out the real key keeps every client-visible identity intact (libpq's
PQbackendPID, psycopg's `info.backend_pid`, asyncpg's `get_server_pid()`, the pid of a NotificationResponse,
`pg_terminate_backend(pid)`, pg_stat_activity). The proxy keeps the key only for the cancels it sends
itself (a client vanishing mid-query, a shadow timeout, shutdown).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendKey:
    """The server's BackendKeyData for one session: 4 bytes of secret in 3.0, up to 256 in 3.2."""

    pid: int
    secret: bytes
