"""A client message whose replacement is computed asynchronously (e.g. a fallback kNN search)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from .protocol.replies import Outgoing


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
