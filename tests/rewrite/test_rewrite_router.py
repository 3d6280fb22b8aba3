"""Router: pre-filter, plan cache, stats, reload, and the "never raises" guarantee."""

from __future__ import annotations

import rewrite_schema as schema

from pgcutover.core.config import Route
from pgcutover.rewrite import router as router_module
from pgcutover.rewrite.cache import PlanCache
from pgcutover.rewrite.dialect import to_sql
from pgcutover.rewrite.plan import Plan, passthrough
from pgcutover.rewrite.prefilter import Prefilter
from pgcutover.rewrite.router import Router

SQL = "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 5"


def test_prefilter_needs_operator_table_and_column() -> None:
    pre = Prefilter(schema.ROUTES)
    assert pre.might_match(SQL)
    assert pre.might_match(SQL.encode())
    assert pre.might_match("select id from ITEMS order by l2_distance ( Embedding, $1)")
    assert pre.might_match('SELECT "Id" FROM app."Vectors" ORDER BY "Emb" <=> $1')
    assert not pre.might_match("SELECT id FROM items ORDER BY embedding LIMIT 5")  # no distance
    assert not pre.might_match("SELECT id FROM other ORDER BY v <-> $1")  # no route names
    assert not pre.might_match("SELECT itemsx FROM t ORDER BY embeddingx <-> $1")  # names are whole words
    assert not pre.might_match(b"BEGIN")
    assert not pre.might_match("")


def test_cache_counts_and_evicts() -> None:
    cache: PlanCache[Plan] = PlanCache(2)
    plans = [passthrough(str(i)) for i in range(3)]
    assert cache.get(("a", ())) is None
    cache.put(("a", ()), plans[0])
    cache.put(("b", ()), plans[1])
    assert cache.get(("a", ())) is plans[0]  # a is now the most recent
    cache.put(("c", ()), plans[2])  # evicts b
    assert cache.get(("b", ())) is None
    assert cache.get(("a", ())) is plans[0] and cache.get(("c", ())) is plans[2]
    assert (cache.hits, cache.misses, len(cache)) == (3, 2, 2)


def test_cache_bounds_memory() -> None:
    cache: PlanCache[str] = PlanCache(maxsize=100, max_bytes=1000)
    for i in range(10):
        cache.put((str(i), ()), "plan", 300)
    assert len(cache) == 3 and cache.bytes == 900
    assert cache.get(("9", ())) == "plan" and cache.get(("6", ())) is None
    cache.put(("huge", ()), "plan", 5000)  # larger than the whole budget: not kept, nothing evicted
    assert len(cache) == 3 and cache.get(("huge", ())) is None
    cache.put(("9", ()), "replan", 100)
    assert cache.bytes == 700
    cache.clear()
    assert (len(cache), cache.bytes) == (0, 0)


def test_router_plans_once_per_text_and_search_path() -> None:
    router = Router(schema.ROUTES, schema.catalog())
    first = router.plan(SQL)
    assert first.reason == "similarity" and first.route is schema.ITEMS
    assert router.plan(SQL) is first
    other = router.plan(SQL, ("app", "public"))
    assert other is not first and other.shadow_sql == first.shadow_sql
    stats = router.stats
    assert (stats.hits, stats.misses) == (1, 2)
    assert stats.rewritten["public.items"] == 3


def test_router_counts_passthrough_reasons_and_skips_parsing() -> None:
    router = Router(schema.ROUTES)
    for sql in ("SELECT 1", "BEGIN", "SET search_path = app"):
        assert router.plan(sql).reason == "prefilter"
    assert router.plan("SELECT * FROM items ORDER BY embedding <-> $1").reason == "star-needs-catalog"
    stats = router.stats
    assert stats.passthrough == {"prefilter": 3, "star-needs-catalog": 1}
    assert stats.misses == 1  # pre-filtered texts never reach the cache


def test_replace_routes_clears_the_cache() -> None:
    router = Router([schema.ITEMS])
    assert router.plan(SQL).reason == "similarity"
    renamed = Route(table="public.items", column="embedding", shadow_table="ruvector_new.items",
                    shadow_column="emb2")
    router.replace_routes([renamed])
    plan = router.plan(SQL)
    assert plan.route is renamed and "emb2" in (plan.shadow_sql or "")
    router.replace_routes([])
    assert router.plan(SQL).reason == "prefilter"


def test_plan_never_raises(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(router_module, "analyze", boom)
    assert Router(schema.ROUTES).plan(SQL).reason == "internal-error"


def test_sql_for_targets() -> None:
    plan = Router(schema.ROUTES).plan("SELECT id FROM docs ORDER BY embedding <-> $1 LIMIT 3")
    assert plan.sql_for("primary") == plan.primary_sql and plan.sql_for("shadow") == plan.shadow_sql
    no_shadow = Router([Route(table="public.items", column="embedding")]).plan(SQL)
    assert no_shadow.reason == "similarity" and no_shadow.sql_for("shadow") is None
    assert no_shadow.sql_for("primary") is None
    try:
        plan.sql_for("replica")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown target accepted")


def test_similarity_query_fields() -> None:
    plan = Router(schema.ROUTES).plan(
        "SELECT d.id, d.title FROM docs AS d WHERE d.category = $3 "
        "ORDER BY d.embedding <=> $1::vector LIMIT $2 OFFSET 4")
    q = plan.query
    assert q is not None
    assert (q.route, q.table_alias, q.table_schema) == (schema.DOCS, "d", "public")
    assert (q.operator, q.metric, q.function_form) == ("<=>", "cosine", False)
    assert (q.param_index, q.literal, q.limit_param, q.offset_value) == (1, None, 2, 4)
    assert q.order_by_distance and q.pure_order and q.top_level and q.single_source and not q.star
    assert q.where is not None and to_sql(q.where) == "d.category = $3"
    assert [to_sql(p) for p in q.projections] == ["d.id", "d.title"]
    assert q.vector_params == frozenset({1})
    literal = Router(schema.ROUTES).plan("SELECT id FROM items ORDER BY embedding <-> '[1,2,3,4,5,6,7,8]' LIMIT 3")
    assert literal.query.literal == "[1,2,3,4,5,6,7,8]" and literal.query.limit_value == 3
