"""The router's decision for one SQL text: which route, why, and the SQL each target receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgcutover.core.enums import Target

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.analyze import SimilarityQuery

TARGETS = (Target.PRIMARY.value, Target.SHADOW.value)
SIMILARITY = "similarity"  # the reason of every plan that rewrites


@dataclass(frozen=True, slots=True)
class Plan:
    """`query is None` means passthrough: forward the client's bytes, whatever the target.

    For a similarity plan, `primary_sql` is None when the primary needs exactly the client's bytes (the route
    column is the vector column and no index shape changes), and `shadow_sql` is None only when the route has
    no shadow table (its split is then 0 by config validation).
    """

    route: Route | None
    reason: str
    primary_sql: str | None
    shadow_sql: str | None
    query: SimilarityQuery | None

    @property
    def passthrough(self) -> bool:
        return self.query is None

    def sql_for(self, target: str) -> str | None:
        """The SQL text to send to `target` ("primary" or "shadow"); None means the client's original bytes."""
        if target == Target.PRIMARY:
            return self.primary_sql
        if target == Target.SHADOW:
            if self.query is not None and self.shadow_sql is None:
                return self.primary_sql
            return self.shadow_sql
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def passthrough(reason: str, route: Route | None = None) -> Plan:
    return Plan(route=route, reason=reason, primary_sql=None, shadow_sql=None, query=None)
