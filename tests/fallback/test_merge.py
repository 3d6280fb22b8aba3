"""The merged query (fallback/merge.py) against real PostgreSQL + pgvector: exact top-k over pgvector rows and
legacy-only rows, compared with numpy brute force over all rows.

Each table has 3,000 rows x 16 dims, a legacy column, a pgvector column and no ANN index, so pgvector's own
results are exact. Candidates are computed here, independently of fallback.knn: the top-(k+n+1) legacy-only rows of
the "store snapshot" by exact float64 distance, exactly what the proxy is told to ask the numpy search for.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from pgcutover.core.config import Route
from pgcutover.deploy.triggers import install_schema
from pgcutover.fallback.formats import encode_json
from pgcutover.fallback.knn import Query, search_snapshot
from pgcutover.fallback.merge import (
    ARRAY_RISKY,
    JSON_SAFE,
    JSON_SYNTAX,
    MergePlan,
    build_merge,
    guard_bound,
    legacy_vector,
    quote_literal,
)
from pgcutover.fallback.store import LegacyStore
from pgcutover.rewrite.analyze import Passthrough, analyze
from pgcutover.rewrite.catalog import Catalog, ColumnInfo, IndexInfo, TableInfo, load_catalog
from pgcutover.rewrite.dialect import parse_one, to_sql
from pgcutover.rewrite.transforms import to_primary

T = TypeVar("T")
DIMS = 16
ROWS = 3000
OPERATORS = ("<->", "<=>", "<#>")
FRACTIONS = (0.0, 0.005, 0.5, 1.0)
LEGACY_SQL_TYPES = {"json": "text", "bytea_f32": "bytea", "bytea_f64": "bytea", "real[]": "real[]",
                    "float8[]": "double precision[]"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await register_vector(conn)
    return conn


# -- the tables and their ground truth -------------------------------------------------------------------------
@dataclass
class Table:
    """What a test table holds, kept in Python as the independent ground truth."""

    name: str  # schema-qualified
    kind: str  # json | bytea_f32 | bytea_f64 | real[] | float8[]
    legacy: dict[Any, np.ndarray | None] = field(default_factory=dict)  # valid legacy vector, None if bad/NULL
    vectors: dict[Any, np.ndarray] = field(default_factory=dict)  # pgvector values
    category: dict[Any, int] = field(default_factory=dict)

    @property
    def fmt(self) -> str:
        return "array" if self.kind.endswith("[]") else self.kind

    def route(self, **extra: Any) -> Route:
        values: dict[str, Any] = {"table": self.name, "column": "embedding", "key": "id",
                                  "vector_column": "embedding_vector", "legacy_column": "embedding",
                                  "legacy_format": self.fmt, "dims": DIMS}
        values.update(extra)
        return Route(**values)

    def effective(self) -> dict[Any, np.ndarray]:
        """Every row that ranks: its vector when migrated, else its valid legacy value."""
        out = {k: v for k, v in self.legacy.items() if v is not None and k not in self.vectors}
        out.update(self.vectors)
        return out

    def legacy_only(self) -> dict[Any, np.ndarray]:
        """The store's view: legacy-only rows with a valid legacy value."""
        return {k: v for k, v in self.legacy.items() if v is not None and k not in self.vectors}


def encode(kind: str, row: np.ndarray) -> Any:
    if kind == "json":
        return encode_json(row)
    if kind == "bytea_f32":
        return np.asarray(row, dtype="<f4").tobytes()
    if kind == "bytea_f64":
        return np.asarray(row, dtype="<f8").tobytes()
    return [float(x) for x in row]


BAD_VALUES = {
    "json": ["[NaN" + ",1" * (DIMS - 1) + "]", "[1,2,3]", "junk", "[" + ",".join(["1e39"] * DIMS) + "]",
             "[" + ",".join(["1"] * (DIMS + 1)) + "]"],
    "bytea_f32": [b"\x00" * (4 * DIMS - 1), np.full(DIMS, np.nan, dtype="<f4").tobytes(), b""],
    "bytea_f64": [b"\x00" * (8 * DIMS + 8), np.full(DIMS, 1e300, dtype="<f8").tobytes()],
    "real[]": [[1.0] * (DIMS - 1), [float("nan")] * DIMS, [1.0] * (DIMS - 1) + [None]],
    "float8[]": [[1.0] * (DIMS + 1), [1e300] * DIMS, [float("inf")] * DIMS],
}


async def create_table(conn: asyncpg.Connection, schema: str, kind: str, fraction: float, *, seed: int,
                       rows: int = ROWS, key_type: str = "bigint", keys: Sequence[Any] | None = None) -> Table:
    """`rows` rows; a `fraction` of those with a valid legacy value is migrated. A third of the migrated rows keep
    a stale legacy value that differs from their vector (they must rank by the vector). About 1% of the rows hold
    a bad legacy value and a few none at all; none of those may ever rank."""
    name = f"{schema}.t_{kind.replace('[]', '_arr')}_{str(fraction).replace('.', '_')}_{seed}"
    table = Table(name, kind)
    rng = np.random.default_rng(seed)
    keys = list(keys) if keys is not None else list(range(rows))
    await conn.execute(f"CREATE TABLE {name} (id {key_type} PRIMARY KEY, embedding {LEGACY_SQL_TYPES[kind]},"
                       f" embedding_vector vector({DIMS}), category int, title text)")
    records = []
    good = [k for i, k in enumerate(keys) if i % 97 != 5 and i % 211 != 7]
    step = round(1 / fraction) if fraction else 0
    migrated = set(good[::step]) if step else set()
    for i, key in enumerate(keys):
        vec = rng.standard_normal(DIMS).astype(np.float32)
        cat = int(rng.integers(0, 100))
        table.category[key] = cat
        if i % 211 == 7:  # no legacy value, no vector
            value = None
            table.legacy[key] = None
        elif i % 97 == 5:  # a bad legacy value
            bad = BAD_VALUES[kind]
            value = bad[i % len(bad)]
            table.legacy[key] = None
        else:
            value = encode(kind, vec)
            table.legacy[key] = vec
        vector = None
        if key in migrated:
            vector = vec if i % 3 else rng.standard_normal(DIMS).astype(np.float32)
            table.vectors[key] = vector
        records.append((key, value, vector, cat, f"title {key}"))
    await conn.executemany(f"INSERT INTO {name} VALUES ($1, $2, $3, $4, $5)", records)
    await conn.execute(f"ANALYZE {name}")
    return table


def distances(vectors: np.ndarray, q: np.ndarray, op: str) -> np.ndarray:
    """pgvector's distances, computed exactly (float64) from the float32 values."""
    x = vectors.astype(np.float64)
    qq = q.astype(np.float64)
    if op == "<->":
        return np.sqrt(((x - qq) ** 2).sum(axis=1))
    if op == "<#>":
        return -(x @ qq)
    return 1.0 - (x @ qq) / (np.linalg.norm(x, axis=1) * np.linalg.norm(qq))


def ranked(rows: dict[Any, np.ndarray], q: np.ndarray, op: str,
           keep: Callable[[Any], bool] = lambda _k: True) -> tuple[list[Any], dict[Any, float]]:
    keys = [k for k in rows if keep(k)]
    if not keys:
        return [], {}
    dist = distances(np.stack([rows[k] for k in keys]), q, op)
    order = np.argsort(dist, kind="stable")
    return [keys[i] for i in order], {k: float(d) for k, d in zip(keys, dist, strict=True)}


def candidates(table: Table, q: np.ndarray, op: str, plan: MergePlan, limit: int | None,
               offset: int | None) -> tuple[list[Any], float | None]:
    """What the numpy search would return for the proxy: the nearest search_k legacy-only rows, and the bound."""
    order, dist = ranked(table.legacy_only(), q, op)
    want = plan.search_k(limit, offset)
    chosen = order if want is None else order[:want]
    return chosen, guard_bound([dist[k] for k in chosen], want)


def assert_exact(got: Sequence[Any], table: Table, q: np.ndarray, op: str, keep: Callable[[Any], bool],
                 limit: int, offset: int, got_distances: Sequence[float] | None = None) -> None:
    truth, dist = ranked(table.effective(), q, op, keep)
    expected = truth[offset:offset + limit]
    assert len(set(got)) == len(got), "duplicate rows"
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected, strict=True):
        assert g in dist, f"row {g} must not rank (deleted, filtered out or without a valid vector)"
        if g != e:  # a tie: the same distance is fine
            assert dist[g] == pytest.approx(dist[e], rel=1e-5, abs=1e-6), (got, expected)
    if got_distances is not None:
        for g, d in zip(got, got_distances, strict=True):
            assert d == pytest.approx(dist[g], rel=1e-5, abs=1e-5)


def literal(q: np.ndarray) -> str:
    return encode_json(q)


# -- fixtures -------------------------------------------------------------------------------------------------
@dataclass
class World:
    dsn: str
    schema: str
    json: dict[float, Table]
    catalogs: dict[str, Catalog]


@pytest.fixture(scope="module")
def world(pg) -> World:
    dsn = pg.dsn()
    schema = f"merge_{secrets.token_hex(4)}"

    async def setup() -> World:
        conn = await connect(dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
            tables = {f: await create_table(conn, schema, "json", f, seed=i) for i, f in enumerate(FRACTIONS)}
            routes = [t.route() for t in tables.values()]
            catalog = await load_catalog(conn, routes)
            return World(dsn, schema, tables, {t.name: catalog for t in tables.values()})
        finally:
            await conn.close()

    yield run(setup())

    async def teardown() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()

    run(teardown())


def plan_for(sql: str, route: Route, catalog: Catalog | None, **options: Any) -> MergePlan:
    return build_merge(analyze(sql, [route], ("public",), catalog), catalog, **options)


@dataclass
class Case:
    sql: str  # {t} table, {op} operator, {q} literal vector
    params: Callable[[np.ndarray], list[Any]]  # client parameters for a query vector
    keep: Callable[[Table, Any], bool]
    limit: int
    offset: int
    distance_column: str | None = None


CASES = [
    Case("SELECT id FROM {t} ORDER BY embedding {op} $1 LIMIT 10",
         lambda q: [q], lambda t, k: True, 10, 0),
    Case("SELECT id, embedding {op} $1 AS d FROM {t} WHERE category = $2 ORDER BY d LIMIT $3 OFFSET $4",
         lambda q: [q, 7, 10, 5], lambda t, k: t.category[k] == 7, 10, 5, "d"),
    Case("SELECT i.id, i.title, i.embedding {op} $1 FROM {t} AS i WHERE i.category < $2 "
         "ORDER BY i.embedding {op} $1 LIMIT 8 OFFSET $3",
         lambda q: [q, 50, 3], lambda t, k: t.category[k] < 50, 8, 3, "?column?"),
    Case("SELECT id, embedding {op} '{q}' AS dist FROM {t} WHERE category = 3 ORDER BY 2 LIMIT 5 OFFSET 2",
         lambda q: [], lambda t, k: t.category[k] == 3, 5, 2, "dist"),
    Case("SELECT id FROM {t} WHERE title <> 'nothing' ORDER BY embedding {op} '{q}'::vector(16) LIMIT 12",
         lambda q: [], lambda t, k: True, 12, 0),
]


async def check_case(conn: asyncpg.Connection, table: Table, plan: MergePlan, case: Case, q: np.ndarray,
                     op: str) -> None:
    keys, bound = candidates(table, q, op, plan, case.limit, case.offset)
    keep = lambda k: case.keep(table, k)  # noqa: E731
    client = case.params(q)
    rows = await conn.fetch(plan.sql_with_param, *client, *plan.extra_params(keys, bound))
    got_d = [r[case.distance_column] for r in rows] if case.distance_column else None
    assert_exact([r["id"] for r in rows], table, q, op, keep, case.limit, case.offset, got_d)
    if not client:  # the simple-Query form
        rows = await conn.fetch(plan.sql_with_literal(keys, bound))
        assert_exact([r["id"] for r in rows], table, q, op, keep, case.limit, case.offset)


# -- exactness ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_exact_top_k_over_pgvector_and_legacy_rows(world: World, fraction: float, op: str) -> None:
    table = world.json[fraction]
    catalog = world.catalogs[table.name]
    rng = np.random.default_rng(int(fraction * 1000) + OPERATORS.index(op))

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            for case in CASES:
                for _ in range(2):
                    q = rng.standard_normal(DIMS).astype(np.float32)
                    sql = case.sql.format(t=table.name, op=op, q=literal(q))
                    plan = plan_for(sql, table.route(), catalog)
                    assert plan.operator == op and plan.metric == {"<->": "l2", "<=>": "cosine", "<#>": "ip"}[op]
                    await check_case(conn, table, plan, case, q, op)
        finally:
            await conn.close()

    run(go())


def test_prepared_statement_reused_with_different_vectors(world: World) -> None:
    table = world.json[0.005]
    sql = f"SELECT id, embedding <=> $1 AS d FROM {table.name} WHERE category = $2 ORDER BY d LIMIT $3"
    plan = plan_for(sql, table.route(), world.catalogs[table.name])
    rng = np.random.default_rng(7)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            statement = await conn.prepare(plan.sql_with_param)
            for limit in (3, 10, 3, 25, 1, 10):  # more than plan_cache_mode's five custom plans
                q = rng.standard_normal(DIMS).astype(np.float32)
                keys, bound = candidates(table, q, "<=>", plan, limit, None)
                rows = await statement.fetch(q, 11, limit, *plan.extra_params(keys, bound))
                assert_exact([r["id"] for r in rows], table, q, "<=>", lambda k: table.category[k] == 11, limit, 0,
                             [r["d"] for r in rows])
        finally:
            await conn.close()

    run(go())


def test_without_catalog_key_type_is_assumed_bigint(world: World) -> None:
    table = world.json[0.5]
    plan = plan_for(f"SELECT id FROM {table.name} ORDER BY embedding <-> $1 LIMIT 4 OFFSET 1", table.route(), None)
    assert (plan.key_type, plan.key_type_assumed, plan.extra_param_types) == ("bigint", True,
                                                                             ("bigint[]", "double precision"))
    assert (plan.keys_param_index, plan.bound_param_index, plan.total_value) == (2, 3, 5)
    q = np.random.default_rng(3).standard_normal(DIMS).astype(np.float32)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            keys, bound = candidates(table, q, "<->", plan, 4, 1)
            rows = await conn.fetch(plan.sql_with_param, q, *plan.extra_params(keys, bound))
            assert_exact([r["id"] for r in rows], table, q, "<->", lambda k: True, 4, 1)
        finally:
            await conn.close()

    run(go())


def test_join_and_cte(world: World) -> None:
    table = world.json[0.5]
    cats = f"{world.schema}.cats"
    sql_join = (f"SELECT t.id, c.label FROM {table.name} t JOIN {cats} c ON c.id = t.category "
                "WHERE c.label = 'c7' ORDER BY t.embedding <=> $1 LIMIT 6")
    sql_cte = (f"WITH wanted AS (SELECT 13 AS c) SELECT id FROM {table.name}, wanted "
               "WHERE category = wanted.c ORDER BY embedding <-> $1 LIMIT 6 OFFSET 1")
    rng = np.random.default_rng(11)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {cats} AS "
                               "SELECT g AS id, 'c' || g AS label FROM generate_series(0, 99) g")
            for sql, op, keep, offset in ((sql_join, "<=>", 7, 0), (sql_cte, "<->", 13, 1)):
                plan = plan_for(sql, table.route(), world.catalogs[table.name])
                q = rng.standard_normal(DIMS).astype(np.float32)
                keys, bound = candidates(table, q, op, plan, 6, offset)
                rows = await conn.fetch(plan.sql_with_param, q, *plan.extra_params(keys, bound))
                assert_exact([r["id"] for r in rows], table, q, op, lambda k, c=keep: table.category[k] == c, 6,
                             offset)
        finally:
            await conn.close()

    run(go())


@pytest.mark.parametrize("op", OPERATORS)
def test_distance_filter_in_where(world: World, op: str) -> None:
    """`WHERE embedding <op> $1 < $2` applies to legacy rows too, through D."""
    table = world.json[0.5]
    sql = f"SELECT id, embedding {op} $1 AS d FROM {table.name} WHERE embedding {op} $1 < $2 ORDER BY d LIMIT 10"
    plan = plan_for(sql, table.route(), world.catalogs[table.name])
    rng = np.random.default_rng(OPERATORS.index(op))

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            for rank in (4, 30):  # fewer rows than the limit pass, then more
                q = rng.standard_normal(DIMS).astype(np.float32)
                order, dist = ranked(table.effective(), q, op)
                threshold = (dist[order[rank]] + dist[order[rank + 1]]) / 2
                keys, bound = candidates(table, q, op, plan, 10, None)
                rows = await conn.fetch(plan.sql_with_param, q, threshold, *plan.extra_params(keys, bound))
                assert_exact([r["id"] for r in rows], table, q, op, lambda k, t=threshold, d=dist: d[k] < t, 10, 0,
                             [r["d"] for r in rows])
                assert len(rows) == min(rank + 1, 10)
        finally:
            await conn.close()

    run(go())


def test_limit_null_and_declared_extra_parameters(world: World) -> None:
    """LIMIT NULL means every row: no bound is known, the guard runs. A client whose Parse declares more
    parameters than it uses gets the extra values after those."""
    table = world.json[0.005]
    sql = f"SELECT id FROM {table.name} WHERE category = $2 ORDER BY embedding <-> $1 LIMIT $3"
    plan = plan_for(sql, table.route(), world.catalogs[table.name])
    assert plan.search_k(None, None) is None and guard_bound([1.0], plan.search_k(None, None)) is None
    with pytest.raises(ValueError):
        plan.sql_with_params_from(3)
    q = np.random.default_rng(9).standard_normal(DIMS).astype(np.float32)
    keep = lambda k: table.category[k] == 23  # noqa: E731

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            rows = await conn.fetch(plan.sql_with_param, q, 23, None, *plan.extra_params([], None))
            assert_exact([r["id"] for r in rows], table, q, "<->", keep, 10**6, 0)
            keys, bound = candidates(table, q, "<->", plan, 4, None)
            # $4 stands for a parameter the client declared (asyncpg cannot declare types without using them)
            shifted = plan.sql_with_params_from(5).replace("WHERE category = $2", "WHERE $4::text IS NULL AND "
                                                           "category = $2", 1)
            statement = await conn.prepare(shifted)
            rows = await statement.fetch(q, 23, 4, None, *plan.extra_params(keys, bound))
            assert_exact([r["id"] for r in rows], table, q, "<->", keep, 4, 0)
        finally:
            await conn.close()

    run(go())


@pytest.mark.parametrize("fraction", [0.005, 0.5])
def test_with_the_real_store_and_knn(world: World, fraction: float) -> None:
    """The contract with fallback.knn, as the proxy uses it: search_k rows, guard_bound of their distances."""
    table = world.json[fraction]

    async def go() -> None:
        store = LegacyStore(table.route())
        await store.load(lambda: asyncpg.connect(world.dsn))
        assert len(store) == len(table.legacy_only())
        conn = await connect(world.dsn)
        rng = np.random.default_rng(17)
        try:
            for op, case in itertools.product(OPERATORS, CASES[:3]):
                q = rng.standard_normal(DIMS).astype(np.float32)
                plan = plan_for(case.sql.format(t=table.name, op=op), table.route(), world.catalogs[table.name])
                k = plan.search_k(case.limit, case.offset)
                result = search_snapshot(store.snapshot(), [Query(q, k, plan.metric)])[0]
                bound = guard_bound(result.distances, k)
                rows = await conn.fetch(plan.sql_with_param, *case.params(q), *plan.extra_params(result.keys, bound))
                assert_exact([r["id"] for r in rows], table, q, op, lambda key, c=case: c.keep(table, key),
                             case.limit, case.offset)
        finally:
            await conn.close()
            store.close()

    run(go())


def test_quoted_and_mixed_case_names(world: World) -> None:
    name = f'{world.schema}."Odd ""Items"""'
    route = Route(table=f'{world.schema}.Odd "Items"', column="Legacy Emb", key="Key", vector_column="Vec",
                  legacy_column="Legacy Emb", legacy_format="json", dims=DIMS)
    sql = (f'SELECT "Key", "Legacy Emb" <=> $1 AS "Score" FROM {name} AS "T" WHERE "T"."Select" = $2 '
           'ORDER BY "Score" LIMIT 5')
    rng = np.random.default_rng(2)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            await conn.execute(f'CREATE TABLE {name} ("Key" bigint PRIMARY KEY, "Legacy Emb" text,'
                               f' "Vec" vector({DIMS}), "Select" int)')
            table = Table(name, "json")
            records = []
            for key in range(400):
                vec = rng.standard_normal(DIMS).astype(np.float32)
                table.legacy[key], table.category[key] = vec, key % 4
                if key % 5 == 0:
                    table.vectors[key] = vec
                records.append((key, encode_json(vec), vec if key % 5 == 0 else None, key % 4))
            await conn.executemany(f"INSERT INTO {name} VALUES ($1, $2, $3, $4)", records)
            catalog = await load_catalog(conn, [route])
            plan = plan_for(sql, route, catalog)
            q = rng.standard_normal(DIMS).astype(np.float32)
            keys, bound = candidates(table, q, "<=>", plan, 5, None)
            rows = await conn.fetch(plan.sql_with_param, q, 2, *plan.extra_params(keys, bound))
            assert_exact([r["Key"] for r in rows], table, q, "<=>", lambda k: table.category[k] == 2, 5, 0,
                         [r["Score"] for r in rows])
        finally:
            await conn.close()

    run(go())


# -- the guard and stale candidates -----------------------------------------------------------------------------
def test_guard_makes_a_selective_filter_exact(world: World) -> None:
    """With a 1% filter, a short candidate list (the unfiltered nearest) misses rows; the guard adds them."""
    table = world.json[0.005]
    sql = f"SELECT id FROM {table.name} WHERE category = $2 ORDER BY embedding <-> $1 LIMIT 10"
    plan = plan_for(sql, table.route(), world.catalogs[table.name])
    q = np.random.default_rng(5).standard_normal(DIMS).astype(np.float32)
    keep = lambda k: table.category[k] == 42  # noqa: E731

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            keys, bound = candidates(table, q, "<->", plan, 10, None)
            assert len(keys) == 11 and math.isfinite(bound)
            assert sum(keep(k) for k in keys) < 10  # the candidates alone cannot answer
            rows = await conn.fetch(plan.sql_with_param, q, 42, *plan.extra_params(keys, bound))
            assert_exact([r["id"] for r in rows], table, q, "<->", keep, 10, 0)
            # Told (wrongly) that the candidates are the whole store, the guard stays off: too few rows.
            rows = await conn.fetch(plan.sql_with_param, q, 42, *plan.extra_params(keys, math.inf))
            assert len(rows) < 10
            # An unknown bound (None) always runs the guard: exact.
            rows = await conn.fetch(plan.sql_with_param, q, 42, *plan.extra_params([], None))
            assert_exact([r["id"] for r in rows], table, q, "<->", keep, 10, 0)
            # A capped search (3 rows asked for, not k+n+1): the guard runs, still exact.
            order, dist = ranked(table.legacy_only(), q, "<->")
            capped = guard_bound([dist[k] for k in order[:3]], 3)
            rows = await conn.fetch(plan.sql_with_param, q, 42, *plan.extra_params(order[:3], capped))
            assert_exact([r["id"] for r in rows], table, q, "<->", keep, 10, 0)
        finally:
            await conn.close()

    run(go())


def test_stale_candidates_still_give_the_exact_answer(world: World) -> None:
    """Candidates from a snapshot taken before a candidate was deleted, migrated (to a far vector), changed to a
    far or a bad legacy value, or changed to a nearer one."""

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            table = await create_table(conn, world.schema, "json", 0.0, seed=99, rows=800)
            plan = plan_for(f"SELECT id, embedding <-> $1 AS d FROM {table.name} ORDER BY d LIMIT $2 OFFSET $3",
                            table.route(), await load_catalog(conn, [table.route()]))
            rng = np.random.default_rng(12)
            for limit, offset in ((5, 0), (4, 2)):
                q = rng.standard_normal(DIMS).astype(np.float32)
                keys, bound = candidates(table, q, "<->", plan, limit, offset)
                deleted, migrated, far, bad, nearer = keys[0], keys[1], keys[2], keys[3], keys[-1]
                far_vec = (q + 50).astype(np.float32)
                await conn.execute(f"DELETE FROM {table.name} WHERE id = $1", deleted)
                del table.legacy[deleted]
                await conn.execute(f"UPDATE {table.name} SET embedding_vector = $2 WHERE id = $1", migrated, far_vec)
                table.vectors[migrated] = far_vec
                await conn.execute(f"UPDATE {table.name} SET embedding = $2 WHERE id = $1", far, encode_json(far_vec))
                table.legacy[far] = far_vec
                await conn.execute(f"UPDATE {table.name} SET embedding = 'oops' WHERE id = $1", bad)
                table.legacy[bad] = None
                near_vec = (q + 1e-3).astype(np.float32)
                await conn.execute(f"UPDATE {table.name} SET embedding = $2 WHERE id = $1", nearer,
                                   encode_json(near_vec))
                table.legacy[nearer] = near_vec
                rows = await conn.fetch(plan.sql_with_param, q, limit, offset, *plan.extra_params(keys, bound))
                assert_exact([r["id"] for r in rows], table, q, "<->", lambda k: True, limit, offset,
                             [r["d"] for r in rows])
                got = {r["id"] for r in rows}
                assert not got & {deleted, migrated, far, bad}
                if offset == 0:
                    assert rows[0]["id"] == nearer
        finally:
            await conn.close()

    run(go())


def test_outer_scan_is_keyed_and_the_guard_is_a_one_time_filter(world: World) -> None:
    """D (which parses legacy text) must only run on the union's rows: the outer scan uses the key index."""
    table = world.json[0.005]
    plan = plan_for(f"SELECT id FROM {table.name} WHERE category = $2 ORDER BY embedding <=> $1 LIMIT 10",
                    table.route(), world.catalogs[table.name])
    q = np.random.default_rng(1).standard_normal(DIMS).astype(np.float32)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            keys, bound = candidates(table, q, "<=>", plan, 10, None)
            lines = [r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + plan.sql_with_param, q, 5,
                                                    *plan.extra_params(keys, bound))]
            text = "\n".join(lines)
            assert "One-Time Filter" in text, text
            assert any("Index Cond: (id = ANY ((InitPlan" in line for line in lines), text
        finally:
            await conn.close()

    run(go())


# -- what the client sees ------------------------------------------------------------------------------------------
SHAPES = [
    "SELECT id, embedding {op} $1 FROM {t} ORDER BY 2 LIMIT 3",
    "SELECT id AS key, title, embedding {op} $1 AS score FROM {t} WHERE category = $2 ORDER BY score LIMIT $3::int",
    "SELECT *, l2_distance(embedding, $1) FROM {t} ORDER BY embedding {op} $1 LIMIT $2 OFFSET $3",
    "SELECT title FROM {t} t WHERE t.embedding {op} $1 < $2 ORDER BY t.embedding {op} $1 LIMIT 5",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_columns_and_parameters_are_those_of_the_client_query(world: World, shape: str) -> None:
    """Against the primary rewrite for a legacy-column route, and against the client's own query when the
    client writes the vector column."""
    table = world.json[0.5]
    catalog = world.catalogs[table.name]

    async def describe(conn: asyncpg.Connection, sql: str, params: int | None = None) -> tuple[list, list]:
        statement = await conn.prepare(sql)
        attributes = [(a.name, a.type.oid) for a in statement.get_attributes()]
        parameters = [p.oid for p in statement.get_parameters()]
        return attributes, parameters[:params] if params is not None else parameters

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            for route, column in ((table.route(), "embedding"), (table.route(column="embedding_vector"),
                                                                   "embedding_vector")):
                sql = shape.format(t=table.name, op="<->").replace("embedding", column)
                query = analyze(sql, [route], ("public",), catalog)
                plan = build_merge(query, catalog)
                reference = to_sql(to_primary(query.expression, query, catalog)) if column == "embedding" else sql
                merged = await describe(conn, plan.sql_with_param, plan.param_count)
                assert merged == await describe(conn, reference)
                all_params = (await describe(conn, plan.sql_with_param))[1]
                extra = await conn.fetch("SELECT $1::regtype::oid, $2::regtype::oid", *plan.extra_param_types)
                assert all_params[plan.param_count:] == list(extra[0])
        finally:
            await conn.close()

    run(go())


# -- formats ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bytea_f32", "bytea_f64", "real[]", "float8[]"])
def test_other_formats(world: World, kind: str) -> None:
    rng = np.random.default_rng(21)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            await install_schema(conn)  # the deploy schema: pgcutover.try_vector
            for fraction in (0.0, 0.5):
                table = await create_table(conn, world.schema, kind, fraction, seed=30, rows=1200)
                catalog = await load_catalog(conn, [table.route()])
                for op, case in itertools.product(("<->", "<#>"), CASES[:2]):
                    sql = case.sql.format(t=table.name, op=op, q="")
                    plan = plan_for(sql, table.route(), catalog, server_decoder=True)
                    await check_case(conn, table, plan, case, rng.standard_normal(DIMS).astype(np.float32), op)
            if kind.startswith("bytea"):
                with pytest.raises(Passthrough) as info:
                    plan_for(CASES[0].sql.format(t=table.name, op="<->"), table.route(), catalog)
                assert info.value.reason == "fallback-needs-decoder"
        finally:
            await conn.close()

    run(go())


def test_text_keys_are_quoted_safely(world: World) -> None:
    keys = ["plain", "it's", "back\\slash", "\\'; DROP TABLE x; --", "ünï", "", "x" * 40]
    keys += [f"k{i}" for i in range(200)]

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            await conn.execute("SET standard_conforming_strings = off")  # the literal form must not care
            table = await create_table(conn, world.schema, "json", 0.0, seed=40, key_type="text", keys=keys)
            catalog = await load_catalog(conn, [table.route()])
            q = np.zeros(DIMS, dtype=np.float32)
            sql = f"SELECT id FROM {table.name} ORDER BY embedding <-> '{literal(q)}' LIMIT 300"
            plan = plan_for(sql, table.route(), catalog)
            assert (plan.key_type, plan.key_type_assumed) == ("text", False)
            cands, bound = candidates(table, q, "<->", plan, 300, None)
            assert set(keys[:5]) <= set(cands)
            rows = await conn.fetch(plan.sql_with_literal(cands, bound))
            assert_exact([r["id"] for r in rows], table, q, "<->", lambda k: True, 300, 0)
            rows = await conn.fetch(plan.sql_with_param, *plan.extra_params(cands, bound))
            assert_exact([r["id"] for r in rows], table, q, "<->", lambda k: True, 300, 0)
        finally:
            await conn.close()

    run(go())


JSON_CORPUS = [
    "[1,2,3]", " [ 1 , 2 ,3 ]\n", "[0x10,1,.5]", "[+5.,-.5e-3,1E+05]", "[1e-50,1,1]", "[1e10,2,3]",
    "[3.4028234e38,1,1]", "[3.4028236e38,1,1]", "[0x1p127,1,1]", "[0x1p128,1,1]", "[" + "9" * 40 + ",1,1]",
    "[1," + "0" * 60 + "1,2]", "[1,,2]", "[nan,1,2]", "[1,inf,2]", "[Infinity,1,2]", "[1,2]", "[1,2,3,4]", "[]",
    "[1,2,3]x", "{1,2,3}", "[\"1\",2,3]", "[1\u00a0,2,3]", "[1 2,3,4]", "[null,1,2]", "", "junk", "[1,2,3],",
    "[1e39,1,1]", "[-1e39,1,1]", "[1e10,1e-50,1]", "[0x1p-200,0x1p100,1]", "[1e38,1e-320,-3.4028235e38]",
    "[1.5e,1,1]", "[0x,1,1]", "[\t1,\x0b2,\x0c3\r]", "[1,2,3]\x1c", "[" + "9" * 27 + ".5,1,1]",
    "[" + "9" * 28 + ",1,1]", "[1e+09,1e9,1E-99999]", "[" + "0" * 30 + "1,1,1]", "[-0,+0,.0e0]", "[1.,2.e3,3]",
]
ARRAY_CORPUS = ["{1,2,3}", "{1,2}", "{{1,2,3},{4,5,6}}", "{1,NULL,3}", "{NaN,1,2}", "{1,Infinity,2}",
                "{1e300,1,2}", "{3.4028234e38,1,1}", "{3.5e38,1,1}", "[0:2]={1,2,3}", "{}", "{1e-50,1,1}",
                "{1e38,1e-50,3.4028235e38}",
                "{3.4028235677973366e38,1,1}", "{3.4028235677973362e38,1,1}", "{-1e39,1,1}"]


def test_sql_decoders_agree_with_the_deploy_functions(world: World) -> None:
    """L(x) never raises and equals pgcutover.try_vector(x) (the backfill's own conversion) on hostile input;
    the only allowed difference is L refusing a risky text that also underflows float4 (none here)."""

    async def agree(conn: asyncpg.Connection, fmt: str, cast: str, corpus: list[str]) -> None:
        route = Route(table="t", column="e", legacy_column="e", legacy_format=fmt, dims=3)
        legacy = parse_one(f"SELECT $1::text::{cast}").selects[0]  # the value arrives as text
        sql = (f"SELECT ({to_sql(legacy_vector(route, legacy, 3, cast))})::text, "
               f"pgcutover.try_vector($1::text::{cast}, '{fmt}', 3)::text")
        for value in corpus:
            ours, theirs = await conn.fetchrow(sql, value)
            assert ours == theirs, (value, ours, theirs)

    async def go() -> None:
        conn = await connect(world.dsn)
        try:
            await install_schema(conn)
            await agree(conn, "json", "text", JSON_CORPUS)
            for cast in ("real[]", "double precision[]"):
                corpus = [v for v in ARRAY_CORPUS
                          if await conn.fetchval("SELECT pg_input_is_valid($1, $2)", v, cast)]
                assert len(corpus) >= 8
                await agree(conn, "array", cast, corpus)
        finally:
            await conn.close()

    run(go())


def test_json_patterns_have_no_backslash() -> None:
    # They must read the same whatever standard_conforming_strings says.
    assert "\\" not in JSON_SYNTAX + JSON_SAFE + ARRAY_RISKY


# -- plans: refusals, caching, index shape, literals -------------------------------------------------------------
ROUTE = Route(table="public.items", column="embedding", vector_column="embedding_vector",
              legacy_column="embedding", legacy_format="json", dims=DIMS)
PASSTHROUGH = [
    ("SELECT id FROM items ORDER BY embedding <-> (SELECT v FROM q) LIMIT 3", "fallback-vector-unknown"),
    ("SELECT id FROM items TABLESAMPLE SYSTEM (10) ORDER BY embedding <-> $1 LIMIT 3", "fallback-tablesample"),
    ("SELECT id FROM items ORDER BY embedding <~> $1 LIMIT 3", None),
    ("SELECT id, embedding <=> $1 FROM items ORDER BY embedding <-> $1", "universal-distances"),
]
# no top-k bound: the universal merge (every legacy distance shipped) answers them
UNIVERSAL = [
    "SELECT count(*) FROM items GROUP BY category ORDER BY min(embedding <-> $1) LIMIT 3",
    "SELECT id FROM items ORDER BY embedding <-> $1",
    "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT ALL",
    "SELECT id FROM items ORDER BY id, embedding <-> $1 LIMIT 3",
    "SELECT id FROM items ORDER BY 0.7 * (1 - (embedding <=> $1)) + 0.3 * category DESC LIMIT 3",
    "SELECT id, row_number() OVER () FROM items ORDER BY embedding <-> $1 LIMIT 3",
    "SELECT * FROM (SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 3) s",
    "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 3 UNION ALL SELECT 1",
    "SELECT id FROM items WHERE embedding <-> $1 < 1",
]


@pytest.mark.parametrize("sql", UNIVERSAL)
def test_shapes_without_a_top_k_bound_get_the_universal_merge(sql: str) -> None:
    plan = build_merge(analyze(sql, [ROUTE]))
    assert plan.universal and plan.extra_count == 3 and plan.slots.count("ukeys") == 1
    assert "LEFT JOIN UNNEST(($" in plan.sql_with_param


@pytest.mark.parametrize(("sql", "reason"), PASSTHROUGH)
def test_shapes_it_cannot_answer_exactly_pass_through(sql: str, reason: str | None) -> None:
    with pytest.raises(Passthrough) as info:
        build_merge(analyze(sql, [ROUTE]))
    if reason is not None:
        assert info.value.reason == reason


@pytest.mark.parametrize(("route", "reason"), [
    (Route(table="items", column="embedding", legacy_column="embedding", fallback=False), "fallback-off"),
    (Route(table="items", column="embedding", vector_column="v"), "fallback-no-legacy"),
    (Route(table="items", column="embedding", vector_column="v", legacy_column="embedding"), "fallback-needs-dims"),
])
def test_routes_it_cannot_serve(route: Route, reason: str) -> None:
    with pytest.raises(Passthrough) as info:
        build_merge(analyze("SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 3", [route]))
    assert info.value.reason == reason


def test_plan_is_built_from_a_copy_and_is_stable() -> None:
    query = analyze("SELECT id, embedding <=> $2 AS d FROM items i WHERE category = $1 ORDER BY d LIMIT 5", [ROUTE])
    before = to_sql(query.expression)
    first, second = build_merge(query), build_merge(query)
    assert to_sql(query.expression) == before
    assert first.sql_with_param == second.sql_with_param
    assert first.sql_with_literal([1, 2], 0.25) == second.sql_with_literal([1, 2], 0.25)
    assert (first.vector_param_index, first.param_count, first.limit_value, first.total_value) == (2, 2, 5, 5)
    assert first.search_k(5, None) == 6


def test_vector_branch_takes_the_expression_index_shape() -> None:
    index = IndexInfo("items_hnsw", "hnsw", "((embedding_vector)::halfvec(16))", "halfvec_cosine_ops", "<=>")
    table = TableInfo("public", "items", (ColumnInfo("id", "integer"), ColumnInfo("embedding", "text"),
                                          ColumnInfo("embedding_vector", "vector(16)")), (index,))
    catalog = Catalog.build([table])
    plan = build_merge(analyze("SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 5", [ROUTE], catalog=catalog),
                       catalog)
    assert "ORDER BY (embedding_vector::halfvec(16)) <=> $1::vector::halfvec(16) LIMIT 5)" in plan.sql_with_param
    assert (plan.key_type, plan.extra_param_type) == ("integer", "integer[]")


def test_literals() -> None:
    query = analyze("SELECT id FROM items ORDER BY embedding <-> '[1,2]' LIMIT 5 OFFSET 1", [ROUTE])
    plan = build_merge(query)
    assert plan.vector_literal == "[1,2]" and plan.vector_param_index is None and plan.param_count == 0
    sql = plan.sql_with_literal(np.array([3, 1], dtype=np.int64), float("nan"))
    assert "(ARRAY[3,1]::bigint[])" in sql and "('NaN'::double precision)" in sql
    assert "('{}'::bigint[])" in plan.sql_with_literal([], None)
    assert "(NULL::double precision)" in plan.sql_with_literal([], None)
    assert "('Infinity'::double precision)" in plan.sql_with_literal([], math.inf)
    assert "('1e-05'::double precision)" in plan.sql_with_literal([], 1e-5)
    with pytest.raises(TypeError):
        plan.sql_with_literal(["1; DROP TABLE items"], 1.0)
    with pytest.raises(TypeError):
        plan.sql_with_literal([True], 1.0)
    assert quote_literal("a'b") == "'a''b'" and quote_literal("a\\b") == "E'a\\\\b'"
    assert parse_one(f"SELECT {quote_literal(chr(39) * 3)}").selects[0].this == "'''"
