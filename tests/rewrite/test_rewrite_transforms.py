"""Transform rules the corpus cannot run on this server: a shadow whose vector type is not pgvector's
(RuVector), catalog-driven result-type casts, quoting of exotic names."""

from __future__ import annotations

from pgcutover.core.config import Route
from pgcutover.rewrite.catalog import Catalog, ColumnInfo, TableInfo
from pgcutover.rewrite.router import build_plan
from pgcutover.rewrite.transforms import identifier

RU = Route(table="public.items", column="embedding", shadow_table="ruvector_new.items",
           shadow_column="embedding", shadow_type="ruvector_new.vector")


def ru_catalog(result: str) -> Catalog:
    columns = (ColumnInfo("id", "integer"), ColumnInfo("embedding", "vector(3)"))
    shadow = (ColumnInfo("id", "integer"), ColumnInfo("embedding", "ruvector_new.vector"))
    return Catalog.build([TableInfo("public", "items", columns), TableInfo("ruvector_new", "items", shadow)],
                         operator_results={("ruvector_new", "items"): {"<->": result, "<=>": result}})


def test_ruvector_shadow_casts_the_query_vector() -> None:
    plan = build_plan("SELECT id FROM items ORDER BY embedding <-> '[1,2,3]'::vector(3) LIMIT 5", [RU])
    assert plan.shadow_sql == (
        "SELECT id FROM ruvector_new.items ORDER BY embedding <-> '[1,2,3]'::ruvector_new.vector LIMIT 5")


def test_unknown_shadow_result_type_refuses_returned_distances() -> None:
    plan = build_plan("SELECT id, embedding <-> $1 AS d FROM items ORDER BY d", [RU])
    assert plan.reason == "shadow-distance-type"
    plan = build_plan("SELECT id FROM items ORDER BY l2_distance(embedding, $1)", [RU])
    assert plan.reason == "shadow-function-form"


def test_shadow_distance_cast_back_to_double_precision() -> None:
    plan = build_plan("SELECT id, embedding <-> $1, 1 - (embedding <=> $1) AS sim FROM items "
                      "ORDER BY embedding <-> $1 LIMIT 3", [RU], catalog=ru_catalog("real"))
    assert plan.shadow_sql == (
        'SELECT id, CAST(embedding <-> $1::ruvector_new.vector AS DOUBLE PRECISION) AS "?column?", '
        "1 - (CAST(embedding <=> $1::ruvector_new.vector AS DOUBLE PRECISION)) AS sim "
        "FROM ruvector_new.items ORDER BY embedding <-> $1::ruvector_new.vector LIMIT 3")
    same = build_plan("SELECT id, embedding <-> $1 FROM items", [RU], catalog=ru_catalog("double precision"))
    assert same.shadow_sql == "SELECT id, embedding <-> $1::ruvector_new.vector FROM ruvector_new.items"


def test_shadow_vector_type_differs_so_returning_it_casts_it_back() -> None:
    plan = build_plan("SELECT id, embedding FROM items ORDER BY embedding <-> $1", [RU], catalog=ru_catalog("real"))
    assert plan.reason == "similarity"
    assert plan.shadow_sql == ("SELECT id, embedding::vector(3) AS embedding FROM ruvector_new.items "
                               "ORDER BY embedding <-> $1::ruvector_new.vector")
    plan = build_plan("SELECT * FROM items ORDER BY embedding <-> $1", [RU], catalog=ru_catalog("real"))
    assert plan.shadow_sql == ("SELECT id, embedding::vector(3) AS embedding FROM ruvector_new.items "
                               "ORDER BY embedding <-> $1::ruvector_new.vector")
    plan = build_plan("SELECT id FROM items WHERE embedding::text <> '' ORDER BY embedding <-> $1", [RU],
                      catalog=ru_catalog("real"))
    assert plan.reason == "shadow-column-type"  # compared in WHERE: the shadow's own value would be compared
    plan = build_plan("SELECT id FROM items WHERE embedding IS NOT NULL ORDER BY embedding <-> $1", [RU],
                      catalog=ru_catalog("real"))
    assert plan.reason == "similarity"  # a NULL test does not care about the type


def test_renamed_output_columns_keep_their_names() -> None:
    route = Route(table="public.t", column="Emb", shadow_table="s.t2", shadow_column="select")
    catalog = Catalog.build([TableInfo("public", "t", (ColumnInfo("id", "int"), ColumnInfo("Emb", "vector(2)"))),
                             TableInfo("s", "t2", (ColumnInfo("id", "int"), ColumnInfo("select", "vector(2)")))])
    plan = build_plan('SELECT id, "Emb"::text, "Emb" FROM public.t ORDER BY "Emb" <-> $1', [route], catalog=catalog)
    assert plan.shadow_sql == ('SELECT id, CAST("select" AS TEXT) AS "Emb", "select" AS "Emb" FROM s.t2 AS t '
                               'ORDER BY "select" <-> $1::vector')


def test_identifier_quoting() -> None:
    assert identifier("items").sql() == "items"
    assert identifier("Items").sql(dialect="postgres") == '"Items"'
    assert identifier("user").sql(dialect="postgres") == '"user"'
    assert identifier('we"ird').sql(dialect="postgres") == '"we""ird"'
