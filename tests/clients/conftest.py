"""Real client libraries through the real proxy, in three scenarios (issue 10, "Tests"):

- "s0":   split 0 (primary only): every answer equals the same call made directly on the server;
- "s100": split 100 (shadow): every answer equals the same call made directly on the shadow copy (a direct
          connection whose search_path puts the shadow schema first, so the library's own unqualified SQL
          reads the shadow table); the shadow's `content` says "shadow", so a primary answer cannot pass;
- "fb":   a partly migrated fallback route (60% of the rows have no pgvector value, only the legacy JSON
          text): every answer equals numpy brute force over all rows, as if the table were fully migrated.

Tables: cl_split_docs (+ cl_shadow.cl_split_docs) for s0/s100, cl_fb_docs for fb; langchain-postgres's own
langchain_pg_embedding holds one collection per scenario (the fb collection partly migrated), with a shadow copy.
Embeddings are deterministic (seeded numpy here, langchain_core's DeterministicFakeEmbedding there): no models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

DIMS = 8
ROWS = 300
CATEGORIES = ("a", "b", "c")
SHADOW_SCHEMA = "cl_shadow"


def is_legacy(i: int) -> bool:
    """Rows of the fallback table that are not migrated yet (60%)."""
    return i % 5 < 3


def category(i: int) -> str:
    return CATEGORIES[i % 3]


def vec_text(v) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


SPLIT_ROUTES = """
[[route]]
table = "public.cl_split_docs"
column = "embedding"
key = "id"
shadow_table = "cl_shadow.cl_split_docs"
split = {split}
sticky = "query"

[[route]]
table = "public.langchain_pg_embedding"
column = "embedding"
key = "id"
shadow_table = "cl_shadow.langchain_pg_embedding"
split = {split}
sticky = "query"
"""

FALLBACK_ROUTES = f"""
[[route]]
table = "public.cl_fb_docs"
column = "embedding"
key = "id"
legacy_column = "embedding_legacy"
legacy_format = "json"
dims = {DIMS}

[[route]]
table = "public.langchain_pg_embedding"
column = "embedding"
key = "id"
legacy_column = "embedding_legacy"
legacy_format = "json"
dims = {DIMS}
"""


@dataclass
class Scenarios:
    vectors: np.ndarray  # row i (1-based id) -> vectors[i - 1]
    ports: dict[str, int]  # scenario -> proxy port; "direct" and "shadow" -> the server's port
    pg_port: int

    def dsn(self, scenario: str, driver: str = "postgresql") -> str:
        port = self.ports[scenario]
        dsn = f"{driver}://postgres@127.0.0.1:{port}/postgres"
        if scenario == "shadow":
            dsn += f"?options=-csearch_path%3D{SHADOW_SCHEMA},public"
        return dsn


def brute_force(vectors: np.ndarray, ids: list[int], q: np.ndarray, metric: str) -> list[tuple[int, float]]:
    """(id, distance) of every row in `ids`, nearest first, in float64 as pgvector computes."""
    x = np.asarray([vectors[i - 1] for i in ids], dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "l2":
        d = np.sqrt(((x - q) ** 2).sum(axis=1))
    elif metric == "cosine":
        d = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    elif metric == "ip":
        d = -(x @ q)
    elif metric == "l1":
        d = np.abs(x - q).sum(axis=1)
    else:
        raise ValueError(metric)
    order = np.argsort(d, kind="stable")
    return [(ids[i], float(d[i])) for i in order]


def fb_ids(cat: str | None = None) -> list[int]:
    return [i for i in range(1, ROWS + 1) if cat is None or category(i) == cat]


@dataclass(frozen=True)
class Shape:
    """One similarity query form, written by each library its own way; the oracle is computed from it."""

    metric: str  # l2 | cosine | ip | l1
    k: int = 5
    offset: int = 0
    category: str | None = None
    desc: bool = False  # farthest first
    threshold: bool = False  # WHERE distance < (the 8th nearest distance): a distance filter
    with_distance: bool = True  # the distance is selected too

    def __str__(self) -> str:
        parts = [self.metric, f"k{self.k}"]
        parts += [f"offset{self.offset}"] * bool(self.offset) + [f"cat-{self.category}"] * bool(self.category)
        parts += ["desc"] * self.desc + ["threshold"] * self.threshold + ["no-distance"] * (not self.with_distance)
        return "-".join(parts)


SHAPES = (
    Shape("l2"), Shape("cosine"), Shape("ip"), Shape("l1"),
    Shape("l2", category="b"), Shape("cosine", k=4, offset=3), Shape("l2", k=3, desc=True),
    Shape("cosine", threshold=True, k=20), Shape("l2", with_distance=False),
)


def threshold_for(vectors: np.ndarray, shape: Shape, q: np.ndarray) -> float:
    ranked = brute_force(vectors, fb_ids(shape.category), q, shape.metric)
    return (ranked[7][1] + ranked[8][1]) / 2


def oracle(vectors: np.ndarray, shape: Shape, q: np.ndarray) -> list[tuple[int, float]]:
    """Brute force over all rows, as if every row were migrated."""
    ranked = brute_force(vectors, fb_ids(shape.category), q, shape.metric)
    if shape.threshold:
        limit = threshold_for(vectors, shape, q)
        ranked = [(i, d) for i, d in ranked if d < limit]
    if shape.desc:
        ranked = ranked[::-1]
    return ranked[shape.offset: shape.offset + shape.k]


def check(scenario: str, got: list[tuple], direct: list[tuple] | None, expected: list[tuple[int, float]]) -> None:
    """got/direct: (id, distance or None, content or None) rows. s0/s100: equal to the direct call (the shadow's
    for s100, whose content says "shadow"); fb: the ids and distances of brute force over all rows."""
    if scenario in ("s0", "s100"):
        assert got == direct, f"{scenario}: through the proxy {got}\n directly {direct}"
        assert got, "no rows"
        if scenario == "s100" and got[0][2] is not None:
            assert all(str(content).startswith("shadow ") for _, _, content in got), got
        return
    assert [row[0] for row in got] == [i for i, _ in expected], f"fb: got {got}\n brute force {expected}"
    for (_, distance, _), (_, want) in zip(got, expected, strict=True):
        if distance is not None:
            assert abs(distance - want) <= 1e-4 * max(1.0, abs(want)), (got, expected)


def direct_of(scenario: str) -> str | None:
    """Where the same call is made directly, to compare with."""
    return {"s0": "direct", "s100": "shadow"}.get(scenario)


def query_vector(vectors: np.ndarray, n: int) -> np.ndarray:
    """A query near a legacy row of the fallback table (the exact answer needs legacy rows), perturbed."""
    rng = np.random.default_rng(n)
    legacy = [i for i in range(1, ROWS + 1) if is_legacy(i)]
    return (vectors[legacy[n % len(legacy)] - 1] + 0.05 * rng.standard_normal(DIMS)).astype(np.float32)


@pytest.fixture(scope="session")
def client_tables(pg) -> np.ndarray:
    rng = np.random.default_rng(2026)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    values = ",".join(f"({i}, 'doc {i}', '{category(i)}', '{vec_text(v)}')" for i, v in enumerate(vectors, start=1))
    pg.psql(
        f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE; DROP TABLE IF EXISTS cl_split_docs, cl_fb_docs;"
        f"CREATE SCHEMA {SHADOW_SCHEMA};"
        f"CREATE TABLE cl_split_docs (id bigint PRIMARY KEY, content text, category text, embedding vector({DIMS}));"
        f"INSERT INTO cl_split_docs VALUES {values};"
        f"CREATE TABLE {SHADOW_SCHEMA}.cl_split_docs (LIKE cl_split_docs INCLUDING ALL);"
        f"INSERT INTO {SHADOW_SCHEMA}.cl_split_docs SELECT id, 'shadow ' || content, category, embedding "
        "FROM cl_split_docs;"
        f"CREATE TABLE cl_fb_docs (id bigint PRIMARY KEY, content text, category text, embedding vector({DIMS}), "
        "embedding_legacy text);"
        f"INSERT INTO cl_fb_docs (id, content, category, embedding) VALUES {values};"
    )
    legacy = [i for i in range(1, ROWS + 1) if is_legacy(i)]
    # the legacy rows keep their vector only as JSON text (seed 000's shape), pgvector column NULL
    pg.psql("UPDATE cl_fb_docs SET embedding_legacy = "
            + "CASE id " + " ".join(f"WHEN {i} THEN '{json.dumps([float(x) for x in vectors[i - 1]])}'"
                                    for i in legacy) + " END, embedding = NULL "
            + f"WHERE id IN ({','.join(map(str, legacy))})")
    return vectors


@pytest.fixture(scope="session")
def langchain_tables(pg, client_tables):
    """langchain-postgres creates its tables (through a direct connection); three collections are filled with the
    same texts; the fb collection is then partly un-migrated and the shadow copy made."""
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGVector

    pg.psql("DROP TABLE IF EXISTS langchain_pg_embedding, langchain_pg_collection CASCADE")
    embeddings = DeterministicFakeEmbedding(size=DIMS)
    texts = [f"text number {i}" for i in range(1, ROWS + 1)]
    metadatas = [{"category": category(i), "n": i} for i in range(1, ROWS + 1)]
    for name in ("split", "fb"):
        store = PGVector(embeddings=embeddings, collection_name=f"cl_{name}", embedding_length=DIMS,
                         connection=f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres", use_jsonb=True)
        store.add_texts(texts, metadatas=metadatas, ids=[f"{name}-{i}" for i in range(1, ROWS + 1)])
        store._engine.dispose()
    pg.psql(
        "ALTER TABLE langchain_pg_embedding ADD COLUMN embedding_legacy text;"
        "UPDATE langchain_pg_embedding e SET embedding_legacy = e.embedding::text, "
        "embedding = NULL FROM langchain_pg_collection c WHERE c.uuid = e.collection_id AND c.name = 'cl_fb' "
        "AND (e.cmetadata->>'n')::int % 5 < 3;"
        f"CREATE TABLE {SHADOW_SCHEMA}.langchain_pg_embedding (LIKE langchain_pg_embedding INCLUDING ALL);"
        f"INSERT INTO {SHADOW_SCHEMA}.langchain_pg_embedding SELECT id, collection_id, embedding, "
        "'shadow ' || document, cmetadata, embedding_legacy FROM langchain_pg_embedding;"
    )
    return embeddings, texts


@pytest.fixture(scope="session")
def scenarios(pg, start_proxy, client_tables, langchain_tables) -> Scenarios:
    ports = {
        "s0": start_proxy(SPLIT_ROUTES.format(split=0)).port,
        "s100": start_proxy(SPLIT_ROUTES.format(split=100)).port,
        "fb": start_proxy(FALLBACK_ROUTES).port,
        "direct": pg.port,
        "shadow": pg.port,
    }
    import time

    import psycopg

    # the fb proxy answers similarity queries once its stores are loaded (it waits for them itself, up to
    # fallback_wait_ms): one query makes sure, so that no test depends on load time
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{ports['fb']}/postgres", autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn.execute("SELECT id FROM cl_fb_docs ORDER BY embedding <-> %s::vector LIMIT 1",
                             [vec_text(client_tables[0])]).fetchall()
                conn.execute("SELECT id FROM langchain_pg_embedding ORDER BY embedding <-> %s::vector LIMIT 1",
                             [vec_text(client_tables[0])]).fetchall()
                break
            except psycopg.errors.FeatureNotSupported:
                if time.monotonic() > deadline:
                    raise
    return Scenarios(client_tables, ports, pg.port)
