"""Issue 10 item 1 through the real proxy: every similarity shape the router recognises is merged exactly on a
partly migrated table (the answer equals numpy brute force over all rows), in the simple and the extended
protocol, with the query vector as a literal or a parameter. The route's column is also its vector column
(langchain's and pgvector-python's layout): legacy rows have it NULL and keep their vector in a JSON column."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import psycopg
import pytest

from pgcutover.proxy.embedded import pg_binary
from pgcutover.proxy.vectors import Vector

DIMS = 8
ROWS = 1200
MIGRATED = 0.3

ROUTE = """
[[route]]
table = "public.sh_docs"
column = "embedding"
key = "id"
vector_column = "embedding"
legacy_column = "legacy"
legacy_format = "json"
dims = 8
"""

# metric name -> (SQL distance template with {c} the column and {v} the vector, truth function of (x, q))
METRICS = {
    "<->": ("{c} <-> {v}", lambda x, q: np.sqrt(((x - q) ** 2).sum(axis=1))),
    "<=>": ("{c} <=> {v}", lambda x, q: 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))),
    "<#>": ("{c} <#> {v}", lambda x, q: -(x @ q)),
    "<+>": ("{c} <+> {v}", lambda x, q: np.abs(x - q).sum(axis=1)),
    "l2_distance": ("l2_distance({c}, {v})", lambda x, q: np.sqrt(((x - q) ** 2).sum(axis=1))),
    "cosine_distance": ("cosine_distance({c}, {v})",
                        lambda x, q: 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))),
    "inner_product": ("inner_product({c}, {v})", lambda x, q: x @ q),
    "l1_distance": ("l1_distance({c}, {v})", lambda x, q: np.abs(x - q).sum(axis=1)),
}
SIMILARITY = {"inner_product"}  # larger is nearer: nearest first is DESC


@pytest.fixture(scope="module")
def docs(pg):
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    pg.psql("DROP TABLE IF EXISTS sh_docs, sh_cats; "
            "CREATE TABLE sh_cats (id int PRIMARY KEY, name text NOT NULL);"
            "INSERT INTO sh_cats SELECT i, CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END FROM generate_series(0, 9) i;"
            f"CREATE TABLE sh_docs (id bigint PRIMARY KEY, cat_id int NOT NULL, content text, legacy text, "
            f"embedding vector({DIMS}))")
    lines = "".join(f"{i}\t{i % 10}\tdoc {i}\t{json.dumps([float(x) for x in v])}\n"
                    for i, v in enumerate(vectors, start=1))
    subprocess.run([pg_binary("psql"), "-X", "-q", "-d", pg.dsn(), "-c",
                    "COPY sh_docs (id, cat_id, content, legacy) FROM STDIN"], input=lines, text=True, check=True)
    pg.psql(f"UPDATE sh_docs SET embedding = legacy::vector WHERE id % 10 < {int(MIGRATED * 10)}; ANALYZE sh_docs")
    return vectors


@pytest.fixture(scope="module")
def proxy(start_proxy, docs):
    return start_proxy(ROUTE)


def values(docs: np.ndarray, metric: str, q: np.ndarray) -> np.ndarray:
    return METRICS[metric][1](docs.astype(np.float64), q.astype(np.float64))


def ranked(docs: np.ndarray, key: np.ndarray, descending: bool, keep: np.ndarray | None = None) -> list[int]:
    ids = np.arange(1, len(docs) + 1)
    if keep is not None:
        ids, key = ids[keep], key[keep]
    order = np.argsort(-key if descending else key, kind="stable")
    return [int(i) for i in ids[order]]


def vector_sql(literal: bool) -> str:
    return "'{q}'::vector" if literal else "%(q)s::vector"


def run(conn: psycopg.Connection, sql: str, q: np.ndarray, extended: bool, **params) -> list[tuple]:
    """Simple protocol: everything inlined as literals. Extended: psycopg parameters (possibly none)."""
    text = Vector(q).to_text()
    if extended:
        return conn.execute(sql.replace("{q}", text), {"q": text, **params}).fetchall()
    inlined = sql.replace("{q}", text).replace("%(q)s", f"'{text}'")
    for name, value in params.items():
        inlined = inlined.replace(f"%({name})s", str(value))
    return conn.execute(inlined.replace("%%", "%")).fetchall()


MODES = [("simple", True), ("extended", True), ("extended", False)]  # (protocol, literal vector)


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize(("protocol", "literal"), MODES)
def test_every_metric_and_shape(proxy, docs, metric: str, protocol: str, literal: bool) -> None:
    rng = np.random.default_rng(abs(hash((metric, protocol, literal))) % 2**32)
    q = rng.standard_normal(DIMS).astype(np.float32)
    extended = protocol == "extended"
    d = METRICS[metric][0].format(c="embedding", v=vector_sql(literal))
    value = values(docs, metric, q)
    near_desc = metric in SIMILARITY
    asc, desc = ("DESC", "ASC") if near_desc else ("ASC", "DESC")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        # the plain top-k
        got = run(conn, f"SELECT id FROM sh_docs ORDER BY {d} {asc} LIMIT 5", q, extended)
        assert [r[0] for r in got] == ranked(docs, value, near_desc)[:5]
        # Django: a parenthesised distance, aliased, ORDER BY its ordinal
        got = run(conn, f'SELECT "sh_docs"."id", "sh_docs"."content", ({d}) AS "distance" FROM "sh_docs" '
                        f"ORDER BY 3 {asc} LIMIT 5", q, extended)
        assert [r[0] for r in got] == ranked(docs, value, near_desc)[:5]
        assert all(content == f"doc {id_}" for id_, content, _ in got)
        assert np.allclose([r[2] for r in got], np.sort(value)[::-1][:5] if near_desc else np.sort(value)[:5],
                           rtol=1e-5, atol=1e-5)
        # ORDER BY an alias, OFFSET
        got = run(conn, f"SELECT id, {d} AS dist FROM sh_docs ORDER BY dist {asc} LIMIT 4 OFFSET 3", q, extended)
        assert [r[0] for r in got] == ranked(docs, value, near_desc)[3:7]
        # a score: 1 - distance, largest first
        got = run(conn, f"SELECT id, 1 - ({d}) AS score FROM sh_docs ORDER BY score {desc} LIMIT 5", q, extended)
        assert [r[0] for r in got] == ranked(docs, value, near_desc)[:5]
        # farthest first
        got = run(conn, f"SELECT id FROM sh_docs ORDER BY {d} {desc} LIMIT 4", q, extended)
        assert [r[0] for r in got] == ranked(docs, value, not near_desc)[:4]
        # a threshold in WHERE (the vector given twice), a join with a filter on the joined table
        top = ranked(docs, value, near_desc)
        cut = (value[top[2] - 1] + value[top[3] - 1]) / 2
        op = ">" if near_desc else "<"
        got = run(conn, f"SELECT id FROM sh_docs WHERE {d} {op} %(cut)s ORDER BY {d} {asc} LIMIT 10", q, extended,
                  cut=repr(float(cut)))
        assert [r[0] for r in got] == top[:3]
        joined = METRICS[metric][0].format(c="d.embedding", v=vector_sql(literal))
        even = np.array([(i % 10) % 2 == 0 for i in range(1, ROWS + 1)])
        got = run(conn, f"SELECT d.id, c.name FROM sh_docs d JOIN sh_cats c ON c.id = d.cat_id WHERE c.name = 'even' "
                        f"ORDER BY {joined} {asc} LIMIT %(k)s::INTEGER", q, extended, k=6)
        assert [r[0] for r in got] == ranked(docs, value, near_desc, even)[:6]


def test_prepared_literal_vector_and_secondary_order_key(proxy, docs) -> None:
    """asyncpg prepares everything: a literal vector in a prepared statement, and ORDER BY distance, id."""
    import asyncio

    import asyncpg

    q = np.random.default_rng(5).standard_normal(DIMS).astype(np.float32)
    value = values(docs, "<=>", q)

    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        try:
            stmt = await conn.prepare(f"SELECT id FROM sh_docs WHERE cat_id = $1 "
                                      f"ORDER BY embedding <=> '{Vector(q).to_text()}', id LIMIT $2")
            for cat in (1, 4):
                rows = await stmt.fetch(cat, 7)
                keep = np.array([i % 10 == cat for i in range(1, ROWS + 1)])
                assert [r["id"] for r in rows] == ranked(docs, value, False, keep)[:7]
        finally:
            await conn.close()

    asyncio.run(main())


# -- item 3: the selected vector column ------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [False, True])
def test_selected_vector_column_carries_the_legacy_vector(proxy, docs, binary: bool) -> None:
    from pgvector.psycopg import register_vector

    q = np.random.default_rng(8).standard_normal(DIMS).astype(np.float32)
    value = values(docs, "<->", q)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        register_vector(conn)
        cur = conn.cursor(binary=binary)
        for sql in ("SELECT id, embedding FROM sh_docs ORDER BY embedding <-> %s LIMIT 12",
                    "SELECT * FROM sh_docs ORDER BY embedding <-> %s LIMIT 12",
                    "SELECT id, embedding FROM sh_docs WHERE embedding IS NOT NULL ORDER BY embedding <-> %s "
                    "LIMIT 12"):
            rows = cur.execute(sql, [q]).fetchall()
            names = [c.name for c in cur.description]
            at = names.index("embedding")
            assert [r[0] for r in rows] == ranked(docs, value, False)[:12], sql
            legacy = [r for r in rows if r[0] % 10 >= int(MIGRATED * 10)]
            assert legacy, "the top-12 holds legacy rows"
            for row in rows:
                assert row[at] is not None, (sql, row[0])
                got = row[at].to_numpy() if hasattr(row[at], "to_numpy") else row[at]
                assert np.array_equal(np.asarray(got, dtype=np.float32), docs[row[0] - 1]), (sql, row[0])
        # a simple Query (text) as psql sends it
        text = Vector(q).to_text()
        rows = conn.execute(f"SELECT id, embedding::text FROM sh_docs ORDER BY embedding <-> '{text}' LIMIT 5"
                            ).fetchall()
        direct = {r[0]: r[1] for r in conn.execute(
            "SELECT id, legacy::vector::text FROM sh_docs WHERE id = ANY(%s)", [[r[0] for r in rows]]).fetchall()}
        assert all(r[1] == direct[r[0]] for r in rows)


HALF_ROUTE = """
[[route]]
table = "public.hv_items"
column = "embedding"
key = "id"
shadow_table = "hv_shadow.hv_items"
shadow_column = "embedding"
shadow_type = "halfvec"
split = 0
"""


def test_halfvec_shadow_returns_the_route_columns_type(pg, start_proxy) -> None:
    """A halfvec shadow: `SELECT id, embedding` and `SELECT *` are routed to it (not passed through), and the
    client gets vector values (the shadow's, cast back)."""
    from tests.routing.conftest import cli

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((200, DIMS)).astype(np.float32)
    rows = ",".join(f"({i}, '{Vector(v).to_text()}')" for i, v in enumerate(vectors, start=1))
    pg.psql("DROP SCHEMA IF EXISTS hv_shadow CASCADE; DROP TABLE IF EXISTS hv_items; CREATE SCHEMA hv_shadow;"
            f"CREATE TABLE hv_items (id bigint PRIMARY KEY, embedding vector({DIMS}));"
            f"INSERT INTO hv_items VALUES {rows};"
            f"CREATE TABLE hv_shadow.hv_items (id bigint PRIMARY KEY, embedding halfvec({DIMS}));"
            "INSERT INTO hv_shadow.hv_items SELECT id, embedding::halfvec FROM hv_items;")
    proxy = start_proxy(HALF_ROUTE)
    result = cli("route", "set", "hv_items", "--split", "100", proxy=proxy)
    assert result.returncode == 0, result.stderr
    q = Vector(rng.standard_normal(DIMS).astype(np.float32)).to_text()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        deadline = __import__("time").monotonic() + 30
        for sql in ("SELECT id, embedding FROM hv_items ORDER BY embedding <-> %s LIMIT 5",
                    "SELECT * FROM hv_items ORDER BY embedding <-> %s LIMIT 5"):
            while True:  # the split change reaches the proxy within a second
                cur = conn.execute(sql, [q])
                got = cur.fetchall()
                type_name = conn.execute("SELECT format_type(%s, NULL)", [cur.description[1].type_code]).fetchone()
                halved = [np.asarray(Vector.from_text(r[1]).to_numpy(), dtype=np.float32) for r in got]
                exact = [vectors[r[0] - 1] for r in got]
                if not all(np.array_equal(h, e) for h, e in zip(halved, exact, strict=True)) \
                        or __import__("time").monotonic() > deadline:
                    break
                __import__("time").sleep(0.1)
            assert type_name == ("vector",)
            assert all(np.array_equal(h, e.astype(np.float16).astype(np.float32))
                       for h, e in zip(halved, exact, strict=True)), "answered by the halfvec shadow"


# -- item 2: the query vector is a row of the route table -------------------------------------------------------
@pytest.mark.parametrize(("protocol", "legacy"), [("simple", True), ("simple", False), ("extended", True),
                                                  ("extended", False)])
def test_rows_similar_to_row_x(proxy, docs, protocol: str, legacy: bool) -> None:
    """pgvector's README form: `ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = $1)`. A legacy
    row X finds its neighbours (itself first), as a migrated one does."""
    x = 7 if legacy else 12  # ids with id % 10 >= 3 are legacy
    value = values(docs, "<=>", docs[x - 1])
    sql = ("SELECT id FROM sh_docs WHERE cat_id <> 5 ORDER BY embedding <=> (SELECT embedding FROM sh_docs "
           "WHERE id = {k}) LIMIT 6")
    if not legacy:  # Django's spelling: an aliased table and column, and LIMIT 1
        sql = ('SELECT "sh_docs"."id" FROM "sh_docs" WHERE cat_id <> 5 ORDER BY ("sh_docs"."embedding" <=> '
               '(SELECT U0."embedding" AS "embedding" FROM "sh_docs" U0 WHERE U0."id" = {k} LIMIT 1)) ASC LIMIT 6')
    keep = np.array([i % 10 != 5 for i in range(1, ROWS + 1)])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        if protocol == "simple":
            rows = conn.execute(sql.format(k=x)).fetchall()
        else:
            rows = conn.execute(sql.format(k="%s"), [x]).fetchall()
    want = ranked(docs, value, False, keep)[:6]
    assert [r[0] for r in rows] == want and want[0] == x


# -- item 5: the universal merge (every legacy distance shipped) ------------------------------------------------
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_statements_the_top_k_merge_cannot_bound(proxy, docs, protocol: str) -> None:
    """A weighted score of the distance and another column, a window function, an aggregate, no LIMIT: each
    evaluated by the server over every row, legacy distances shipped by the proxy."""
    q = np.random.default_rng(31).standard_normal(DIMS).astype(np.float32)
    extended = protocol == "extended"
    value = values(docs, "<=>", q)
    cats = np.arange(1, ROWS + 1) % 10
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        hybrid = 0.7 * (1 - value) + 0.3 * (cats / 10.0)
        got = run(conn, "SELECT id, 0.7 * (1 - (embedding <=> %(q)s::vector)) + 0.3 * (cat_id / 10.0) AS score "
                        "FROM sh_docs ORDER BY score DESC LIMIT 8", q, extended)
        assert [r[0] for r in got] == ranked(docs, hybrid, True)[:8]
        assert np.allclose([r[1] for r in got], np.sort(hybrid)[::-1][:8], atol=1e-6)
        got = run(conn, "SELECT id, rank() OVER (ORDER BY embedding <=> %(q)s::vector) AS r FROM sh_docs "
                        "ORDER BY embedding <=> %(q)s::vector LIMIT 4", q, extended)
        assert [(r[0], r[1]) for r in got] == [(i, n) for n, i in enumerate(ranked(docs, value, False)[:4], 1)]
        cut = float(np.sort(value)[50] + np.sort(value)[51]) / 2
        got = run(conn, "SELECT count(*), min(embedding <=> %(q)s::vector) FROM sh_docs "
                        "WHERE embedding <=> %(q)s::vector < %(cut)s", q, extended, cut=repr(cut))
        assert got[0][0] == 51 and abs(got[0][1] - value.min()) < 1e-6
        got = run(conn, "SELECT id FROM sh_docs WHERE embedding <=> %(q)s::vector < %(cut)s ORDER BY id", q, extended,
                  cut=repr(cut))
        assert [r[0] for r in got] == sorted(int(i) + 1 for i in np.flatnonzero(value < cut))
        got = run(conn, "WITH near AS (SELECT id FROM sh_docs ORDER BY embedding <=> %(q)s::vector LIMIT 5) "
                        "SELECT n.id FROM near n JOIN sh_cats c ON c.id = n.id %% 10 ORDER BY n.id", q, extended)
        assert [r[0] for r in got] == sorted(ranked(docs, value, False)[:5])


def test_universal_merge_refused_above_max_shipped_rows(pg, start_proxy, docs) -> None:
    proxy = start_proxy(ROUTE.replace("dims = 8", "dims = 8\nmax_shipped_rows = 100"))
    q = Vector(np.ones(DIMS, dtype=np.float32)).to_text()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="too-many-legacy-rows"):
            conn.execute("SELECT count(*) FROM sh_docs WHERE embedding <-> %s < 1", [q])
        assert conn.execute("SELECT id FROM sh_docs ORDER BY embedding <-> %s LIMIT 3", [q]).fetchall()  # top-k
