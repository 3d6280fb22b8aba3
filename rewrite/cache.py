"""A bounded LRU of plans keyed by (SQL text, search_path), with hit and miss counters.

Plain `collections.OrderedDict` rather than `functools.lru_cache`: the router counts hits and misses itself,
clears the cache on reload, keys on a value it computes (the search_path tuple) without wrapping a function,
and bounds memory as well as entries. A hit is one dict lookup and one `move_to_end`, both C code: well under a
microsecond plus the hash of the SQL string.

Two bounds: `maxsize` entries, and `max_bytes`, an estimate of the memory entries hold (a similarity plan keeps
the parsed statement, about 15 kB for a typical query, plus the SQL texts). The byte bound matters for clients
that inline 1,536-dimension vector literals: every such text is distinct and some 15 kB long.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")
Key = tuple[str, tuple[str, ...]]


class PlanCache(Generic[V]):
    __slots__ = ("_data", "bytes", "hits", "max_bytes", "maxsize", "misses")

    def __init__(self, maxsize: int = 4096, max_bytes: int = 128 << 20) -> None:
        if maxsize < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._data: OrderedDict[Key, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Key) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Key, value: V, size: int = 0) -> None:
        """Store `value`; `size` is the caller's estimate of the bytes it holds."""
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return  # would evict everything else for one entry
        self._data[key] = (value, size)
        self.bytes += size
        while len(self._data) > self.maxsize or self.bytes > self.max_bytes:
            _, (_, evicted) = self._data.popitem(last=False)
            self.bytes -= evicted

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)
