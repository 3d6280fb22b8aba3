"""A bounded LRU of plans keyed by (SQL text, search_path), with hit and miss counters.

Plain `collections.OrderedDict` rather than `functools.lru_cache`: the router needs to count hits and misses
itself, to clear the cache on reload, and to key on values it computes (the search_path tuple) without wrapping
a function. A hit is one dict lookup and one `move_to_end`, both C code: well under a microsecond plus the
hash of the SQL string (which CPython caches on the str object).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")
Key = tuple[str, tuple[str, ...]]


class PlanCache(Generic[V]):
    __slots__ = ("_data", "hits", "maxsize", "misses")

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("cache size must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[Key, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Key) -> V | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Key, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
