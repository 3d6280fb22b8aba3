"""One bounded LRU for everything the proxy caches: plans (rewrite/router.py), merge plans (proxy/merged.py), the
mirror's statements and function volatilities (proxy/mirror.py). Hit and miss counters included.

Plain `collections.OrderedDict` rather than `functools.lru_cache`: the callers count hits and misses, clear the
cache on reload, key on values they compute (the search_path tuple) without wrapping a function, and bound
memory as well as entries. A hit is one dict lookup and one `move_to_end`, both C code: well under a
microsecond plus the hash of the SQL string.

Two bounds: `maxsize` entries, and `max_bytes`, the sum of the callers' estimates of the memory each entry
holds. The byte bound is the one that matters: a client can make every SQL text distinct and large (a
1,536-dimension vector literal is ~20 kB of text, and a plan holds its parsed tree plus rewritten texts), so a
count alone lets it grow the proxy without limit. An entry larger than the whole budget is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    __slots__ = ("_data", "bytes", "hits", "max_bytes", "maxsize", "misses")

    def __init__(self, maxsize: int = 4096, max_bytes: int = 128 << 20) -> None:
        if maxsize < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: K, value: V, size: int = 0) -> None:
        """Store `value`; `size` is the caller's estimate of the bytes it holds (key included)."""
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

