"""Helpers for the fallback tests: legacy tables in the session's real PostgreSQL, and their ground truth.

Ground truth is what PostgreSQL itself would compute from the stored value: float32 values printed in shortest
round-trip form (JSON), or raw float32/float64 bytes and arrays (float64 rounded to float32 once, as pgvector does).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import numpy as np
import pytest

from pgcutover.core.config import Route
from pgcutover.fallback.formats import encode_json

T = TypeVar("T")
_names = itertools.count()

LEGACY_TYPES = {"json": "text", "bytea_f32": "bytea", "bytea_f64": "bytea", "array": "real[]", "array_f64": "float8[]"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until `predicate()` holds; a deadline, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


def encode(fmt: str, row: np.ndarray) -> Any:
    """The legacy value of a float32 (or float64 for *_f64) row."""
    if fmt == "json":
        return encode_json(row)
    if fmt == "bytea_f32":
        return np.asarray(row, dtype="<f4").tobytes()
    if fmt == "bytea_f64":
        return np.asarray(row, dtype="<f8").tobytes()
    return [float(x) for x in row]


@dataclass
class LegacyTable:
    """A table `id bigint, emb <legacy>, emb_vector vector(dims), category int` and what it should hold."""

    name: str
    fmt: str  # the route's legacy_format ("array" for both real[] and float8[])
    dims: int
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # legacy-only rows: key -> float32 vector
    bad: dict[int, str] = field(default_factory=dict)  # legacy-only rows that must be skipped: key -> reason
    category: dict[int, int] = field(default_factory=dict)

    def route(self, **extra: Any) -> Route:
        values: dict[str, Any] = {"table": self.name, "column": "emb_vector", "legacy_column": "emb",
                                  "legacy_format": self.fmt, "dims": self.dims}
        values.update(extra)
        return Route(**values)


async def create_table(dsn: str, kind: str, dims: int, rows: int, *, seed: int = 0, migrated: float = 0.005,
                       null_legacy: int = 3, key_type: str = "bigint") -> LegacyTable:
    """`rows` legacy rows (a `migrated` fraction gets its vector column set) of random float32 vectors."""
    fmt = "array" if kind.startswith("array") else kind
    table = LegacyTable(f"fb_{kind}_{next(_names)}_{int(time.time() * 1000) % 100000}", fmt, dims)
    rng = np.random.default_rng(seed)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE TABLE {table.name} (id {key_type} PRIMARY KEY, emb {LEGACY_TYPES[kind]},"
                           f" emb_vector vector({dims}), category int)")
        records = []
        wide = kind.endswith("f64")
        for key in range(rows):
            vec = rng.standard_normal(dims)
            vec = vec if wide else vec.astype(np.float32)
            cat = int(rng.integers(0, 100))
            is_migrated = key % max(1, round(1 / migrated)) == 0 if migrated else False
            records.append((key, encode(kind if kind != "array_f64" else "array", vec),
                            encode_json(vec.astype(np.float32)) if is_migrated else None, cat))
            if not is_migrated:
                table.truth[key] = vec.astype(np.float32)
                table.category[key] = cat
        for key in range(rows, rows + null_legacy):  # neither legacy nor migrated: not legacy-only
            records.append((key, None, None, 0))
        await conn.executemany(f"INSERT INTO {table.name} VALUES ($1, $2, $3::text::vector, $4)", records)
        await conn.execute(f"ANALYZE {table.name}")
    finally:
        await conn.close()
    return table


async def insert_raw(dsn: str, table: str, key: Any, value: Any, cast: str = "") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"INSERT INTO {table} (id, emb, category) VALUES ($1, $2{cast}, 0)", key, value)
    finally:
        await conn.close()


def factory(dsn: str) -> Callable[[], Awaitable[asyncpg.Connection]]:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)
    return connect


def f32_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.fixture(scope="session")
def dsn(pg) -> str:
    return pg.dsn()
