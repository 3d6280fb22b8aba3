"""Exactness of candidate sets from bounds (fallback.screening): int8 storage for every metric, l1 on every storage.

The property, over adversarial data (ties, huge and tiny norms, zero rows, deleted rows, several segments): the
candidate set contains every row of the float64 brute-force top-k (all rows tied with the k-th too), and every row
left out is at least at `distances[k-1]`, the bound the merged query's guard relies on. Plus the same against
PostgreSQL's own ORDER BY over a table loaded into an int8 store.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcutover.core.config import Route
from pgcutover.fallback import kernels, screening
from pgcutover.fallback.formats import Int8Rows, VectorFormatError, quantize_int8
from pgcutover.fallback.knn import METRICS, Query, search_snapshot
from pgcutover.fallback.screening import max_candidates
from pgcutover.fallback.store import LegacyStore
from tests.fallback.conftest import create_table, factory, run

OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>", "l1": "<+>"}  # pgvector's operator per metric

ROUTE = Route(table="public.fb_screening", column="emb_vector", legacy_column="emb", legacy_format="json")
F32_MAX = float(np.finfo(np.float32).max)


def brute_force(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances as pgvector defines them (NaN: cosine of a zero vector)."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((x - q) ** 2).sum(axis=1))
    if metric == "l1":
        return np.abs(x - q).sum(axis=1)
    if metric == "ip":
        return -(x @ q)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - np.clip((x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q)), -1, 1)


def check(result, keys: np.ndarray, x: np.ndarray, q: np.ndarray, metric: str, k: int) -> None:
    dist = brute_force(x, q, metric)
    got = set(result.keys.tolist())
    assert len(got) == len(result.keys)  # no key twice
    finite = ~np.isnan(dist)
    if finite.sum() >= k:
        kth = np.sort(dist[finite])[k - 1]
        must = keys[finite & (dist <= kth)]
    else:  # NaN (a zero row with cosine) sorts after every number: every real row is in the top-k
        must = keys[finite]
    assert set(must.tolist()) <= got
    assert len(result) >= min(k, len(keys))
    if len(result) >= k:
        bound = result.distances[k - 1]
        out = np.isin(keys, result.keys, invert=True) & finite
        if not np.isnan(bound):
            # the guard's promise: every row left out is at least at the bound (server float32 and all)
            assert (dist[out] >= bound).all(), (dist[out].min(), bound)
            if len(result) <= max_candidates(k):  # and k candidates are within it (the guard stays off)
                inside = np.isin(keys, result.keys) & finite & (dist <= bound)
                assert inside.sum() >= min(k, finite.sum())
    ordered = result.distances[~np.isnan(result.distances)]
    assert (np.diff(ordered) >= 0).all()


def blocks(block: int, gemm_rows: int, kernel: bool) -> contextlib.ExitStack:
    """`block` rows at a time (both paths; the single-scan path in rounds of `block` rows, and with small blocks
    its limit refined from 2 seed rows whenever 4 rows pass), the SIMD kernel (fallback.kernels) on or off."""
    stack = contextlib.ExitStack()
    if block <= 4:
        stack.enter_context(mock.patch.object(screening, "REFINE_ROWS", 1))
        stack.enter_context(mock.patch.object(screening, "SEED_ROWS", 2))
    stack.enter_context(mock.patch.object(screening, "POST_ROWS", block))
    stack.enter_context(mock.patch.object(screening, "ROUND_ROWS", block))
    stack.enter_context(mock.patch.object(screening, "KERNEL_ROWS", block))
    stack.enter_context(mock.patch.object(screening, "GEMM_ROWS", gemm_rows))
    # without NumKong both draws run the numpy path; test_the_simd_kernel_is_installed fails for it
    on = kernel and kernels.available()
    stack.enter_context(mock.patch.object(kernels, "available", lambda: on))
    return stack


def test_the_simd_kernel_is_installed() -> None:
    """NumKong is a dependency (pyproject): without it int8 screening silently runs the slow numpy path."""
    assert kernels.available()


def magnitudes() -> st.SearchStrategy[float]:
    return st.sampled_from([1.0, 1e-3, 1e-20, 1e-38, 1e-42, 1e3, 1e15, 1e30, 1e36])


@st.composite
def datasets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, str, list[int], int]:
    dims = draw(st.integers(1, 24))
    rows = draw(st.integers(1, 70))
    metric = draw(st.sampled_from(METRICS))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = draw(magnitudes())
    kind = draw(st.sampled_from(["gauss", "ties", "mixed", "clusters", "integers"]))
    if kind == "gauss":
        x = rng.standard_normal((rows, dims)) * scale
    elif kind == "ties":  # a handful of distinct rows repeated: many exact ties
        pool = rng.standard_normal((draw(st.integers(1, 4)), dims)) * scale
        x = pool[rng.integers(0, len(pool), rows)]
    elif kind == "clusters":
        centers = rng.standard_normal((3, dims)) * scale
        x = centers[rng.integers(0, 3, rows)] + rng.standard_normal((rows, dims)) * scale * 1e-3
    elif kind == "integers":
        x = rng.integers(-3, 4, (rows, dims)).astype(np.float64) * scale
    else:  # every row its own magnitude, one huge element here and there
        x = rng.standard_normal((rows, dims)) * np.array([draw(magnitudes()) for _ in range(rows)])[:, None]
        x[rng.random((rows, dims)) < 0.05] = scale * 1e3
    zeros = draw(st.integers(0, 3))
    x[rng.integers(0, rows, zeros)] = 0.0
    x = np.clip(x, -F32_MAX / 1e3, F32_MAX / 1e3).astype(np.float32)
    q_kind = draw(st.sampled_from(["row", "random", "near", "zero_dims"]))
    if q_kind == "row":
        q = x[rng.integers(0, rows)].copy()
    elif q_kind == "near":
        q = (x[rng.integers(0, rows)] * np.float32(1 + 1e-6)).astype(np.float32)
    else:
        q = (rng.standard_normal(dims) * draw(magnitudes())).astype(np.float32)
        if q_kind == "zero_dims":
            q[: dims // 2] = 0
    if metric == "cosine" and not q.any():
        q[0] = 1.0
    k = draw(st.integers(1, 12))
    deleted = draw(st.lists(st.integers(0, rows - 1), max_size=5, unique=True))
    segment_rows = draw(st.sampled_from([4, 16, 1024]))
    return x, q, k, metric, deleted, segment_rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=datasets(), dtype=st.sampled_from(["int8", "int8", "float32", "float16"]), threads=st.sampled_from([1, 2]),
       block=st.sampled_from([3, 8, 8192]), kernel=st.booleans())
def test_candidates_contain_the_exact_top_k(data, dtype: str, threads: int, block: int, kernel: bool) -> None:
    """`block` rows at a time: small blocks run the prefilter (a limit is known after the first block)."""
    x, q, k, metric, deleted, segment_rows = data
    if dtype != "int8" and metric != "l1":
        metric = "l1"  # float stores answer the other metrics exactly (tests/fallback/test_knn.py)
    if dtype == "float16":
        x = np.clip(x, -60000, 60000).astype(np.float16).astype(np.float32)  # what a float16 store can hold
    store = LegacyStore(ROUTE, dtype=dtype, segment_rows=segment_rows)
    keys = np.arange(len(x))
    store.bulk_upsert(keys.tolist(), x)
    for key in deleted:
        store.remove(key)
    alive = np.isin(keys, deleted, invert=True)
    if not alive.any():
        return
    with blocks(block, min(block, 5), kernel):
        result = search_snapshot(store.snapshot(), [Query(q, k, metric)], threads=threads)[0]
    check(result, keys[alive], x[alive], q, metric, k)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(datasets(), min_size=2, max_size=7), block=st.sampled_from([4, 16]), kernel=st.booleans())
def test_batches_with_the_prefilter(data, block: int, kernel: bool) -> None:
    """Several queries over one int8 store, cosine and ip mixed (the prefilter's shared row maxima)."""
    x = data[0][0]
    store = LegacyStore(ROUTE, dtype="int8", segment_rows=data[0][5])
    store.bulk_upsert(list(range(len(x))), x)
    queries = []
    for i, (_, q, k, _, _, _) in enumerate(data[1:] or data):
        if len(q) != x.shape[1]:
            q = np.resize(q, x.shape[1]).astype(np.float32)
        if not q.any():
            q[0] = 1.0
        queries.append(Query(q, k, ("cosine", "ip")[i % 2]))
    with blocks(block, 3, kernel):  # from kernels.PACK_MIN queries the kernel runs packed
        results = search_snapshot(store.snapshot(), queries, threads=1)
    for query, result in zip(queries, results, strict=True):
        check(result, np.arange(len(x)), x, query.vector, query.metric, query.k)


@pytest.mark.parametrize("kernel", [True, False])
def test_a_tiny_query_whose_codes_are_exact_keeps_its_bound(kernel: bool) -> None:
    """Found by Hypothesis: |q| ~ 1e-21 with both elements at +-max leaves a level-1 residual of exactly 0; its
    level-2 slack was 1e-12 absolute (of a nominal step 1), so the fine U of the nearest row was 2 while the
    single-scan path had cut the other rows at the limit its score gave: the reported bound (2) was above a row
    left out (0.975)."""
    x = np.array([[0.12573022, -0.13210486], [0.64042264, 0.10490011], [-0.5356694, 0.36159506]], dtype=np.float32)
    store = LegacyStore(ROUTE, dtype="int8", segment_rows=4)
    store.bulk_upsert([0, 1, 2], x)
    q = np.array([-1.3210486e-21, -1.3210486e-21], dtype=np.float32)
    for metric in ("cosine", "ip", "l2"):
        with blocks(4, 3, kernel):
            result = search_snapshot(store.snapshot(), [Query(q, 1, metric)], threads=1)[0]
        check(result, np.arange(3), x, q, metric, 1)


def test_batched_queries_each_keep_their_guarantee() -> None:
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((20, 48)).astype(np.float32)
    x = (centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 48))).astype(np.float32)
    store = LegacyStore(ROUTE, dtype="int8", segment_rows=500)
    store.bulk_upsert(list(range(3000)), x)
    queries = [Query(x[i] + 0.01 * rng.standard_normal(48).astype(np.float32), int(rng.integers(1, 30)),
                     METRICS[i % 4]) for i in range(24)]
    batched = search_snapshot(store.snapshot(), queries)
    for query, result in zip(queries, batched, strict=True):
        check(result, np.arange(3000), x, query.vector, query.metric, query.k)
        single = search_snapshot(store.snapshot(), [query], threads=1)[0]
        assert set(single.keys.tolist()) == set(result.keys.tolist())


def test_clustered_candidate_sets_are_small() -> None:
    """Not exactness: that the bound is useful on clustered data (a regression would show here first)."""
    rng = np.random.default_rng(9)
    centers = rng.standard_normal((200, 256)).astype(np.float32)
    x = (centers[rng.integers(0, 200, 20000)] + 0.4 * rng.standard_normal((20000, 256))).astype(np.float32)
    store = LegacyStore(ROUTE, dtype="int8")
    store.bulk_upsert(list(range(len(x))), x)
    for metric in ("l2", "cosine", "ip"):
        q = (x[5] + 0.2 * rng.standard_normal(256)).astype(np.float32)
        result = search_snapshot(store.snapshot(), [Query(q, 11, metric)])[0]
        check(result, np.arange(len(x)), x, q, metric, 11)
        assert len(result) < 200, (metric, len(result))


def test_ties_beyond_the_cap_keep_a_valid_bound() -> None:
    """5,000 identical rows for k = 3: the set is cut, the bound still holds for every row left out."""
    row = np.linspace(-1, 1, 8, dtype=np.float32)
    x = np.vstack([np.tile(row, (5000, 1)), np.eye(8, dtype=np.float32) * 50])
    store = LegacyStore(ROUTE, dtype="int8")
    store.bulk_upsert(list(range(len(x))), x)
    result = search_snapshot(store.snapshot(), [Query(row, 3, "l2")])[0]
    assert len(result) == max_candidates(3)
    assert set(result.keys.tolist()) <= set(range(5000))  # some of the tied rows (any k of them are the top-k)
    dist = brute_force(x, row, "l2")
    out = np.isin(np.arange(len(x)), result.keys, invert=True)
    assert (dist[out] >= result.distances[2]).all()  # the guard then finds the rest: still exact


def test_nan_and_infinite_rows_are_refused() -> None:
    store = LegacyStore(ROUTE, dtype="int8")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(VectorFormatError):
            store.bulk_upsert([1], np.array([[1.0, bad, 2.0]], dtype=np.float32))
    assert len(store) == 0


def test_quantization_bounds_hold() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.standard_normal((50, 33)) * 10.0 ** rng.integers(-40, 37, (50, 1)),
                   np.zeros((1, 33)), np.full((1, 33), 3.5)]).astype(np.float32)
    q = quantize_int8(x)
    approx = q.offset[:, None] + q.scale[:, None] * q.codes.astype(np.float64)
    resid = x.astype(np.float64) - approx
    assert (np.sqrt((resid ** 2).sum(axis=1)) <= q.resid_l2).all()
    assert (np.abs(resid).sum(axis=1) <= q.resid_l1).all()
    assert (np.abs(q.codes.astype(int)) <= 127).all()


def test_int8_store_is_a_quarter_and_keeps_no_float32() -> None:
    x = np.random.default_rng(2).standard_normal((4096, 1536)).astype(np.float32)
    stores = {}
    for dtype in ("float32", "int8"):
        stores[dtype] = LegacyStore(ROUTE, dtype=dtype, segment_rows=4096)
        stores[dtype].bulk_upsert(list(range(len(x))), x)
    assert stores["int8"].nbytes <= 0.3 * stores["float32"].nbytes
    assert all(view.data.dtype == np.int8 for view in stores["int8"].snapshot().segments)
    with pytest.raises(ValueError):
        stores["int8"].get(1)


@pytest.mark.parametrize("metric", METRICS)
def test_int8_store_loaded_from_postgres_against_order_by(dsn: str, metric: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=24, rows=1500, seed=METRICS.index(metric))
        store = LegacyStore(table.route(), dtype="int8", segment_rows=256, chunk_rows=200)
        await store.load(factory(dsn))
        assert len(store) == len(table.truth)
        # quantized on the decode thread, chunk by chunk: the same codes and bounds as quantizing the rows here
        views = store.snapshot().segments
        loaded = Int8Rows.concat([view.quant for view in views if view.quant is not None])
        expected = quantize_int8(np.stack([table.truth[key] for view in views for key in view.keys.tolist()]))
        assert len(loaded) == len(table.truth)
        for column, want in zip(loaded.columns(), expected.columns(), strict=True):
            assert np.array_equal(column, want)
        conn = await asyncpg.connect(dsn)
        try:
            rng = np.random.default_rng(3)
            for _ in range(3):
                q = rng.standard_normal(24).astype(np.float32)
                for k in (1, 10, 40):
                    result = search_snapshot(store.snapshot(), [Query(q, k, metric)])[0]
                    keys = np.array(sorted(table.truth))
                    check(result, keys, np.stack([table.truth[i] for i in keys]), q, metric, k)
                    literal = "[" + ",".join(repr(float(v)) for v in q) + "]"
                    # PostgreSQL's own float32 distances: its top-k are candidates, and nothing left out is nearer
                    # than the bound by the server's arithmetic either.
                    rows = await conn.fetch(
                        f"SELECT id, emb::vector {OPERATORS[metric]} $1::text::vector AS d FROM {table.name}"
                        f" WHERE emb_vector IS NULL AND emb IS NOT NULL ORDER BY d, id", literal)
                    got = set(result.keys.tolist())
                    kth = rows[k - 1]["d"]
                    assert {r["id"] for r in rows if r["d"] <= kth} <= got
                    bound = result.distances[k - 1]
                    assert all(r["d"] >= bound for r in rows if r["id"] not in got)
        finally:
            await conn.close()

    run(main())


def test_int8_compaction_keeps_codes_and_bounds() -> None:
    """Tombstones compacted into a new segment: the codes, scales and residual bounds move with their rows."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((600, 16)).astype(np.float32) * rng.choice([1e-3, 1.0, 1e3], (600, 1))
    store = LegacyStore(ROUTE, dtype="int8", segment_rows=100)
    store.bulk_upsert(list(range(600)), x)
    gone = [k for k in range(600) if k % 3]
    for key in gone:
        store.remove(key)

    async def compact_all() -> int:
        done = 0
        while await store.compact():
            done += 1
        return done

    assert run(compact_all()) > 0
    keys = np.array([k for k in range(600) if k % 3 == 0])
    assert len(store) == len(keys) and len(store.snapshot().segments) < 6
    for metric in METRICS:
        q = rng.standard_normal(16).astype(np.float32)
        result = search_snapshot(store.snapshot(), [Query(q, 7, metric)])[0]
        check(result, keys, x[keys], q, metric, 7)
