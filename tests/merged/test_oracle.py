"""Issue 10's generated oracle: random similarity statements from a grammar of the shapes clients send (operators
and functions, parentheses, aliases, ordinals, score expressions, nearest or farthest first, filters, a join,
thresholds, OFFSET, secondary ORDER BY keys, literal, parameter or row-subquery vectors, simple or extended
protocol, prepared and reused) over a partly migrated table, through the real proxy. Every answer must equal
numpy brute force over all rows, or the statement must be refused loudly (SQLSTATE 0A000). Both counts are
printed."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcutover.proxy.embedded import pg_binary
from pgcutover.proxy.vectors import Vector

DIMS = 6
ROWS = 700
ROUTE = """
[[route]]
table = "public.or_docs"
column = "embedding"
key = "id"
vector_column = "embedding"
legacy_column = "legacy"
legacy_format = "json"
dims = 6
"""


def _l2(x, q):
    return np.sqrt(((x - q) ** 2).sum(axis=1))


def _cos(x, q):
    return 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))


# name -> (SQL template, value function, the value's nearest-first direction is DESC)
METRICS = {
    "<->": ("{c} <-> {v}", _l2, False),
    "<=>": ("{c} <=> {v}", _cos, False),
    "<#>": ("{c} <#> {v}", lambda x, q: -(x @ q), False),
    "<+>": ("{c} <+> {v}", lambda x, q: np.abs(x - q).sum(axis=1), False),
    "l2_distance": ("l2_distance({c}, {v})", _l2, False),
    "cosine_distance": ("cosine_distance({c}, {v})", _cos, False),
    "inner_product": ("inner_product({c}, {v})", lambda x, q: x @ q, True),
    "l1_distance": ("l1_distance({c}, {v})", lambda x, q: np.abs(x - q).sum(axis=1), False),
}
# ORDER BY key as a function of the distance value: (SQL with {d}, numpy function, increasing)
SCORES = {
    "d": ("{d}", lambda v, c: v, True),
    "(d)": ("({d})", lambda v, c: v, True),
    "1 - d": ("1 - ({d})", lambda v, c: 1 - v, False),
    "-d": ("-({d})", lambda v, c: -v, False),
    "2 * d": ("2 * ({d})", lambda v, c: 2 * v, True),
    # a weighted hybrid of the distance and another column: no top-k bound, the universal merge answers it
    "hybrid": ("0.8 * ({d}) + 0.2 * (d.cat / 10.0)", lambda v, c: 0.8 * v + 0.2 * (c / 10.0), True),
}


@dataclass(frozen=True)
class Case:
    metric: str
    score: str
    nearest: bool
    order_by: str  # expression | alias | ordinal
    secondary: bool  # ORDER BY ..., id
    filter: str  # none | cat | range | threshold | join
    limit: int
    offset: int | None
    vector: str  # literal | param | row: `(SELECT embedding FROM or_docs WHERE id = $n)`
    protocol: str  # simple | extended | prepared
    limit_param: bool
    extra: str  # none | vector (the vector column selected) | window (row_number() over the same order)
    seed: int


def cases() -> st.SearchStrategy[Case]:
    return st.builds(
        Case,
        metric=st.sampled_from(sorted(METRICS)),
        score=st.sampled_from(sorted(SCORES)),
        nearest=st.booleans(),
        order_by=st.sampled_from(["expression", "alias", "ordinal"]),
        secondary=st.booleans(),
        filter=st.sampled_from(["none", "cat", "range", "threshold", "join"]),
        limit=st.integers(1, 12),
        offset=st.one_of(st.none(), st.integers(0, 5)),
        vector=st.sampled_from(["literal", "param", "row"]),
        protocol=st.sampled_from(["simple", "extended", "prepared"]),
        limit_param=st.booleans(),
        extra=st.sampled_from(["none", "none", "vector", "window"]),
        seed=st.integers(0, 2**31),
    )


@pytest.fixture(scope="module")
def docs(pg):
    rng = np.random.default_rng(17)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    pg.psql("DROP TABLE IF EXISTS or_docs, or_cats; CREATE TABLE or_cats (id int PRIMARY KEY, kind text NOT NULL);"
            "INSERT INTO or_cats SELECT i, CASE WHEN i < 4 THEN 'small' ELSE 'large' END FROM generate_series(0, 9) i;"
            f"CREATE TABLE or_docs (id bigint PRIMARY KEY, cat int NOT NULL, legacy text, embedding vector({DIMS}))")
    lines = "".join(f"{i}\t{i % 10}\t{json.dumps([float(x) for x in v])}\n" for i, v in enumerate(vectors, start=1))
    subprocess.run([pg_binary("psql"), "-X", "-q", "-d", pg.dsn(), "-c",
                    "COPY or_docs (id, cat, legacy) FROM STDIN"], input=lines, text=True, check=True)
    pg.psql("UPDATE or_docs SET embedding = legacy::vector WHERE id % 5 < 2; ANALYZE or_docs")  # 40% migrated
    return vectors


@pytest.fixture(scope="module")
def proxy(start_proxy, docs):
    return start_proxy(ROUTE)


def statement(case: Case, q: np.ndarray, docs: np.ndarray) -> tuple[str, list, list[int]]:
    """(SQL with %s placeholders or literals, parameters, the expected ids)."""
    template, fn, similarity = METRICS[case.metric]
    vector = {"literal": f"'{Vector(q).to_text()}'::vector", "param": "%s::vector",
              "row": "(SELECT embedding FROM or_docs WHERE id = %s)"}[case.vector]
    literal = case.vector == "literal"
    vector_value = Vector(q).to_text() if case.vector == "param" else case.seed % ROWS + 1
    column = "d.embedding"
    distance = template.format(c=column, v=vector)
    score_sql, score_fn, increasing = SCORES[case.score]
    key_sql = score_sql.format(d=distance)
    value = fn(docs.astype(np.float64), q.astype(np.float64))
    key = score_fn(value, np.arange(1, ROWS + 1) % 10)
    # nearest first: ascending distance value (descending for a similarity); through a decreasing score, flipped
    ascending_value = not similarity if case.nearest else similarity
    descending_key = ascending_value != increasing
    params: list = []
    vector_params = 0
    where, joins = [], ""
    keep = np.ones(ROWS, dtype=bool)
    ids = np.arange(1, ROWS + 1)
    cats = ids % 10
    if case.filter == "cat":
        where.append(f"d.cat = {case.seed % 10}")
        keep &= cats == case.seed % 10
    elif case.filter == "range":
        where.append("d.cat < 3")
        keep &= cats < 3
    elif case.filter == "join":
        joins = " JOIN or_cats c ON c.id = d.cat"
        where.append("c.kind = 'small'")
        keep &= cats < 4
    elif case.filter == "threshold":
        ordered = np.sort(value)
        cut = float((ordered[ROWS // 3] + ordered[ROWS // 3 + 1]) / 2)
        where.append(f"{distance} < {cut!r}")
        vector_params += not literal
        keep &= value < cut
    select = f"d.id, {key_sql} AS score"
    direction = f"{'DESC' if descending_key else 'ASC'}" + (", d.id" if case.secondary else "")
    if case.extra == "vector":
        select += ", d.embedding::text AS emb"
    elif case.extra == "window":
        select += f", row_number() OVER (ORDER BY {key_sql} {direction}) AS rn"
        vector_params += not literal
    order_key = {"expression": key_sql, "alias": "score", "ordinal": "2"}[case.order_by]
    if case.order_by == "expression":
        vector_params += not literal
    vector_params += not literal  # the select list
    order = f"{order_key} {'DESC' if descending_key else 'ASC'}" + (", d.id" if case.secondary else "")
    limit = "%s::integer" if case.limit_param else str(case.limit)
    sql = f"SELECT {select} FROM or_docs d{joins}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT {limit}"
    if case.offset is not None:
        sql += f" OFFSET {case.offset}"
    text = vector_value
    # parameters in textual order: select list, WHERE, ORDER BY, LIMIT
    if not literal:
        params.append(text)  # select list
        if case.extra == "window":
            params.append(text)
        if case.filter == "threshold":
            params.append(text)
        if case.order_by == "expression":
            params.append(text)
    if case.limit_param:
        params.append(case.limit)
    assert len(params) == vector_params + case.limit_param
    sort_key = -key if descending_key else key
    order_ids = np.lexsort((ids[keep], sort_key[keep]))
    start = case.offset or 0
    return sql, params, [int(i) for i in ids[keep][order_ids][start:start + case.limit]]


def run(conn: psycopg.Connection, case: Case, sql: str, params: list) -> list[tuple]:
    if case.protocol == "simple":
        inlined = sql
        for value in params:
            inlined = inlined.replace("%s", f"'{value}'" if isinstance(value, str) else str(value), 1)
        return conn.execute(inlined).fetchall()
    prepare = case.protocol == "prepared"
    rows = conn.execute(sql, params, prepare=prepare).fetchall()
    if prepare:  # reused: a second execution of the prepared statement must agree
        again = conn.execute(sql, params, prepare=True).fetchall()
        assert again == rows
    return rows


def test_generated_statements_are_exact_or_refused(proxy, docs) -> None:
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    conn = psycopg.connect(proxy.dsn(), autocommit=True)

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(case=cases())
    def check(case: Case) -> None:
        q = np.random.default_rng(case.seed).standard_normal(DIMS).astype(np.float32)
        if case.vector == "row":
            q = docs[case.seed % ROWS]
        sql, params, want = statement(case, q, docs)
        try:
            rows = run(conn, case, sql, params)
        except psycopg.errors.FeatureNotSupported as exc:  # 0A000: refused loudly
            counts["refused"] += 1
            reasons[str(exc).splitlines()[0].rsplit("(", 1)[-1].rstrip(")")] += 1
            return
        assert [r[0] for r in rows] == want, (case, sql)
        if case.extra == "vector":  # legacy rows carry their vector too
            assert all(np.array_equal(Vector.from_text(r[2]).to_numpy(), docs[r[0] - 1]) for r in rows), (case, sql)
        elif case.extra == "window":
            start = case.offset or 0
            assert [r[2] for r in rows] == list(range(start + 1, start + 1 + len(rows))), (case, sql)
        counts["exact"] += 1

    try:
        check()
    finally:
        conn.close()
    print(f"\noracle: {counts['exact']} exact, {counts['refused']} refused {dict(reasons)}")
    assert counts["exact"] > 0
