"""The upstream server's socket: an asyncio Protocol that only moves bytes into its Session."""

from __future__ import annotations

import asyncio

from .session import Session


class ServerProtocol(asyncio.Protocol):
    def __init__(self, session: Session) -> None:
        self.session = session
        self.data_received = session.server_data  # type: ignore[method-assign]  # see ClientProtocol

    def data_received(self, data: bytes) -> None:  # replaced per instance in __init__
        self.session.server_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.server_lost()

    # The server cannot keep up (a large COPY): stop reading the client until it drains.
    def pause_writing(self) -> None:
        self.session.pause_client_reading()

    def resume_writing(self) -> None:
        self.session.resume_client_reading()
