"""The client's socket: an asyncio Protocol that only moves bytes into its Session."""

from __future__ import annotations

import asyncio

from .session import Session


class ClientProtocol(asyncio.Protocol):
    def __init__(self, session: Session) -> None:
        self.session = session
        # uvloop caches protocol.data_received when the transport is made: handing it the session's own
        # method saves a Python frame on every read of every client.
        self.data_received = session.client_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.client_connected(transport)

    def data_received(self, data: bytes) -> None:  # replaced per instance in __init__
        self.session.client_data(data)

    def eof_received(self) -> bool:
        return False  # half-closed clients are closed: Postgres has no use for half-open sessions

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.client_lost()

    # The client cannot keep up: stop reading the server until it drains.
    def pause_writing(self) -> None:
        self.session.pause_server_reading()

    def resume_writing(self) -> None:
        self.session.resume_server_reading()
