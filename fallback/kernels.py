"""Exact int8 x int8 dot products with SIMD kernels (NumKong), for the int8 store's screening (fallback.screening).

Why a library. numpy has no fast int8 product: the int8 store's old path upcast every block of codes to float32 and
ran a float32 matrix product on it, which costs as much as scanning the float32 matrix (measured 1.45-1.5x the
float32 memory-bandwidth bound, the upcast's writes and reads eat the 4x fewer bytes). NumKong (the successor of
SimSIMD, by the same authors; wheels for CPython 3.9-3.13 on x86_64 and arm64 Linux, macOS and Windows, no runtime
dependency) dispatches at run time to AVX-512 VNNI / AVX2 / NEON / SVE int8 kernels that accumulate in int32. One
query against 203,727 x 1536 codes: ~25-40 ms against ~240 ms for the float32 matrix-vector product in the same
probe (this machine, AVX-512 VNNI, busy); 32 queries against a packed query matrix (`dots_pack`): ~300 ms against
~1400 ms for the float32 matrix product. SimSIMD's `cdist` was as fast for one query but has no packed product
(32 queries cost 32 single scans), usearch's exact mode and faiss' SQ8 quantize the query with their own
unbounded error.

Exactness. The products are integers: |sum| <= 127 * 127 * dims < 2^31 for pgvector's 16,000 dimensions, so the
int32 accumulation is exact and so is its conversion to float64 (checked against int64 numpy products for every
dims from 1 to 16,000 in tests/fallback/test_kernels.py, codes at +-127 included).

Without NumKong (not installed, or `PGCUTOVER_INT8_KERNEL=numpy`) `available()` is False and the screening keeps
its numpy path (float32 upcast per block, with its own rounding bound): same answers, slower.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:  # optional at import time: the numpy path still answers exactly without it
    import numkong as _nk
except ImportError:  # pragma: no cover - depends on the environment
    _nk = None

PACK_MIN = 4  # queries from which one packed matrix product beats one scan per query (measured: 1 query packed
# ~4x slower than `cdist`, 32 queries packed ~3.5x faster than 32 scans)
MAX_CODE = 127


def available() -> bool:
    return _nk is not None and os.environ.get("PGCUTOVER_INT8_KERNEL", "numkong") != "numpy"


class QueryCodes:
    """int8 codes of a batch of queries in two levels, q = step1 codes1 + step2 codes2 + resid, in the form the
    kernel wants (packed from PACK_MIN queries). Level 1 alone screens every row (its residual |q - step1 codes1|
    is about 1% of |q|, as large as a row's own quantization error); the rows that pass get level 2 too, which
    leaves a residual 127 times smaller: bounds as tight as float64 products of the codes, at int8 cost."""

    def __init__(self, q64: np.ndarray) -> None:
        self.codes1, self.step1, self.resid1 = quantize_queries(q64)
        # the first level's residual, itself quantized: computed in float64 like quantize_queries' own residual
        left = q64 - self.codes1.astype(np.float64) * self.step1[:, None]
        self.codes2, self.step2, resid2 = quantize_queries(left)
        # |q - step1 codes1 - step2 codes2| <= |left - step2 codes2| + |q - step1 codes1 - left|, the latter the
        # rounding of `left` (2^-52 (|q_i| + |step1 codes1_i|) per element)
        self.resid2 = resid2 + 1e-12 * (np.sqrt(np.einsum("ij,ij->i", q64, q64)) + self.step1 * np.sqrt(q64.shape[1]))
        self.levels = [self._pack(self.codes1), self._pack(self.codes2)]

    @staticmethod
    def _pack(codes: np.ndarray) -> tuple[np.ndarray, Any]:
        codes = np.ascontiguousarray(codes, dtype=np.int8)  # (G, dims)
        return codes, _nk.dots_pack(codes) if _nk is not None and len(codes) >= PACK_MIN else None

    def dots(self, rows: np.ndarray, level: int = 0) -> np.ndarray:
        """rows (n, dims) int8 -> exact products (n, G) with the level's codes, as float64."""
        assert _nk is not None
        codes, packed = self.levels[level]
        if not len(rows):
            return np.zeros((0, len(codes)))
        rows = np.ascontiguousarray(rows)
        if packed is not None:
            return np.asarray(_nk.dots_packed(rows, packed)).astype(np.float64)
        return np.asarray(_nk.cdist(codes, rows, metric="dot"), dtype=np.float64).T


    def dots_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """rows (n, dims) int8 -> exact level-1 products written to out (G, n) float64, without a temporary
        (one scan per query: the packed product would need its own output)."""
        assert _nk is not None
        _nk.cdist(self.levels[0][0], np.ascontiguousarray(rows), metric="dot", out=out)


def quantize_queries(q64: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 codes of float64 queries (G, dims): q = step * codes + resid.

    Returns (codes, step, resid_norm) with resid_norm >= |resid|_2: the residual is computed in float64 (each
    element off by at most 2^-52 (2 |q_i| + step)), so its norm is rounded up by 1e-12 (|q| + step sqrt(dims)).
    A zero query gets step 1, codes 0 and residual 0."""
    top = np.abs(q64).max(axis=1)
    step = np.where(top > 0, top / MAX_CODE, 1.0)
    codes = np.clip(np.rint(q64 / step[:, None]), -MAX_CODE, MAX_CODE)
    resid = q64 - codes * step[:, None]
    # a zero query's residual is exactly 0: no slack (1e-12 of its nominal step 1 would swamp the bounds of a
    # query whose level-1 codes are exact, e.g. |q| ~ 1e-21 with every element at +-max)
    slack = 1e-12 * (np.sqrt(np.einsum("ij,ij->i", q64, q64)) + np.where(top > 0, step, 0.0) * np.sqrt(q64.shape[1]))
    resid_norm = np.sqrt(np.einsum("ij,ij->i", resid, resid)) * (1 + 1e-12) + slack + 1e-300
    return codes.astype(np.int8), step, resid_norm
