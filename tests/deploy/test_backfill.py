"""backfill: exact conversion, bad rows skipped and reported, resumable after SIGKILL, cooperative when doubled."""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pgcutover.deploy.backfill import BackfillOptions, Progress, backfill
from pgcutover.deploy.triggers import install

from .conftest import ROOT, Env, run, vector_text

DIMS = 16


def _legacy(fmt: str, row: np.ndarray) -> Any:
    if fmt == "json":
        return vector_text(row)
    if fmt == "bytea_f32":
        return row.astype("<f4").tobytes()
    if fmt == "bytea_f64":
        return row.astype("<f8").tobytes()
    return [float(x) for x in row]


LEGACY_TYPE = {"json": "text", "bytea_f32": "bytea", "bytea_f64": "bytea", "array": "real[]"}
BAD = {
    "json": ["[1, 2]", "nonsense"],
    "bytea_f32": [b"\x00\x00\x80", np.full(DIMS, np.nan, dtype="<f4").tobytes()],
    "bytea_f64": [np.zeros(3, dtype="<f8").tobytes(), np.full(DIMS, 1e300, dtype="<f8").tobytes()],
    "array": [[1.0, 2.0], [None] * DIMS],
}


def _route(env: Env, fmt: str = "json", **extra: object) -> dict[str, object]:
    return {"table": env.table("items"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
            "legacy_format": fmt, "dims": DIMS, **extra}


def _fill(env: Env, rows: int, fmt: str = "json", seed: int = 1) -> np.ndarray:
    """`rows` legacy-only rows with keys 1..rows (every 7th key skipped); returns the float32 truth by key."""
    env.sql(f"CREATE TABLE {env.s}.items (id int PRIMARY KEY, title text, emb {LEGACY_TYPE[fmt]}, "
            f"emb_vector vector({DIMS}))")
    matrix = np.random.default_rng(seed).standard_normal((rows + 1, DIMS)).astype(np.float32)

    async def go() -> None:
        conn = await env.connect()
        try:
            await conn.copy_records_to_table(
                "items", schema_name=env.schema, columns=["id", "title", "emb"],
                records=[(i, f"t{i}", _legacy(fmt, matrix[i])) for i in range(1, rows + 1) if i % 7],
            )
        finally:
            await conn.close()

    run(go())
    return matrix


def _assert_converted(env: Env, matrix: np.ndarray, skip: set[int] = frozenset()) -> None:
    rows = env.sql(f"SELECT id, emb_vector::text AS v FROM {env.s}.items ORDER BY id")
    for row in rows:
        if row["id"] in skip:
            assert row["v"] is None
        else:
            got = np.array(row["v"].strip("[]").split(","), dtype=np.float32)
            assert np.array_equal(got, matrix[row["id"]]), row["id"]


@pytest.mark.parametrize("fmt", list(LEGACY_TYPE))
def test_every_format_with_bad_rows(env: Env, fmt: str) -> None:
    matrix = _fill(env, 400, fmt)
    bad_keys = [7 * 9 + 1, 7 * 30 + 2]
    for key, value in zip(bad_keys, BAD[fmt], strict=True):
        env.sql(f"UPDATE {env.s}.items SET emb = $1 WHERE id = $2", value, key)
    config = env.config(_route(env, fmt))
    [result] = run(backfill(config, options=BackfillOptions(batch=37, workers=2, progress=False)))
    assert sorted(result.bad) == sorted(str(k) for k in bad_keys) and all(result.bad.values())
    assert result.rows_done == env.val(f"SELECT count(*) FROM {env.s}.items") - len(bad_keys)
    _assert_converted(env, matrix, set(bad_keys))
    recorded = env.sql("SELECT key FROM pgcutover.bad_rows WHERE table_name = $1", env.table("items"))
    assert sorted(r["key"] for r in recorded) == sorted(str(k) for k in bad_keys)
    # a second run has nothing left but the known bad rows
    [again] = run(backfill(config, options=BackfillOptions(batch=37, progress=False)))
    assert again.rows_done == 0 and again.passes == 1


def _checkpoint_is_honest(env: Env) -> None:
    """No slot claims a key whose row is still legacy-only (the checkpoint commits with its batch)."""
    slots = env.sql("SELECT lo, last_key FROM pgcutover.backfill_checkpoint WHERE table_name = $1",
                    env.table("items"))
    for slot in slots:
        if slot["last_key"] is None:
            continue
        left = env.val(
            f"SELECT count(*) FROM {env.s}.items WHERE emb_vector IS NULL AND emb IS NOT NULL "
            "AND ($1::text IS NULL OR id > $1::text::int) AND id <= $2::text::int", slot["lo"], slot["last_key"],
        )
        assert left == 0, dict(slot)


def _done(env: Env) -> int:
    return env.val("SELECT coalesce(sum(rows_done), 0) FROM pgcutover.backfill_checkpoint WHERE table_name = $1",
                   env.table("items")) or 0


def _spawn(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pgcutover.deploy.cli", "backfill", "--config", str(config), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sigkill_at_random_points_then_resume(env: Env) -> None:
    matrix = _fill(env, 3000)
    config = env.write_config(_route(env))
    env.cli("install-triggers", config=config)
    rng = random.Random(5)
    total = env.val(f"SELECT count(*) FROM {env.s}.items")
    for _ in range(3):
        # slow enough that a kill 50-600 rows in lands mid-run even when this machine is busy
        proc = _spawn(config, "--batch", "40", "--max-rate", "400", "--workers", "2")
        target = _done(env) + rng.randint(50, 600)
        deadline = time.monotonic() + 60
        while _done(env) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        _checkpoint_is_honest(env)
        assert _done(env) < total  # killed mid-run, not after the end
    proc = _spawn(config, "--batch", "40")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _assert_converted(env, matrix)
    state = env.sql("SELECT finished_at IS NOT NULL AS finished, rows_done FROM pgcutover.backfill_checkpoint "
                    "WHERE table_name = $1", env.table("items"))
    assert all(r["finished"] for r in state) and sum(r["rows_done"] for r in state) == total


def test_two_backfills_at_once_share_the_work(env: Env) -> None:
    matrix = _fill(env, 3000, seed=2)
    config = env.write_config(_route(env))
    procs = [_spawn(config, "--batch", "30", "--workers", "2") for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(err for _, err in outputs)
    _assert_converted(env, matrix)
    written = [int(re.search(r"([\d,]+) vectors written", out).group(1).replace(",", "")) for out, _ in outputs]
    assert sum(written) == env.val(f"SELECT count(*) FROM {env.s}.items")  # no row converted twice


def test_progress_is_plain_lines_without_a_terminal(env: Env) -> None:
    _fill(env, 200)
    result = env.cli("backfill", "--batch", "20", config=env.write_config(_route(env)))
    assert re.search(r"pass 1: [\d,]+/[\d,]+ rows .* rows/s ETA", result.stderr)
    assert "\r" not in result.stderr
    rows = env.val(f"SELECT count(*) FROM {env.s}.items")
    assert f"{rows} vectors written, 0 rows copied to the shadow, 0 bad rows skipped" in result.stdout


def test_rows_written_behind_the_cursor_get_another_pass(env: Env) -> None:
    _fill(env, 1000)
    config = env.config(_route(env))  # no triggers: a writer's legacy-only rows wait for the backfill

    async def go() -> Any:
        task = asyncio.create_task(backfill(config, options=BackfillOptions(batch=20, max_rate=2000, workers=1,
                                                                            progress=False)))
        conn = await env.connect()
        try:
            while not task.done():
                low = await conn.fetchval(
                    "SELECT coalesce(max(last_key::int), 0) FROM pgcutover.backfill_checkpoint WHERE table_name = $1",
                    env.table("items"))
                if low > 20:  # behind the cursor: a key it has passed
                    await conn.execute(f"INSERT INTO {env.s}.items (id, emb) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                       7 * (low // 7), "[" + ",".join(["1"] * DIMS) + "]")
                await asyncio.sleep(0.05)
            return await task
        finally:
            await conn.close()

    [result] = run(go())
    assert env.val(f"SELECT count(*) FROM {env.s}.items WHERE emb_vector IS NULL") == 0
    assert result.passes >= 2


def test_shadow_backfill_copies_rows_and_removes_orphans(env: Env) -> None:
    _fill(env, 500)
    env.sql(f"CREATE TABLE {env.s}.shadow (id int PRIMARY KEY, title text, emb_vector vector({DIMS}))")
    # stale copies, an orphan below the first key, orphans between and beyond the table's keys
    env.sql(f"INSERT INTO {env.s}.shadow (id, title) SELECT i, 'stale' FROM generate_series(-5, 700, 7) i")
    env.sql(f"UPDATE {env.s}.items SET emb_vector = emb::vector WHERE id % 3 = 0")  # some already migrated
    config = env.config(_route(env, shadow_table=env.table("shadow")))
    [result] = run(backfill(config, options=BackfillOptions(batch=25, shadow=True, workers=3, progress=False)))
    total = env.val(f"SELECT count(*) FROM {env.s}.items")
    assert result.rows_copied == total
    assert env.val(
        f"SELECT count(*) FROM {env.s}.items i FULL JOIN {env.s}.shadow s USING (id) "
        "WHERE (i.title, i.emb_vector::text) IS DISTINCT FROM (s.title, s.emb_vector::text)") == 0
    # with the sync triggers installed, and one of them disabled while rows change, --shadow converges too
    run(install(config))
    env.sql(f"ALTER TABLE {env.s}.items DISABLE TRIGGER pgcutover_shadow_update, "
            "DISABLE TRIGGER pgcutover_dual_write")
    env.sql(f"UPDATE {env.s}.items SET title = 'changed', emb_vector = NULL, "
            f"emb = '[' || array_to_string(array_fill(0.5, ARRAY[{DIMS}]), ',') || ']' WHERE id < 100")
    [again] = run(backfill(config, options=BackfillOptions(batch=25, shadow=True, progress=False)))
    assert again.rows_done == env.val(f"SELECT count(*) FROM {env.s}.items WHERE id < 100")
    assert env.val(
        f"SELECT count(*) FROM {env.s}.items i FULL JOIN {env.s}.shadow s USING (id) "
        "WHERE (i.title, i.emb_vector::text) IS DISTINCT FROM (s.title, s.emb_vector::text)") == 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress("public.items pass 1", 2000, stream)
    progress.update(500, 250.0, final=True)
    text = stream.getvalue()
    assert text.startswith("\r[#######.......................] public.items pass 1: 500/2,000 rows ( 25.0%)")
    assert "250 rows/s ETA 6s" in text and text.endswith("\n")
