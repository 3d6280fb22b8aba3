"""The routing in force: the TOML's routes with the live overrides (split, sticky) from the shared table.

One immutable snapshot at a time; a change builds and validates a new snapshot and swaps it in whole, so a
rejected change leaves the routing in force untouched, and sessions never see a half-applied one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import ConfigError, Route


@dataclass(frozen=True, slots=True)
class Override:
    """A row of pgcutover.routing: what an operator changed, with who and when."""

    table: str
    split: float
    sticky: str | None
    generation: int
    changed_by: str = ""
    changed_at: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    routes: tuple[Route, ...]
    generation: int = 0
    overrides: Mapping[str, Override] = field(default_factory=dict)

    def route(self, table: str) -> Route | None:
        for route in self.routes:
            if table in (route.table, route.relname):
                return route
        return None


def canonical_table(routes: Iterable[Route], table: str) -> str:
    """The configured name of a route given 'schema.table' or the bare table name; ConfigError if unknown."""
    routes = tuple(routes)
    matches = [r.table for r in routes if table in (r.table, r.relname)]
    if not matches:
        known = ", ".join(r.table for r in routes) or "none configured"
        raise ConfigError(f"unknown route table {table!r} (routes: {known})")
    if len(matches) > 1:
        raise ConfigError(f"{table!r} is ambiguous: {', '.join(matches)}")
    return matches[0]


def apply_overrides(base: Iterable[Route], overrides: Iterable[Override], generation: int) -> RoutingSnapshot:
    """The TOML routes with each override applied and validated. Raises ConfigError, naming the bad row."""
    routes = {route.table: route for route in base}
    applied: dict[str, Override] = {}
    for override in overrides:
        if override.table not in routes:
            continue  # another deployment's route in the same database: not ours to apply (nor to refuse)
        table = override.table
        try:
            routes[table] = routes[table].with_split(override.split, override.sticky)
        except ConfigError as exc:
            raise ConfigError(f"routing generation {override.generation}: {exc}") from exc
        applied[table] = override
    return RoutingSnapshot(tuple(routes.values()), generation, applied)
