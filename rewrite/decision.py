"""One decision per similarity execution: a value computed by a pure function, applied by the proxy, printed by
`pgcutover explain`.

`decide()` reads a snapshot of one execution (the router's plan, the target the split rolled, whether the merge can
answer it exactly) and of the routing (the route as in force now, whether it has a fallback store). It has no side
effects: counting, mirror admission, metrics and the messages sent happen once, where the proxy applies the value
(proxy/statements.py); `explain` (rewrite/cli.py) prints the same value.

    Forward  the client's bytes, unchanged (not a similarity query on a route, or a shape the router leaves)
    Rewrite  the statement rewritten for one target (primary: the pgvector column; shadow: the shadow table)
    Merge    pgvector rows and the in-memory legacy rows merged: exact over all rows
    Refuse   a route with legacy rows and a shape (or a moment) the merge cannot answer exactly: the route's
             on_inexact says what happens: "error" -> SQLSTATE 0A000; "primary_only" -> pgvector rows + NOTICE

A Merge is what is known before execution; the execution itself may still find it cannot be exact (the store
not loaded in time, an unreadable vector value): the proxy then asks `decide()` again with that reason and
applies the Refuse it gets. An execution is labelled once, with the decision that was applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pgcutover.core import sqlstate
from pgcutover.core.enums import InexactMode, Target

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.plan import Plan

FORWARD, REWRITE, MERGE, REFUSE = "forward", "rewrite", "merge", "refuse"
MERGED = Target.MERGED  # the metrics' target label of a merged execution (it runs on the primary)
REFUSED = Target.REFUSED  # ... of one refused with an error: no target answered it
INEXACT_SQLSTATE = sqlstate.FEATURE_NOT_SUPPORTED  # on_inexact = "error"
CANCELED_SQLSTATE = sqlstate.QUERY_CANCELED  # the client's CancelRequest ended a wait for the fallback store
_MERGE_REASON = "exact over all rows"


@dataclass(frozen=True, slots=True)
class Forward:
    """The client's bytes go to the server unchanged."""

    route: str | None  # a route the statement names (a similarity query the router could not plan), else None
    reason: str  # the router's reason
    action: ClassVar[str] = FORWARD
    target: ClassVar[str | None] = None
    error: ClassVar[bool] = False

    def describe(self) -> str:
        return f"forward ({self.reason})"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The statement as the target needs it: `sql` replaces the client's text (None: the client's own bytes)."""

    route: str
    target: str  # primary | shadow
    reason: str
    sql: str | None
    action: ClassVar[str] = REWRITE
    error: ClassVar[bool] = False

    def describe(self) -> str:
        return f"rewrite on {self.route} for the {self.target}"


@dataclass(frozen=True, slots=True)
class Merge:
    """pgvector rows and the fallback store's legacy rows merged into one exact answer (runs on the primary)."""

    route: str
    reason: str = _MERGE_REASON
    action: ClassVar[str] = MERGE
    target: ClassVar[str] = MERGED
    error: ClassVar[bool] = False

    def describe(self) -> str:
        return f"merge on {self.route}: primary pgvector rows + fallback legacy rows, exact over all rows"


@dataclass(frozen=True, slots=True)
class Refuse:
    """No exact answer: an error raised in the client's pipeline (`sqlstate`), or, when a NOTICE suffices
    (`sqlstate` None, on_inexact = "primary_only"), the primary's pgvector rows with a notice."""

    route: str
    reason: str
    on_inexact: str  # error | primary_only
    sqlstate: str | None
    action: ClassVar[str] = REFUSE

    @property
    def error(self) -> bool:
        return self.sqlstate is not None

    @property
    def notice(self) -> bool:
        return self.sqlstate is None

    @property
    def target(self) -> str:
        """The metrics label: an error is answered by no target; a notice-only refusal by the primary."""
        return REFUSED if self.sqlstate is not None else Target.PRIMARY

    @property
    def message(self) -> str:
        if self.sqlstate == CANCELED_SQLSTATE:
            return "canceling statement due to user request"  # as the server says it
        return (f"pgcutover: route {self.route}: this similarity query cannot be answered exactly over all rows "
                f"while legacy rows remain ({self.reason})")

    def describe(self) -> str:
        if self.sqlstate == CANCELED_SQLSTATE:
            return f"refuse on {self.route}: {self.reason} -> SQLSTATE {self.sqlstate}"
        outcome = f"SQLSTATE {self.sqlstate}" if self.sqlstate else "answered from pgvector rows only, with a NOTICE"
        return f"refuse on {self.route}: {self.reason} -> on_inexact = {self.on_inexact}: {outcome}"


Decision = Forward | Rewrite | Merge | Refuse


def decide(plan: Plan, target: str | None, route: Route | None = None, *, store: bool = False,
           unmergeable: str | None = None) -> Decision:
    """The decision for one execution.

    The statement's snapshot: `plan` (the router's), `target` (what the split rolled; None: not rolled, not a
    routed statement), `unmergeable` (why the merge cannot answer this execution exactly; None: it can, as far
    as is known). The routing's: `route` (as in force now: split, on_inexact; default the plan's), `store` (the
    route has a fallback store).
    """
    if plan.route is None or target is None or (plan.passthrough and not (store and target == Target.PRIMARY)):
        return Forward(plan.route.table if plan.route else None, plan.reason)
    route = route or plan.route
    if plan.passthrough:  # a similarity query on a fallback route the router could not plan: never exact
        unmergeable = unmergeable or plan.reason
    if target != Target.PRIMARY or not store:
        return Rewrite(route.table, target, plan.reason, plan.sql_for(target))
    if unmergeable is None:
        return Merge(route.table)
    error = route.on_inexact == InexactMode.ERROR
    return Refuse(route.table, unmergeable, route.on_inexact, INEXACT_SQLSTATE if error else None)


def cancelled(route: Route) -> Refuse:
    """A query whose wait for the fallback store the client cancelled: 57014, whatever on_inexact says."""
    return Refuse(route.table, "query-canceled", route.on_inexact, CANCELED_SQLSTATE)
