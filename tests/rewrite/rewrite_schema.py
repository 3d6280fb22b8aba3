"""The schema every rewrite test plans against: routes, the hand-written catalog of the tables, and the DDL and
rows that create exactly those tables on a real server (the catalog test checks that they agree).

- items:   pgvector table; shadow ruvector_new.items is a same-shape copy (same vector column name).
- docs:    legacy table: `embedding` is TEXT, `embedding_vector` holds pgvector values for 2 rows in 3;
           shadow ruvector_new.docs has every vector, in column `emb`.
- Vectors: mixed-case quoted names (app."Vectors"."Emb"); shadow shadow2.vectors_v2(emb).
- big:     vectors indexed only through an expression index (embedding::halfvec(8)) halfvec_cosine_ops.
- meta, queries: ordinary tables to join with.
"""

from __future__ import annotations

import random

from pgcutover.core.config import Route
from pgcutover.rewrite.catalog import Catalog, ColumnInfo, IndexInfo, TableInfo

DIMS = 8
ROWS = 300

ITEMS = Route(table="public.items", column="embedding", key="id", shadow_table="ruvector_new.items",
              shadow_column="embedding", shadow_type="vector")
DOCS = Route(table="public.docs", column="embedding", key="id", vector_column="embedding_vector",
             shadow_table="ruvector_new.docs", shadow_column="emb", shadow_type="vector")
VECTORS = Route(table="app.Vectors", column="Emb", key="Id", shadow_table="shadow2.vectors_v2",
                shadow_column="emb", shadow_type="vector")
BIG = Route(table="public.big", column="embedding", key="id", shadow_table="ruvector_new.big",
            shadow_column="embedding", shadow_type="vector")
ROUTES = (ITEMS, DOCS, VECTORS, BIG)

VEC = f"vector({DIMS})"
HALFVEC_INDEX = IndexInfo(name="big_embedding_halfvec", method="hnsw", key=f"(embedding::halfvec({DIMS}))",
                          opclass="halfvec_cosine_ops", order_operator="<=>")


def _table(schema: str, name: str, columns: list[tuple[str, str]], indexes: tuple[IndexInfo, ...] = ()) -> TableInfo:
    return TableInfo(schema, name, tuple(ColumnInfo(n, t) for n, t in columns), indexes)


TABLES = (
    _table("public", "items", [("id", "integer"), ("content", "text"), ("category", "text"),
                               ("price", "numeric(10,2)"), ("embedding", VEC)]),
    _table("ruvector_new", "items", [("id", "integer"), ("content", "text"), ("category", "text"),
                                     ("price", "numeric(10,2)"), ("embedding", VEC)]),
    _table("public", "docs", [("id", "integer"), ("title", "text"), ("category", "text"), ("embedding", "text"),
                              ("embedding_vector", VEC)]),
    _table("ruvector_new", "docs", [("id", "integer"), ("title", "text"), ("category", "text"),
                                    ("embedding", "text"), ("emb", VEC)]),
    _table("app", "Vectors", [("Id", "integer"), ("Label", "text"), ("Emb", VEC)]),
    _table("shadow2", "vectors_v2", [("Id", "integer"), ("Label", "text"), ("emb", VEC)]),
    _table("public", "big", [("id", "integer"), ("embedding", VEC)], (HALFVEC_INDEX,)),
    _table("ruvector_new", "big", [("id", "integer"), ("embedding", VEC)]),
)


def catalog() -> Catalog:
    """What load_catalog reads from the server once DDL has run (operators on `vector` return float8)."""
    result = Catalog.build(TABLES)
    for shadow in ("items", "docs", "big"):
        result.operator_results[("ruvector_new", shadow)] = {op: "double precision" for op in
                                                             ("<->", "<=>", "<#>", "<+>")}
    result.operator_results[("shadow2", "vectors_v2")] = {op: "double precision" for op in
                                                          ("<->", "<=>", "<#>", "<+>")}
    return result


DDL = f"""
DROP SCHEMA IF EXISTS ruvector_new, app, shadow2 CASCADE;
DROP TABLE IF EXISTS public.items, public.docs, public.big, public.meta, public.queries CASCADE;
CREATE SCHEMA ruvector_new;
CREATE SCHEMA app;
CREATE SCHEMA shadow2;
CREATE TABLE public.items (id integer PRIMARY KEY, content text, category text, price numeric(10,2),
                           embedding {VEC});
CREATE TABLE ruvector_new.items (id integer PRIMARY KEY, content text, category text, price numeric(10,2),
                                 embedding {VEC});
CREATE TABLE public.docs (id integer PRIMARY KEY, title text, category text, embedding text,
                          embedding_vector {VEC});
CREATE TABLE ruvector_new.docs (id integer PRIMARY KEY, title text, category text, embedding text, emb {VEC});
CREATE TABLE app."Vectors" ("Id" integer PRIMARY KEY, "Label" text, "Emb" {VEC});
CREATE TABLE shadow2.vectors_v2 ("Id" integer PRIMARY KEY, "Label" text, emb {VEC});
CREATE TABLE public.big (id integer PRIMARY KEY, embedding {VEC});
CREATE TABLE ruvector_new.big (id integer PRIMARY KEY, embedding {VEC});
CREATE INDEX big_embedding_halfvec ON public.big USING hnsw ((embedding::halfvec({DIMS})) halfvec_cosine_ops);
CREATE TABLE public.meta (item_id integer, tag text);
CREATE TABLE public.queries (id integer PRIMARY KEY, v {VEC});
"""

CATEGORIES = ("news", "sports", "tech", "art")


def vector_text(values: list[float]) -> str:
    return "[" + ",".join(f"{v:.4f}" for v in values) + "]"


def rows(seed: int = 7) -> dict[str, list[tuple]]:
    """Deterministic rows for every table (vectors as pgvector text)."""
    rng = random.Random(seed)
    vectors = [vector_text([rng.uniform(-1, 1) for _ in range(DIMS)]) for _ in range(ROWS)]
    items = [(i, f"item {i}", CATEGORIES[i % 4], round(rng.uniform(1, 100), 2), vectors[i]) for i in range(ROWS)]
    docs = [(i, f"doc {i}", CATEGORIES[i % 4], vectors[i], vectors[i] if i % 3 else None) for i in range(ROWS)]
    shadow_docs = [(i, f"doc {i}", CATEGORIES[i % 4], vectors[i], vectors[i]) for i in range(ROWS)]
    labelled = [(i, f"label {i % 10}", vectors[(i * 7) % ROWS]) for i in range(ROWS)]
    big = [(i, vectors[(i * 11) % ROWS]) for i in range(ROWS)]
    meta = [(i, f"tag{i % 5}") for i in range(0, ROWS, 2)]
    queries = [(i, vectors[(i * 13) % ROWS]) for i in range(10)]
    return {
        "public.items": items, "ruvector_new.items": items, "public.docs": docs, "ruvector_new.docs": shadow_docs,
        'app."Vectors"': labelled, "shadow2.vectors_v2": labelled, "public.big": big, "ruvector_new.big": big,
        "public.meta": meta, "public.queries": queries,
    }
