"""The split: which target, primary or shadow, a similarity query on a route runs on.

`split` is the percentage (0..100, decimals allowed) of similarity queries sent to the shadow. A roll is a
point in [0, 100): the query goes to the shadow when the point is below `split`. Sticky modes choose where the
point comes from:

- "query": a fresh random point per query;
- "session": a point derived from a per-connection key, so one client connection stays on one side;
- "application_name": a point derived from the application name, so the same app always goes the same way
  (the name the session had at its first similarity query on the route: the point then stays put).

Derived points use blake2b (stable across processes and restarts, unlike the salted builtin `hash`) over the
route's table and the key, so routes roll independently. Because a session's point does not change, raising
the split only ever moves sessions from primary to shadow, and lowering it only moves them back: split 0 (a
rollback) puts every session on the primary at its next transaction, whatever its sticky mode.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pgcutover.core.enums import StickyMode, Target
from pgcutover.rewrite.txcontrol import BEGIN, CHAIN, END

if TYPE_CHECKING:
    from pgcutover.core.config import Route

PRIMARY = Target.PRIMARY
SHADOW = Target.SHADOW
_IDLE = ord("I")


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
    if route.sticky == StickyMode.QUERY:
        point = rng.random() * 100.0
    elif route.sticky == StickyMode.APPLICATION_NAME:
        point = stable_point(route, "app:" + (application_name or ""))
    else:
        point = stable_point(route, sticky_key_session)
    return SHADOW if point < route.split else PRIMARY


IDLE, IMPLICIT, EXPLICIT = "idle", "implicit", "explicit"


@dataclass
class SplitSession:
    """The split as one client connection sees it, and where that connection is in its transactions.

    Each transaction takes one target per route, chosen at its first routed statement against the split in
    force then, and the next transaction chooses again: a split change (a rollback above all) reaches every
    session at its next transaction, and no transaction reads from both targets. Outside a transaction each
    statement is its own transaction and chooses afresh.

    The state follows the client's own stream (the session calls the event methods in the order the client
    sends the statements), so a statement pipelined after a BEGIN knows it is inside that transaction before
    any ReadyForQuery says so:

    - IMPLICIT: the statements of one simple Query, or the extended-protocol executions up to a Sync, run as
      one transaction when no explicit one is open (`implicit()` ... `sync()`);
    - EXPLICIT: from BEGIN / START TRANSACTION to COMMIT / END / ROLLBACK / ABORT / PREPARE TRANSACTION
      (`effect()` with rewrite.txcontrol's classification); savepoints stay inside;
    - `ready()` with ReadyForQuery's status, when nothing else is in flight, settles what the server did
      (a BEGIN that failed, a COMMIT skipped after an error): 'I' ends the transaction, 'T' and 'E' (a failed
      transaction: the pin holds until the client ends it) keep it.
    """

    session_key: int = field(default_factory=lambda: random.getrandbits(63))
    application_name: str | None = None
    rng: _Random = field(default_factory=random.Random)
    state: str = IDLE
    _pins: dict[str, Target] = field(default_factory=dict)  # route table -> target of the open transaction
    _points: dict[tuple[str, str], float] = field(default_factory=dict)  # (table, sticky mode) -> point

    @property
    def in_transaction(self) -> bool:
        return self.state is not IDLE

    @property
    def explicit(self) -> bool:
        return self.state is EXPLICIT

    def target_for(self, route: Route) -> Target:
        """The target of a routed statement on `route` now (pinned for the rest of an open transaction)."""
        if self.state is IDLE:
            return self._choose(route)
        target = self._pins.get(route.table)
        if target is None:
            target = self._pins[route.table] = self._choose(route)
        return target

    def _choose(self, route: Route) -> Target:
        if route.sticky == StickyMode.QUERY or not 0 < route.split < 100 or not route.shadow_table:
            return choose_target(route, sticky_key_session=self.session_key,
                                 application_name=self.application_name, rng=self.rng)
        return SHADOW if self._point(route) < route.split else PRIMARY

    def _point(self, route: Route) -> float:
        """The session's point for a sticky route: taken once and kept, so that only a split change moves
        the session, and only in the direction of the change (a later SET application_name does not)."""
        key = (route.table, route.sticky)
        point = self._points.get(key)
        if point is None:
            if route.sticky == StickyMode.APPLICATION_NAME:
                point = stable_point(route, "app:" + (self.application_name or ""))
            else:
                point = stable_point(route, self.session_key)
            self._points[key] = point
        return point

    # -- transaction events, in the client's order ---------------------------------------------------------
    def implicit(self) -> None:
        """A statement is about to run: outside an explicit transaction it opens (or joins) an implicit one."""
        if self.state is IDLE:
            self.state = IMPLICIT

    def sync(self) -> None:
        """The end of a simple Query or a Sync: an implicit transaction is over."""
        if self.state is IMPLICIT:
            self._end()

    def effect(self, effect: int) -> None:
        """A transaction-control statement runs (rewrite.txcontrol.BEGIN / END / CHAIN)."""
        if effect == BEGIN:
            self.state = EXPLICIT  # an implicit block that gets a BEGIN keeps what it chose: it is one transaction
        elif effect == END:
            self._end()
        elif effect == CHAIN:
            self._end()
            self.state = EXPLICIT

    def ready(self, status: int) -> None:
        """ReadyForQuery's transaction status (b'I', b'T' or b'E'), with nothing else in flight."""
        if status == _IDLE:
            self._end()
        elif self.state is not EXPLICIT:
            self.state = EXPLICIT  # a transaction the client opened in a way we did not see (e.g. in a function)

    def _end(self) -> None:
        self.state = IDLE
        self._pins.clear()
