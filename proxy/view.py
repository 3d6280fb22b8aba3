"""The narrow, read-only view of a session its collaborators get (proxy/statements.py, the routing): the few
things they read. They never hold the Session itself: what they want done (messages sent, replies owed, a
notice, a guarded cycle) they return to it (proxy/deferred.py's Outgoing), and the session does it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .runtime import Runtime


class SessionView(Protocol):
    @property
    def rt(self) -> Runtime: ...

    @property
    def user(self) -> str: ...

    @property
    def database(self) -> str: ...

    @property
    def application_name(self) -> str: ...

    @property
    def server_params(self) -> Mapping[str, str]:
        """ParameterStatus values as the server last reported them (search_path, ...)."""

    @property
    def tx_status(self) -> int:
        """The transaction status of the last ReadyForQuery (protocol/codes.py TX_*)."""

    @property
    def replies_idle(self) -> bool:
        """The server owes no reply: a message now starts a new cycle."""

    @property
    def replies_skipping(self) -> bool:
        """An error came back and its Sync is not sent yet: the server discards what is sent meanwhile."""

    @property
    def guarded_cycle(self) -> bool:
        """A shadow-routed cycle is in flight that fails over to the primary if it fails."""


class ConsoleSession(Protocol):
    """What the admin console (proxy/admin.py) reads of its own session, and the one thing it may ask: close."""

    @property
    def rt(self) -> Runtime: ...

    @property
    def user(self) -> str: ...

    @property
    def peer(self) -> str: ...

    def close(self) -> None: ...
