"""The router's plan cache: core/lru.py's ByteLRU keyed by (SQL text, search_path)."""

from __future__ import annotations

from typing import TypeVar

from pgcutover.core.lru import ByteLRU

V = TypeVar("V")
Key = tuple[str, tuple[str, ...]]


class PlanCache(ByteLRU[Key, V]):
    """Plans by (SQL text, search_path)."""

    __slots__ = ()
