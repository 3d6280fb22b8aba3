"""langchain-postgres PGVector through the proxy (SQLAlchemy + psycopg 3 underneath), in the three scenarios of
tests/clients/conftest.py: similarity_search, similarity_search_with_score, a metadata filter, and
max_marginal_relevance_search (which reads the selected embeddings back). Embeddings are
langchain_core's DeterministicFakeEmbedding: no model, no download."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from tests.clients.conftest import SHADOW_SCHEMA, check, direct_of

SCENARIOS = ("s0", "s100", "fb")
COLLECTION = {"s0": "cl_split", "s100": "cl_split", "fb": "cl_fb", "direct": "cl_split", "shadow": "cl_split"}
QUERIES = ("what about text number 17", "text number 200", "something else entirely")


@pytest.fixture(scope="module")
def shadow_collections(pg, langchain_tables):
    """The shadow schema gets its own copy of the collection table too, so that a direct connection whose
    search_path starts with the shadow schema reads both of langchain's tables there (same uuids)."""
    pg.psql(f"DROP TABLE IF EXISTS {SHADOW_SCHEMA}.langchain_pg_collection;"
            f"CREATE TABLE {SHADOW_SCHEMA}.langchain_pg_collection (LIKE langchain_pg_collection INCLUDING ALL);"
            f"INSERT INTO {SHADOW_SCHEMA}.langchain_pg_collection SELECT * FROM langchain_pg_collection")


@pytest.fixture(scope="module")
def stores(scenarios, langchain_tables, shadow_collections):
    from langchain_postgres import PGVector

    embeddings, _ = langchain_tables
    made = {}
    for where in (*SCENARIOS, "direct", "shadow"):
        url = scenarios.dsn(where, "postgresql+psycopg")
        made[where] = PGVector(embeddings=embeddings, collection_name=COLLECTION[where], embedding_length=8,
                               connection=url, use_jsonb=True, create_extension=False)
    yield made
    for store in made.values():
        store._engine.dispose()


@pytest.fixture(scope="module")
def truth(pg, langchain_tables) -> dict[str, tuple[str, str, dict, np.ndarray]]:
    """Every row of the fb collection with its vector, wherever it lives now (pgvector or legacy JSON)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT e.id, e.document, e.cmetadata, coalesce(e.embedding::text, e.embedding_legacy) "
            "FROM langchain_pg_embedding e JOIN langchain_pg_collection c ON c.uuid = e.collection_id "
            "WHERE c.name = 'cl_fb'").fetchall()
    assert sum(1 for r in rows if r[0]) == len(rows)
    return {id_: (id_, doc, meta, np.asarray(json.loads(vec), dtype=np.float32)) for id_, doc, meta, vec in rows}


def cosine_ranking(truth, q: np.ndarray, category: str | None = None) -> list[tuple[str, float]]:
    items = [t for t in truth.values() if category is None or t[2]["category"] == category]
    x = np.asarray([t[3] for t in items], dtype=np.float64)
    qd = np.asarray(q, dtype=np.float64)
    d = 1 - (x @ qd) / (np.linalg.norm(x, axis=1) * np.linalg.norm(qd))
    order = np.argsort(d, kind="stable")
    return [(items[i][0], float(d[i])) for i in order]


def rows_of(documents) -> list[tuple]:
    out = []
    for item in documents:
        doc, score = item if isinstance(item, tuple) else (item, None)
        out.append((doc.id, score, doc.page_content))
    return out


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_similarity_search(stores, langchain_tables, truth, scenario, query) -> None:
    embeddings, _ = langchain_tables
    q = np.asarray(embeddings.embed_query(query), dtype=np.float32)
    direct = direct_of(scenario)
    expected = cosine_ranking(truth, q) if scenario == "fb" else []
    got = rows_of(stores[scenario].similarity_search(query, k=4))
    want = rows_of(stores[direct].similarity_search(query, k=4)) if direct else None
    check(scenario, got, want, expected[:4])

    got = rows_of(stores[scenario].similarity_search_with_score(query, k=5))
    want = rows_of(stores[direct].similarity_search_with_score(query, k=5)) if direct else None
    check(scenario, got, want, expected[:5])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_metadata_filter(stores, langchain_tables, truth, scenario) -> None:
    embeddings, _ = langchain_tables
    query = QUERIES[0]
    q = np.asarray(embeddings.embed_query(query), dtype=np.float32)
    direct = direct_of(scenario)
    got = rows_of(stores[scenario].similarity_search_with_score(query, k=5, filter={"category": "b"}))
    want = (rows_of(stores[direct].similarity_search_with_score(query, k=5, filter={"category": "b"}))
            if direct else None)
    expected = cosine_ranking(truth, q, "b")[:5] if scenario == "fb" else []
    check(scenario, got, want, expected)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_max_marginal_relevance(stores, langchain_tables, truth, scenario) -> None:
    """MMR re-ranks the fetch_k nearest by their embeddings: legacy rows must come back with theirs."""
    from langchain_postgres._utils import maximal_marginal_relevance

    embeddings, _ = langchain_tables
    query = QUERIES[1]
    q = np.asarray(embeddings.embed_query(query), dtype=np.float32)
    got = [d.id for d in stores[scenario].max_marginal_relevance_search(query, k=4, fetch_k=20)]
    if scenario != "fb":
        want = [d.id for d in stores[direct_of(scenario)].max_marginal_relevance_search(query, k=4, fetch_k=20)]
        assert got == want
        return
    nearest = cosine_ranking(truth, q)[:20]
    fetched = rows_of(stores[scenario].similarity_search_with_score(query, k=20))
    assert [row[0] for row in fetched] == [i for i, _ in nearest]  # the candidates MMR starts from
    # as langchain calls it: float32 query, the float32 arrays pgvector returns
    chosen = maximal_marginal_relevance(q, [truth[i][3] for i, _ in nearest], k=4)
    assert got == [nearest[i][0] for i in sorted(chosen)]  # langchain returns them in distance order

