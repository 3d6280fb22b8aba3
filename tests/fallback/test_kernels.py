"""The SIMD int8 kernel (fallback.kernels): its products are exact integers, and the query's quantization error is
bounded, which is all fallback.screening's coarse bounds assume (the candidate-set property tests are in
test_screening.py)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pgcutover.fallback import kernels


def test_products_are_exact() -> None:
    for dims in (1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 1536, 3072, 16000):
        for queries in (1, kernels.PACK_MIN - 1, kernels.PACK_MIN, 33):
            rng = np.random.default_rng(dims * 100 + queries)
            rows = rng.integers(-127, 128, (23, dims), dtype=np.int8)
            rows[0], rows[1], rows[2] = 127, -127, 0  # the largest sums either sign: 127 * 127 * dims
            q = rng.standard_normal((queries, dims))
            q[0] = 1.0  # codes all 127
            kernel = kernels.QueryCodes(q.astype(np.float32).astype(np.float64))
            assert (kernel.codes1[0] == 127).all()
            for level, codes in enumerate((kernel.codes1, kernel.codes2)):
                got = kernel.dots(rows, level)
                assert got.dtype == np.float64 and got.shape == (len(rows), queries)
                assert np.array_equal(got, (rows.astype(np.int64) @ codes.T.astype(np.int64)).astype(np.float64))


def test_views_and_empty_blocks() -> None:
    rng = np.random.default_rng(5)
    rows = rng.integers(-127, 128, (50, 40), dtype=np.int8)
    for n in (1, kernels.PACK_MIN):
        q = kernels.QueryCodes(rng.standard_normal((n, 40)))
        assert q.dots(rows[:0]).shape == (0, n)
        assert np.array_equal(q.dots(rows[7:31]), rows[7:31].astype(np.int64) @ q.codes1.T.astype(np.int64))
        picked = np.array([3, 3, 49, 0])
        assert np.array_equal(q.dots(rows[picked], 1), rows[picked].astype(np.int64) @ q.codes2.T.astype(np.int64))


@settings(max_examples=200, deadline=None)
@given(dims=st.integers(1, 40), seed=st.integers(0, 2 ** 32 - 1),
       scale=st.sampled_from([0.0, 1e-42, 1e-38, 1e-20, 1e-3, 1.0, 1e3, 1e20, 1e36]),
       kind=st.sampled_from(["gauss", "spike", "integers", "constant"]))
def test_query_quantization_bound_holds(dims: int, seed: int, scale: float, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        q = rng.standard_normal((3, dims))
    elif kind == "spike":
        q = rng.standard_normal((3, dims)) * 1e-6
        q[:, 0] = 1.0
    elif kind == "integers":
        q = rng.integers(-300, 301, (3, dims)).astype(np.float64)
    else:
        q = np.full((3, dims), -1.0)
    q64 = (q * scale).astype(np.float32).astype(np.float64)  # what a query is: float32 values
    kernel = kernels.QueryCodes(q64)
    for codes in (kernel.codes1, kernel.codes2):
        assert codes.dtype == np.int8 and (np.abs(codes.astype(int)) <= kernels.MAX_CODE).all()
    assert (kernel.step1 > 0).all() and (kernel.step2 > 0).all()
    for b, row in enumerate(q64):  # exact rational arithmetic: |q - step1 codes1| and |q - step1 codes1 - step2 codes2|
        one = [Fraction(float(a)) - int(c) * Fraction(float(kernel.step1[b])) for a, c in zip(row, kernel.codes1[b],
                                                                                             strict=True)]
        two = [r - int(c) * Fraction(float(kernel.step2[b])) for r, c in zip(one, kernel.codes2[b], strict=True)]
        assert sum(r * r for r in one) <= Fraction(float(kernel.resid1[b])) ** 2
        assert sum(r * r for r in two) <= Fraction(float(kernel.resid2[b])) ** 2
