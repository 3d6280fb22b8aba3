"""psycopg2 + pgvector.psycopg2 through the proxy, in the three scenarios of tests/clients/conftest.py.
psycopg2 interpolates every value into the SQL text and sends a simple Query: the vector is a literal."""

from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np
import psycopg2
import pytest
from pgvector.psycopg2 import register_vector

from tests.clients.conftest import SHADOW_SCHEMA, SHAPES, Shape, check, direct_of, oracle, query_vector, threshold_for

SCENARIOS = ("s0", "s100", "fb")
OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>", "l1": "<+>"}
TABLES = {"s0": "cl_split_docs", "s100": "cl_split_docs", "fb": "cl_fb_docs", "direct": "cl_split_docs",
          "shadow": "cl_split_docs"}


@contextmanager
def connect(scenarios, where: str):
    options = f"-c search_path={SHADOW_SCHEMA},public" if where == "shadow" else ""
    conn = psycopg2.connect(host="127.0.0.1", port=scenarios.ports[where], user="postgres", dbname="postgres",
                            options=options)
    try:
        conn.autocommit = True
        register_vector(conn)
        yield conn
    finally:
        conn.close()


def run(scenarios, where: str, shape: Shape, q: np.ndarray) -> list[tuple]:
    """The score-style SQL people write by hand: `1 - (embedding <=> %s) AS similarity` style expressions are
    written here as the distance itself, parenthesised, with the vector a literal interpolated by psycopg2."""
    op = OPERATORS[shape.metric]
    distance = f"(embedding {op} %(q)s)"
    where_sql = []
    params: dict[str, object] = {"q": q, "k": shape.k, "offset": shape.offset}
    if shape.category:
        where_sql.append("category = %(category)s")
        params["category"] = shape.category
    if shape.threshold:
        where_sql.append(f"{distance} < %(threshold)s")
        params["threshold"] = threshold_for(scenarios.vectors, shape, q)
    select = f"id, {distance} AS distance, content" if shape.with_distance else "id, NULL::float8, content"
    sql = (f"SELECT {select} FROM {TABLES[where]}" + (" WHERE " + " AND ".join(where_sql) if where_sql else "")
           + f" ORDER BY {'distance' if shape.with_distance else distance}{' DESC' if shape.desc else ''}"
           + " LIMIT %(k)s OFFSET %(offset)s")
    with connect(scenarios, where) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(row) for row in cur.fetchall()]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_psycopg2_literals(scenarios, scenario, shape) -> None:
    vectors = scenarios.vectors
    q = query_vector(vectors, zlib.crc32(str(shape).encode()) % 1000)
    direct = direct_of(scenario)
    check(scenario, run(scenarios, scenario, shape, q), run(scenarios, direct, shape, q) if direct else None,
          oracle(vectors, shape, q))


def test_psycopg2_similarity_score(scenarios) -> None:
    """`1 - (embedding <=> q) AS similarity ... ORDER BY similarity DESC`: the most similar first, exactly."""
    vectors = scenarios.vectors
    q = query_vector(vectors, 3)
    with connect(scenarios, "fb") as conn, conn.cursor() as cur:
        cur.execute("SELECT id, 1 - (embedding <=> %s) AS similarity FROM cl_fb_docs ORDER BY similarity DESC "
                    "LIMIT 5", (q,))
        got = cur.fetchall()
    want = oracle(vectors, Shape("cosine"), q)
    assert [row[0] for row in got] == [i for i, _ in want]
    np.testing.assert_allclose([row[1] for row in got], [1 - d for _, d in want], rtol=1e-4)
