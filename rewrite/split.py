"""The split: which target, primary or shadow, a similarity query on a route runs on.

`split` is the percentage (0..100, decimals allowed) of similarity queries sent to the shadow. A roll is a
point in [0, 100): the query goes to the shadow when the point is below `split`. Sticky modes choose where the
point comes from:

- "query": a fresh random point per query;
- "session": a point derived from a per-connection key, so one client connection stays on one side;
- "application_name": a point derived from the application name, so the same app always goes the same way.

Derived points use blake2b (stable across processes and restarts, unlike the salted builtin `hash`) over the
route's table and the key, so routes roll independently. Because a session's point does not change, raising
the split only ever moves sessions from primary to shadow, and lowering it only moves them back.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from proxy.config import Route

Target = Literal["primary", "shadow"]
PRIMARY: Target = "primary"
SHADOW: Target = "shadow"


class _Random(Protocol):
    def random(self) -> float: ...


def stable_point(route: Route, key: str | bytes | int) -> float:
    """A point in [0, 100) determined by the route's table and `key` alone."""
    if isinstance(key, int):
        key = key.to_bytes(16, "big", signed=True)
    elif isinstance(key, str):
        key = key.encode()
    digest = hashlib.blake2b(route.table.encode() + b"\x00" + key, digest_size=8, person=b"pgcutover-split")
    return int.from_bytes(digest.digest(), "big") / 2**64 * 100.0


def choose_target(route: Route, *, sticky_key_session: int, application_name: str | None,
                  rng: _Random) -> Target:
    """Primary or shadow for one similarity query on `route`."""
    if route.split <= 0 or not route.shadow_table:
        return PRIMARY
    if route.split >= 100:
        return SHADOW
    if route.sticky == "query":
        point = rng.random() * 100.0
    elif route.sticky == "application_name":
        point = stable_point(route, "app:" + (application_name or ""))
    else:
        point = stable_point(route, sticky_key_session)
    return SHADOW if point < route.split else PRIMARY


@dataclass
class SplitSession:
    """The split as one client connection sees it.

    `target_for(route, in_transaction)` rolls by the route's sticky mode; inside an explicit transaction the
    first decision per route holds until the transaction ends (the first call with in_transaction=False).
    """

    session_key: int = field(default_factory=lambda: random.getrandbits(63))
    application_name: str | None = None
    rng: _Random = field(default_factory=random.Random)
    _transaction: dict[str, Target] = field(default_factory=dict)

    def target_for(self, route: Route, in_transaction: bool) -> Target:
        if not in_transaction:
            self._transaction.clear()
            return choose_target(route, sticky_key_session=self.session_key,
                                 application_name=self.application_name, rng=self.rng)
        target = self._transaction.get(route.table)
        if target is None:
            target = choose_target(route, sticky_key_session=self.session_key,
                                   application_name=self.application_name, rng=self.rng)
            self._transaction[route.table] = target
        return target

    def end_transaction(self) -> None:
        self._transaction.clear()


class SplitDecider:
    """Stateless facade for callers that keep their own session state."""

    def __init__(self, rng: _Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, route: Route, *, sticky_key_session: int, application_name: str | None) -> Target:
        return choose_target(route, sticky_key_session=sticky_key_session, application_name=application_name,
                             rng=self.rng)
