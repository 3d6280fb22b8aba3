"""Cost of planning a similarity query: a cache miss (pre-filter, parse, analyse, rewrite both targets, print)
and a cache hit (pre-filter + LRU lookup), plus a non-similarity statement that the pre-filter turns away.

Prints microseconds per call and ratios to an anchor measured in the same run (a dict lookup of the same key),
so numbers from different machines compare. No assertions: speed claims live here, not in tests.

    .venv/bin/python bench/rewrite_plan.py
"""

from __future__ import annotations

import timeit

from pgcutover.core.config import Route
from pgcutover.rewrite.catalog import Catalog, ColumnInfo, IndexInfo, TableInfo
from pgcutover.rewrite.router import Router

ROUTE = Route(table="public.items", column="embedding", vector_column="embedding_vector",
              shadow_table="ruvector_new.items", shadow_column="embedding", shadow_type="ruvector_new.vector",
              split=50)
CATALOG = Catalog.build([
    TableInfo("public", "items", (ColumnInfo("id", "integer"), ColumnInfo("content", "text"),
                                  ColumnInfo("embedding", "text"), ColumnInfo("embedding_vector", "vector(3072)")),
              (IndexInfo("items_hnsw", "hnsw", "(embedding_vector::halfvec(3072))", "halfvec_cosine_ops", "<=>"),)),
    TableInfo("ruvector_new", "items", (ColumnInfo("id", "integer"), ColumnInfo("content", "text"),
                                        ColumnInfo("embedding", "ruvector_new.vector(3072)"))),
])
SIMILARITY = "SELECT id, content FROM items WHERE content <> '' ORDER BY embedding <=> $1 LIMIT $2"
OTHER = "SELECT id, content, created_at FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20"


def per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    key = (SIMILARITY, ("public",))
    table = {key: object()}
    anchor = per_call_us(lambda: table.get(key), 200_000)

    counter = iter(range(10**9))
    cold = Router([ROUTE], CATALOG, cache_size=8)

    def miss() -> None:
        # a fresh text each time (a trailing comment) so every call parses and plans
        cold.plan(f"{SIMILARITY} -- {next(counter)}")

    miss_us = per_call_us(miss, 200)
    router = Router([ROUTE], CATALOG)
    plan = router.plan(SIMILARITY)
    assert plan.reason == "similarity", plan.reason
    hit_us = per_call_us(lambda: router.plan(SIMILARITY), 100_000)
    other_us = per_call_us(lambda: router.plan(OTHER), 100_000)

    print(f"anchor: dict lookup of the same key      {anchor:8.3f} us")
    print(f"cache miss (parse + plan both targets)   {miss_us:8.1f} us   {miss_us / anchor:9.0f}x anchor")
    print(f"cache hit (pre-filter + LRU)             {hit_us:8.2f} us   {hit_us / anchor:9.1f}x anchor")
    print(f"non-similarity SQL (pre-filter only)     {other_us:8.2f} us   {other_us / anchor:9.1f}x anchor")
    print(f"miss / hit                               {miss_us / hit_us:8.0f}x")
    print(f"primary: {plan.primary_sql}")
    print(f"shadow:  {plan.shadow_sql}")


if __name__ == "__main__":
    main()
