"""What the routing (proxy/statements.py) returns to the session for one client message: an Outgoing now, or a
Deferred whose replacement is computed asynchronously (e.g. a fallback kNN search). The session applies either:
it alone writes the reply queue, sends the messages, the notice, and starts guarding a cycle."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What goes upstream for one client message, and the replies it owes, in order.

    `data` None: the client's message as it came. `replies`: (kind, action) entries of protocol/replies.py, e.g.
    ((PARSE, DROP), (BIND, FORWARD)) for a Parse of ours whose ParseComplete the client must not see, then the
    client's Bind. `notice`: a NoticeResponse text for the client (an inexact answer it must hear about).
    `guard`: the route table of a shadow-routed cycle starting here that may fail over to the primary
    (proxy/failover.py).
    """

    data: bytes | None
    replies: tuple[tuple[int, int], ...]
    notice: str | None = None
    guard: str | None = None


@dataclass(slots=True)
class Deferred:
    """Returned by the routing instead of an Outgoing: the session holds the client's later bytes, in order, until
    `replacement` resolves to what goes upstream and the replies it owes (the session records them, then sends).
    If it fails, `original` is forwarded as the client sent it, with the reply of its `kind`.
    """

    replacement: Awaitable[Outgoing]
    original: bytes
    kind: int
    replay: bool = False  # once `replacement` is done, route `original` again instead of sending its result
