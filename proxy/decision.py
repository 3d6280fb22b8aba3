"""One decision per similarity statement, computed the same way by the proxy and by `pgcutover explain`.

A Decision is made from a snapshot of what is known about one execution: the router's plan, the target the split
chose, whether the route has a fallback store, and the merge's outcome (a merge plan, or the reason it cannot
be merged exactly). The session applies it (proxy/statements.py); `explain` prints it (rewrite/cli.py).

    forward  the client's bytes, unchanged (not a similarity query on a route, or a shape the router leaves)
    rewrite  the statement rewritten for one target (primary: the pgvector column; shadow: the shadow table)
    merge    pgvector rows and the in-memory legacy rows merged: exact over all rows
    refuse   a route with legacy rows and a shape (or a moment) the merge cannot answer exactly: the route's
             on_inexact says what happens: "error" -> SQLSTATE 0A000; "primary_only" -> pgvector rows + NOTICE
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgcutover.core.enums import InexactMode, Target

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.plan import Plan

FORWARD, REWRITE, MERGE, REFUSE = "forward", "rewrite", "merge", "refuse"
MERGED = Target.MERGED  # the metrics' target label of a merged execution (it runs on the primary)
REFUSED = Target.REFUSED  # ... of one refused with 0A000 (on_inexact = "error"): no target answered it


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # forward | rewrite | merge | refuse
    route: str | None  # the route's table
    target: str | None  # the metrics label: primary | shadow | fallback_merged | fallback_refused (None: forward)
    reason: str  # the router's reason, "similarity", "exact over all rows", or the refusal reason
    on_inexact: str | None = None  # for refuse: error | primary_only

    @property
    def error(self) -> bool:
        return self.action == REFUSE and self.on_inexact == InexactMode.ERROR

    def describe(self) -> str:
        if self.action == FORWARD:
            return f"forward ({self.reason})"
        if self.action == REFUSE:
            outcome = ("SQLSTATE 0A000" if self.error
                       else "answered from pgvector rows only, with a NOTICE")
            return f"refuse on {self.route}: {self.reason} -> on_inexact = {self.on_inexact}: {outcome}"
        if self.action == MERGE:
            return f"merge on {self.route}: primary pgvector rows + fallback legacy rows, exact over all rows"
        return f"rewrite on {self.route} for the {self.target}"


def decide(plan: Plan, target: str | None, route: Route | None = None, *, store: bool = False,
           unmergeable: str | None = None) -> Decision:
    """The decision for one execution. `route`: the route as in force now (split, on_inexact; default the
    plan's); `store`: the route has a fallback store; `unmergeable`: why the merge cannot answer this execution
    exactly (None: it can, as far as is known)."""
    if plan.route is None or target is None or (plan.passthrough and not (store and target == Target.PRIMARY)):
        return Decision(FORWARD, plan.route.table if plan.route else None, None, plan.reason)
    route = route or plan.route
    if plan.passthrough:  # a similarity query on a fallback route the router could not plan: never exact
        unmergeable = unmergeable or plan.reason
    if target != Target.PRIMARY or not store:
        return Decision(REWRITE, route.table, target, plan.reason)
    if unmergeable is None:
        return Decision(MERGE, route.table, MERGED, "exact over all rows")
    return Decision(REFUSE, route.table, REFUSED if route.on_inexact == "error" else Target.PRIMARY, unmergeable,
                    route.on_inexact)
