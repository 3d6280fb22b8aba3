"""What all sessions of one proxy process share: config, cancel keys, live sessions, counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cancel import CancelRegistry
from .config import Config

if TYPE_CHECKING:
    from .session import Session


@dataclass
class Totals:
    """Counters of sessions that have ended; live sessions keep their own and are summed at scrape time.

    Plain ints on purpose: prometheus-client counters take a lock per increment, which the per-message
    path cannot afford. The metrics collector reads these when Prometheus asks.
    """

    client_connections: int = 0
    protocol_errors: int = 0
    upstream_errors: int = 0
    bytes_from_client: int = 0
    bytes_from_server: int = 0
    messages_from_client: int = 0
    queries: int = 0
    cancels_forwarded: int = 0


@dataclass
class Runtime:
    config: Config
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    sessions: set[Session] = field(default_factory=set)
    totals: Totals = field(default_factory=Totals)
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    paused: bool = False
    router: Any = None  # rewrite.router.Router once routes are configured
    upstream_ok: bool = False  # last known reachability, for /readyz

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        t = self.totals
        t.bytes_from_client += session.bytes_from_client
        t.bytes_from_server += session.bytes_from_server
        t.messages_from_client += session.messages_from_client
        t.queries += session.queries
