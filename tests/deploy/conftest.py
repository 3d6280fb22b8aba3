"""Fixtures for the deploy tests: a schema of its own per test in the session's real PostgreSQL, and config files.

Every test gets a fresh schema (so `pgcutover.bad_rows` and `pgcutover.backfill_checkpoint`, which are keyed by
`schema.table`, never mix tests), a TOML config pointing at the session server, and helpers to run SQL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import numpy as np
import pytest

from pgcutover.core.config import Config, load_config
from pgcutover.deploy.db import quote_ident
from pgcutover.proxy.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
_serial = itertools.count()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def vector_text(row: np.ndarray) -> str:
    """JSON text of a float32 row in shortest round-trip form (what pgvector prints and parses back exactly)."""
    return "[" + ", ".join(str(np.float32(x)) for x in row) + "]"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Env:
    pg: EmbeddedPostgres
    schema: str
    tmp: Path

    @property
    def dsn(self) -> str:
        return self.pg.dsn()

    @property
    def s(self) -> str:
        """The quoted schema, for SQL in tests."""
        return quote_ident(self.schema)

    def table(self, name: str) -> str:
        """`schema.name` as written in a config's table key."""
        return f"{self.schema}.{name}"

    def write_config(self, *routes: dict[str, Any]) -> Path:
        lines = ["[proxy]", f'upstream = "{self.dsn}?sslmode=disable"', 'metrics = ""', ""]
        for route in routes:
            lines.append("[[route]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in route.items()]
            lines.append("")
        path = self.tmp / f"pgcutover-{next(_serial)}.toml"
        path.write_text("\n".join(lines))
        return path

    def config(self, *routes: dict[str, Any]) -> Config:
        return load_config(self.write_config(*routes))

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await self.connect()
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return run(go())

    def val(self, query: str, *args: Any) -> Any:
        rows = self.sql(query, *args)
        return rows[0][0] if rows else None

    def cli(self, *args: str, config: Path, check: bool = True) -> subprocess.CompletedProcess:
        """`python -m pgcutover.deploy.cli ARGS --config FILE` as a real child process."""
        result = subprocess.run(
            [sys.executable, "-m", "pgcutover.deploy.cli", *args, "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pgcutover.deploy.cli {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def env(pg: EmbeddedPostgres, tmp_path: Path, request: pytest.FixtureRequest) -> Env:
    name = re.sub(r"\W", "_", request.node.name.lower())[:40]
    schema = f"dt_{name}_{next(_serial)}"
    pg.psql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE; CREATE SCHEMA {quote_ident(schema)}")
    return Env(pg, schema, tmp_path)
