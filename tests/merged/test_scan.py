"""fallback/scan.py, the exact scan behind l1 and farthest-first merges: its candidates always hold the true
top-k by the server's float32 arithmetic, and its bound separates them from every row left out (checked here
against a float32 re-implementation of pgvector's distances, for float32 and float16 stores)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgcutover.core.config import Route
from pgcutover.fallback.scan import candidates, scan
from pgcutover.fallback.store import LegacyStore


def server_distance(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """pgvector's float32 arithmetic (sums accumulated in float32)."""
    x32, q32 = x.astype(np.float32), q.astype(np.float32)
    if metric == "l2":
        diff = x32 - q32
        return np.sqrt((diff * diff).sum(axis=1, dtype=np.float32).astype(np.float64))
    if metric == "l1":
        return np.abs(x32 - q32).sum(axis=1, dtype=np.float32).astype(np.float64)
    dots = (x32 * q32).sum(axis=1, dtype=np.float32).astype(np.float64)
    if metric == "ip":
        return -dots
    norms = np.sqrt((x32 * x32).sum(axis=1, dtype=np.float32)) * np.sqrt((q32 * q32).sum(dtype=np.float32))
    return 1 - np.clip(dots / norms.astype(np.float64), -1, 1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", ["l2", "l1", "ip", "cosine"])
@pytest.mark.parametrize("farthest", [False, True])
def test_candidates_hold_the_server_top_k_and_the_bound_separates(dtype: str, metric: str, farthest: bool) -> None:
    rng = np.random.default_rng(hash((dtype, metric, farthest)) % 2**32)
    dims, rows = 24, 3000
    store = LegacyStore(Route(table="t", column="v", legacy_column="l", legacy_format="json", dims=dims),
                        dtype=dtype)
    vectors = rng.standard_normal((rows, dims)).astype(np.float32)
    vectors[:40] = vectors[40]  # ties
    store.bulk_upsert(list(range(rows)), vectors)
    stored = np.vstack([store.get(k) for k in range(rows)])
    for _ in range(5):
        q = rng.standard_normal(dims).astype(np.float32)
        asked = int(rng.integers(1, 60))
        keys, bound = candidates(store.snapshot(), q, asked, metric, farthest=farthest, cap=10_000)
        server = server_distance(stored, q, metric)
        chosen = np.zeros(rows, dtype=bool)
        chosen[np.asarray(keys, dtype=np.int64)] = True
        assert bound is not None and math.isfinite(bound)
        if farthest:
            assert (server[~chosen] <= bound).all()
            assert (np.sort(server[chosen])[::-1][:asked] >= bound).all()
        else:
            assert (server[~chosen] >= bound).all()
            assert (np.sort(server[chosen])[:asked] <= bound).all()


def test_every_row_is_a_candidate_when_few() -> None:
    store = LegacyStore(Route(table="t", column="v", legacy_column="l", legacy_format="json", dims=3))
    store.bulk_upsert([1, 2], np.ones((2, 3), dtype=np.float32))
    keys, bound = candidates(store.snapshot(), np.zeros(3, dtype=np.float32), 5, "l1", farthest=True, cap=100)
    assert sorted(keys.tolist()) == [1, 2] and bound == math.inf
    result = scan(store.snapshot(), np.zeros(3, dtype=np.float32), "l1")
    assert result.distances.tolist() == [3.0, 3.0]
