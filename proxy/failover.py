"""Failover of a single query: a shadow-routed cycle that fails for a reason that is not the client's is
re-run on the primary, and the client only ever sees the primary's answer.

A *cycle* is what the client sends before it waits for replies: one simple Query, or Parse/Bind/Describe/
Execute of one statement up to a Sync or a Flush (asyncpg prepares with Parse/Describe/Flush). It is
guarded only when that is safe to repeat: it starts with nothing else in flight, outside an explicit
transaction, and holds a single routed (read-only, SELECT) statement, so a failed cycle was rolled back by
the server as a whole. While it runs, the client's next bytes wait (they must not overtake the replay) and
the server's replies are held back until every one of them is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcutover.core import sqlstate

from .breaker import shadow_fault
from .protocol import codes
from .protocol.framing import split_messages
from .protocol.messages import parse_error_fields

# Beyond what counts against the shadow (breaker.shadow_fault), these may well be the shadow's doing (a
# renamed column, a missing type or operator class): a replay on the primary settles it at little cost.
_WORTH_A_REPLAY = frozenset((sqlstate.UNDEFINED_COLUMN, sqlstate.UNDEFINED_OBJECT, sqlstate.FEATURE_NOT_SUPPORTED))
_REPLAYABLE_ASYNC = frozenset((codes.B_NOTIFICATION, codes.B_PARAM_STATUS))
_STATEMENT_MESSAGES = frozenset((codes.F_PARSE, codes.F_BIND, codes.F_EXECUTE, codes.F_QUERY,
                                 codes.F_FUNCTION_CALL))
MAX_CAPTURE = 8 * 1024 * 1024  # a similarity result is LIMIT k rows; past this the cycle is not guarded


def worth_failover(sqlstate: str, timed_out: bool) -> bool:
    """Would the same statement on the primary deserve a chance? (57014 only if our own timeout fired.)"""
    return shadow_fault(sqlstate, timed_out=timed_out) or sqlstate in _WORTH_A_REPLAY


@dataclass
class ShadowCycle:
    table: str
    simple: bool  # a simple Query (ends with it) or an extended cycle (ends with Sync)
    recorded: bytearray = field(default_factory=bytearray)  # the client's own bytes of the cycle
    captured: list[bytes] = field(default_factory=list)  # the server's replies, held back
    captured_size: int = 0
    statements: int = 0  # Parse/Bind/Execute of other statements make the cycle unsafe to repeat
    sent: bool = False  # the whole cycle went upstream; replies are being awaited
    synced: bool = False  # it ended with Sync (else with Flush: a failed one leaves the server skipping)
    done: bool = False  # its ReadyForQuery arrived
    sqlstate: str | None = None  # first error of the cycle
    timed_out: bool = False
    pure: bool = True
    timer: object | None = None

    def count(self, kind: int) -> None:
        """One statement's Parse, Bind, Execute at most; no other Query: else a repeat could do more."""
        self.statements += 1 if kind in _STATEMENT_MESSAGES else 0
        if self.statements > 3 or (kind == codes.F_QUERY and not self.simple):
            self.pure = False

    def capture(self, data: bytes) -> None:
        self.captured.append(data)
        self.captured_size += len(data)
        if self.captured_size > MAX_CAPTURE:
            self.pure = False

    def on_error(self, payload: bytes) -> None:
        if self.sqlstate is None:
            self.sqlstate = parse_error_fields(payload).get("C", "")

    @property
    def should_fail_over(self) -> bool:
        return self.pure and self.sqlstate is not None and worth_failover(self.sqlstate, self.timed_out)

    def replies(self) -> bytes:
        return b"".join(self.captured)

    def asynchronous_replies(self) -> bytes:
        """Notifications and parameter changes in the discarded replies still belong to the client."""
        kept = [bytes((kind,)) + (len(payload) + 4).to_bytes(4, "big") + payload
                for kind, payload in split_messages(self.replies()) if kind in _REPLAYABLE_ASYNC]
        return b"".join(kept)
