"""Exact top-k against brute force computed here in float64, and against PostgreSQL's own ORDER BY."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from pgcutover.fallback.formats import encode_json
from pgcutover.fallback.knn import BatchSearcher, Query, search_snapshot
from pgcutover.fallback.store import LegacyStore
from tests.fallback.conftest import LegacyTable, create_table, factory, run

OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>", "l1": "<+>"}  # pgvector's operator per metric

METRICS = ["l2", "cosine", "ip"]


def brute_force(truth: dict[int, np.ndarray], query: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every key and its distance, nearest first, computed independently of fallback.knn."""
    keys = np.array(sorted(truth))
    x = np.stack([truth[k] for k in keys]).astype(np.float64)
    q = query.astype(np.float64)
    if metric == "l2":
        dist = np.sqrt(((x - q) ** 2).sum(axis=1))
    elif metric == "ip":
        dist = -(x @ q)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    order = np.argsort(np.where(np.isnan(dist), np.inf, dist), kind="stable")
    return keys[order], dist[order]


def assert_exact(result, truth: dict[int, np.ndarray], query: np.ndarray, metric: str, k: int) -> None:
    keys, dist = brute_force(truth, query, metric)
    k = min(k, len(keys))
    assert len(result) >= k
    assert list(result.keys[:k]) == list(keys[:k])
    assert np.allclose(result.distances[:k], dist[:k], rtol=1e-12, atol=1e-12, equal_nan=True)
    finite = result.distances[~np.isnan(result.distances)]
    assert np.all(np.diff(finite) >= 0) and not np.isnan(result.distances[:len(finite)]).any()
    if len(result) > k:  # extra rows only when within the error bound of the k-th
        assert result.distances[-1] - dist[k - 1] <= 1e-3 * max(1.0, abs(dist[k - 1]))


async def server_top_k(conn: asyncpg.Connection, table: str, query: np.ndarray, metric: str, k: int) -> list[int]:
    """PostgreSQL's answer over the legacy-only rows, pgvector computing every distance itself."""
    rows = await conn.fetch(
        f"SELECT id FROM {table} WHERE emb_vector IS NULL AND emb IS NOT NULL"
        f" ORDER BY emb::vector {OPERATORS[metric]} $1::text::vector, id LIMIT $2",
        "[" + ",".join(repr(float(x)) for x in query) + "]", k)
    return [r["id"] for r in rows]


@pytest.fixture(scope="module")
def loaded(dsn: str) -> tuple[LegacyTable, LegacyStore]:
    async def main() -> tuple[LegacyTable, LegacyStore]:
        table = await create_table(dsn, "json", dims=32, rows=3000, seed=11)
        store = LegacyStore(table.route(), segment_rows=256, chunk_rows=300)
        await store.load(factory(dsn))
        # Tombstones: rows deleted in the table, then re-read, plus rows removed directly.
        conn = await asyncpg.connect(dsn)
        gone = [k for k in table.truth if k % 11 == 3]
        await conn.execute(f"DELETE FROM {table.name} WHERE id = ANY($1)", gone)
        await store.refresh(conn, gone)
        await conn.close()
        for key in gone:
            del table.truth[key]
        return table, store

    return run(main())


@pytest.mark.parametrize("metric", METRICS)
def test_exact_top_k_with_tombstones(dsn: str, loaded: tuple[LegacyTable, LegacyStore], metric: str) -> None:
    table, store = loaded
    assert store.snapshot().segments[0].alive is not None  # tombstones are really there
    rng = np.random.default_rng(METRICS.index(metric))

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        for _ in range(4):
            query = rng.standard_normal(32).astype(np.float32)
            for k in (1, 10, 57):
                result = search_snapshot(store.snapshot(), [Query(query, k, metric)])[0]
                assert_exact(result, table.truth, query, metric, k)
                server = await server_top_k(conn, table.name, query, metric, k)
                assert set(server) <= set(result.keys.tolist())
        await conn.close()

    run(main())


def test_batched_equals_single(loaded: tuple[LegacyTable, LegacyStore]) -> None:
    table, store = loaded
    rng = np.random.default_rng(5)
    queries = [Query(rng.standard_normal(32).astype(np.float32), int(rng.integers(1, 40)), METRICS[i % 3])
               for i in range(40)]
    batched = search_snapshot(store.snapshot(), queries, block_rows=100)
    for query, result in zip(queries, batched, strict=True):
        single = search_snapshot(store.snapshot(), [query])[0]
        assert result.keys.tolist() == single.keys.tolist()
        assert np.array_equal(result.distances, single.distances)
        assert_exact(result, table.truth, query.vector, query.metric, query.k)


def test_k_beyond_rows_and_widening(loaded: tuple[LegacyTable, LegacyStore]) -> None:
    table, store = loaded
    query = np.ones(32, dtype=np.float32)
    everything = search_snapshot(store.snapshot(), [Query(query, 10_000, "l2")])[0]
    assert len(everything) == len(table.truth)
    assert_exact(everything, table.truth, query, "l2", 10_000)
    narrow, wide = (search_snapshot(store.snapshot(), [Query(query, k, "ip")])[0] for k in (5, 500))
    assert wide.keys[:5].tolist() == narrow.keys.tolist()


def _small_store(vectors: dict[int, np.ndarray], **kwargs) -> LegacyStore:
    table = LegacyTable("fb_memory_only", "json", len(next(iter(vectors.values()))))
    store = LegacyStore(table.route(), **kwargs)
    for key, vector in vectors.items():
        store.upsert(key, vector)
    return store


def test_ties_are_all_returned() -> None:
    rng = np.random.default_rng(2)
    vectors = {k: rng.standard_normal(16).astype(np.float32) for k in range(200)}
    twin = rng.standard_normal(16).astype(np.float32)
    for key in range(1000, 1006):
        vectors[key] = twin
    store = _small_store(vectors, segment_rows=64)
    for metric in METRICS:
        result = search_snapshot(store.snapshot(), [Query(twin, 2, metric)])[0]
        assert set(range(1000, 1006)) <= set(result.keys.tolist())
        assert len(set(result.distances[:6].tolist())) == 1


def test_zero_vectors_and_cosine_nan() -> None:
    rng = np.random.default_rng(3)
    vectors = {k: rng.standard_normal(8).astype(np.float32) for k in range(50)}
    vectors[7] = np.zeros(8, dtype=np.float32)
    store = _small_store(vectors)
    query = rng.standard_normal(8).astype(np.float32)
    result = search_snapshot(store.snapshot(), [Query(query, 50, "cosine")])[0]
    assert result.keys[-1] == 7 and np.isnan(result.distances[-1])
    assert_exact(result, vectors, query, "cosine", 50)
    few = search_snapshot(store.snapshot(), [Query(query, 5, "cosine")])[0]
    assert 7 not in few.keys.tolist()
    zero_query = search_snapshot(store.snapshot(), [Query(np.zeros(8, np.float32), 5, "cosine")])[0]
    assert len(zero_query) == 5 and np.isnan(zero_query.distances).all()  # pgvector: every distance NaN
    l2 = search_snapshot(store.snapshot(), [Query(np.zeros(8, np.float32), 1, "l2")])[0]
    assert l2.keys.tolist() == [7] and l2.distances[0] == 0


def test_float16_store_still_contains_the_float32_top_k() -> None:
    rng = np.random.default_rng(4)
    vectors = {k: (rng.standard_normal(64) * 0.05).astype(np.float32) for k in range(3000)}
    store = _small_store(vectors, dtype="float16", segment_rows=512)
    for metric in METRICS:
        for _ in range(5):
            query = (rng.standard_normal(64) * 0.05).astype(np.float32)
            result = search_snapshot(store.snapshot(), [Query(query, 10, metric)])[0]
            keys, _ = brute_force(vectors, query, metric)
            assert set(keys[:10].tolist()) <= set(result.keys.tolist())
            assert len(result) < 200  # the float16 margin widens, but not to everything


def test_compaction_keeps_answers_and_index() -> None:
    rng = np.random.default_rng(6)
    vectors = {k: rng.standard_normal(16).astype(np.float32) for k in range(2000)}
    store = _small_store(vectors, segment_rows=128)
    for key in range(0, 2000, 3):
        store.remove(key)
        del vectors[key]
    for key in range(1, 300, 3):  # updates: tombstone + append
        vectors[key] = rng.standard_normal(16).astype(np.float32)
        store.upsert(key, vectors[key])
    segments_before = len(store.snapshot().segments)
    old = store.snapshot()

    async def compact_all() -> int:
        n = 0
        while await store.compact():
            n += 1
        return n

    assert run(compact_all()) > 0
    assert len(store.snapshot().segments) < segments_before
    for view in store.snapshot().segments[:-1]:  # what is left: few tombstones per segment
        assert view.alive is None or (~view.alive).mean() <= store.compact_ratio
    for key, vector in vectors.items():
        assert np.array_equal(store.get(key), vector)
    query = rng.standard_normal(16).astype(np.float32)
    for metric in METRICS:
        assert_exact(search_snapshot(store.snapshot(), [Query(query, 25, metric)])[0], vectors, query, metric, 25)
    # A snapshot taken before compaction still answers from what it saw.
    assert len(search_snapshot(old, [Query(query, 5, "l2")])[0]) == 5


def test_batch_searcher_batches_concurrent_queries(loaded: tuple[LegacyTable, LegacyStore]) -> None:
    _, store = loaded
    other = _small_store({k: np.full(32, k, dtype=np.float32) for k in range(1, 20)})
    rng = np.random.default_rng(8)
    queries = [(rng.standard_normal(32).astype(np.float32), int(rng.integers(1, 30)), METRICS[i % 3])
               for i in range(48)]

    async def main() -> None:
        searcher = BatchSearcher(max_batch=16)
        try:
            # A first search occupies the worker; the rest queue up and go together.
            results = await asyncio.gather(
                *(searcher.search(store, q, k, m) for q, k, m in queries),
                searcher.search(other, np.zeros(32, np.float32), 3, "l2"))
            assert max(searcher.batch_sizes) > 1
            assert sum(size * n for size, n in searcher.batch_sizes.items()) == len(queries) + 1
            for (q, k, m), result in zip(queries, results, strict=False):
                single = search_snapshot(store.snapshot(), [Query(q, k, m)])[0]
                assert result.keys.tolist() == single.keys.tolist()
                assert np.array_equal(result.distances, single.distances)
            assert results[-1].keys.tolist() == [1, 2, 3]
            with pytest.raises(ValueError, match="dimensions"):
                await searcher.search(store, np.zeros(5, np.float32), 3, "l2")
            with pytest.raises(ValueError, match="metric"):
                await searcher.search(store, np.zeros(32, np.float32), 3, "hamming")
        finally:
            await searcher.close()

    run(main())


def test_batch_window(loaded: tuple[LegacyTable, LegacyStore]) -> None:
    _, store = loaded

    async def main() -> None:
        searcher = BatchSearcher(window=0.05)
        try:
            async def later(delay: float, seed: int):
                await asyncio.sleep(delay)
                return await searcher.search(store, np.random.default_rng(seed).standard_normal(32), 5, "l2")

            await asyncio.gather(*(later(0.005 * i, i) for i in range(6)))
            assert searcher.batch_sizes == {6: 1}
        finally:
            await searcher.close()

    run(main())


def test_searches_while_the_store_changes() -> None:
    """Upserts, removals and compactions between and during batched searches: every answer is self-consistent."""
    rng = np.random.default_rng(9)
    vectors = {k: rng.standard_normal(16).astype(np.float32) for k in range(3000)}
    store = _small_store(vectors, segment_rows=128)
    churn = list(range(0, 3000, 2))  # odd keys never change: their distances must always be exact

    async def writer(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for key in rng.choice(churn, 50, replace=False).tolist():
                if key in store and rng.random() < 0.5:
                    store.remove(key)
                else:
                    store.upsert(key, rng.standard_normal(16).astype(np.float32))
            await store.compact()
            await asyncio.sleep(0)

    async def main() -> None:
        searcher = BatchSearcher()
        stop = asyncio.Event()
        task = asyncio.create_task(writer(stop))
        try:
            for _ in range(15):
                queries = [rng.standard_normal(16).astype(np.float32) for _ in range(8)]
                results = await asyncio.gather(*(searcher.search(store, q, 20, "l2") for q in queries))
                for query, result in zip(queries, results, strict=True):
                    keys = result.keys.tolist()
                    assert len(keys) == len(set(keys)) >= 20
                    for key, dist in zip(keys, result.distances, strict=True):
                        if key % 2:
                            assert dist == pytest.approx(np.linalg.norm(vectors[key].astype(np.float64) - query),
                                                         rel=1e-12)
        finally:
            stop.set()
            await task
            await searcher.close()
        assert max(searcher.batch_sizes) > 1

    run(main())


def test_empty_store() -> None:
    store = LegacyStore(LegacyTable("fb_empty", "json", 4).route())
    result = search_snapshot(store.snapshot(), [Query(np.ones(4, np.float32), 3, "l2")])[0]
    assert len(result) == 0


def test_near_ties_still_contain_the_servers_top_k(dsn: str) -> None:
    """Rows whose distances differ in the 7th digit, where float32 rounding decides PostgreSQL's order:
    whatever pgvector ranks first must be among the candidates."""
    async def main() -> None:
        dims = 64
        rng = np.random.default_rng(13)
        query = rng.standard_normal(dims).astype(np.float32)
        table = LegacyTable(f"fb_ties_{rng.integers(1 << 30)}", "json", dims)
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"CREATE TABLE {table.name} (id bigint PRIMARY KEY, emb text, emb_vector vector)")
        for key in range(400):
            direction = rng.standard_normal(dims)
            direction /= np.linalg.norm(direction)
            # Same distance from the query up to ~1e-7, and the same norm and dot product up to ~1e-7 too.
            vec = (query + direction * (1 + rng.standard_normal() * 1e-7)).astype(np.float32)
            if key % 2:
                vec = (query * (1 + rng.standard_normal() * 1e-7)).astype(np.float32) + np.float32(1e-3) * \
                    direction.astype(np.float32)
            table.truth[key] = vec
            await conn.execute(f"INSERT INTO {table.name} VALUES ($1, $2)", key, encode_json(vec))
        store = LegacyStore(table.route())
        await store.load(factory(dsn))
        for metric in METRICS:
            for k in (1, 5, 20):
                result = search_snapshot(store.snapshot(), [Query(query, k, metric)])[0]
                server = await server_top_k(conn, table.name, query, metric, k)
                assert set(server) <= set(result.keys.tolist()), (metric, k)
                assert_exact(result, table.truth, query, metric, k)
        await conn.close()

    run(main())
