"""Legacy formats: the SQL decoders are exact, and bad values of every format are refused or recorded.

Ground truth comes from numpy: the float32 the bytes encode (float64 rounded to float32 once, as pgvector
does), compared bit for bit.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np
import pytest

from pgcutover.deploy.triggers import install, install_schema

from .conftest import Env, run, vector_text

DIMS = 8

SPECIAL_F32 = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.17549435e-38, 3.4028235e38, -3.4028235e38,
                        1.0, -2.5, 0.1, 123456.789], dtype="<f4")


async def _decode(env: Env, function: str, data: bytes) -> list[float]:
    conn = await env.connect()
    try:
        await install_schema(conn)
        return await conn.fetchval(f"SELECT pgcutover.{function}($1)", data)
    finally:
        await conn.close()


def test_f32_decoder_is_bit_exact(env: Env) -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([SPECIAL_F32, rng.standard_normal(1536).astype("<f4"),
                             rng.integers(0, 2**32, 512, dtype=np.uint32).view("<f4")])
    values = values[np.isfinite(values)]
    decoded = np.array(run(_decode(env, "f32le_to_float8", values.tobytes())), dtype=np.float64)
    assert np.array_equal(decoded.astype("<f4").view("<u4"), values.view("<u4"))  # -0.0 and subnormals too


def test_f64_decoder_is_exact(env: Env) -> None:
    rng = np.random.default_rng(8)
    values = np.concatenate([np.array([0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308,
                                       0.1, -1 / 3], dtype="<f8"), rng.standard_normal(1000)])
    decoded = np.array(run(_decode(env, "f64le_to_float8", values.tobytes())), dtype=np.float64)
    assert np.array_equal(decoded.view("<u8"), values.view("<u8"))


# -- bad values of every format, through the dual-write trigger ------------------------------------------

def _f32(values: list[float]) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def _f64(values: list[float]) -> bytes:
    return np.array(values, dtype="<f8").tobytes()


GOOD = [0.5, -1.25, 3.0, 1e-45, -0.0, 7.0, 1e30, -2.0]
NAN32 = np.array([np.nan] + [1.0] * (DIMS - 1), dtype="<f4").tobytes()
INF32 = np.array([np.inf] + [1.0] * (DIMS - 1), dtype="<f4").tobytes()

CASES: dict[str, dict[str, Any]] = {
    "json": {
        "type": "text", "good": vector_text(np.array(GOOD, dtype=np.float32)),
        "bad": ["[1, 2, 3]", "not a vector", "[" + ", ".join(["NaN"] * DIMS) + "]", "[]",
                "[" + ", ".join(["1e39"] * DIMS) + "]"],
    },
    "json_jsonb": {
        "type": "jsonb", "format": "json", "good": vector_text(np.array(GOOD, dtype=np.float32)),
        "bad": ["[1, 2]", '{"a": 1}'],
    },
    "bytea_f32": {
        "type": "bytea", "good": _f32(GOOD),
        "bad": [_f32(GOOD[:5]), _f32(GOOD)[:-1], b"", NAN32, INF32],
    },
    "bytea_f64": {
        "type": "bytea", "good": _f64(GOOD),
        "bad": [_f64(GOOD[:3]), _f64(GOOD)[:-3], _f64([1e39] * DIMS), _f64([float("nan")] * DIMS)],
    },
    "array_real": {
        "type": "real[]", "format": "array", "good": GOOD,
        "bad": [GOOD[:4], [*GOOD[:-1], None], [float("nan")] * DIMS, [float("inf")] * DIMS],
    },
    "array_float8": {
        "type": "double precision[]", "format": "array", "good": GOOD,
        "bad": [[*GOOD, 1.0], [1e39] * DIMS],
    },
}


def _route(env: Env, name: str, fmt: str, mode: str) -> dict[str, Any]:
    return {"table": env.table(name), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
            "legacy_format": fmt, "dims": DIMS, "on_bad_vector": mode}


def _setup(env: Env, case: str, mode: str) -> tuple[dict[str, Any], Any]:
    spec = CASES[case]
    env.sql(f"CREATE TABLE {env.s}.t (id int PRIMARY KEY, emb {spec['type']}, emb_vector vector({DIMS}))")
    config = env.config(_route(env, "t", spec.get("format", case), mode))
    run(install(config))
    return spec, config


def _expected() -> str:
    return vector_text(np.array(GOOD, dtype=np.float32))


@pytest.mark.parametrize("case", list(CASES))
def test_error_mode_refuses_bad_vectors_naming_the_key(env: Env, case: str) -> None:
    spec, _ = _setup(env, case, "error")
    cast = "::jsonb" if spec["type"] == "jsonb" else ""

    async def go() -> None:
        conn = await env.connect()
        try:
            await conn.execute(f"INSERT INTO {env.s}.t (id, emb) VALUES (1, $1{cast})", spec["good"])
            got = await conn.fetchval(f"SELECT emb_vector::text FROM {env.s}.t WHERE id = 1")
            # jsonb stores -0 as 0: there the truth is what the server makes of the stored value
            truth = f"SELECT emb::text::vector::text FROM {env.s}.t WHERE id = 1" if cast else "SELECT $1::vector::text"
            assert got == await conn.fetchval(truth, *([] if cast else [_expected()]))
            for i, bad in enumerate(spec["bad"], start=100):
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.execute(f"INSERT INTO {env.s}.t (id, emb) VALUES ($1, $2{cast})", i, bad)
                message = str(info.value)
                assert "bad legacy vector" in message and f"for key {i}:" in message, message
                # an UPDATE of the legacy value is checked the same way
                with pytest.raises(asyncpg.PostgresError, match="for key 1:"):
                    await conn.execute(f"UPDATE {env.s}.t SET emb = $1{cast} WHERE id = 1", bad)
            assert await conn.fetchval(f"SELECT count(*) FROM {env.s}.t") == 1
        finally:
            await conn.close()

    run(go())


@pytest.mark.parametrize("case", list(CASES))
def test_skip_mode_stores_null_and_records_the_key(env: Env, case: str) -> None:
    spec, _ = _setup(env, case, "skip")
    cast = "::jsonb" if spec["type"] == "jsonb" else ""

    async def go() -> None:
        conn = await env.connect()
        try:
            await conn.execute(f"INSERT INTO {env.s}.t (id, emb) VALUES (1, $1{cast})", spec["good"])
            bad_ids = list(range(100, 100 + len(spec["bad"])))
            for i, bad in zip(bad_ids, spec["bad"], strict=True):
                await conn.execute(f"INSERT INTO {env.s}.t (id, emb) VALUES ($1, $2{cast})", i, bad)
            rows = await conn.fetch(f"SELECT id, emb_vector IS NULL AS missing FROM {env.s}.t ORDER BY id")
            assert {r["id"]: r["missing"] for r in rows} == {1: False, **dict.fromkeys(bad_ids, True)}
            recorded = await conn.fetch(
                "SELECT key, reason FROM pgcutover.bad_rows WHERE table_name = $1 ORDER BY key::int",
                env.table("t"),
            )
            assert [r["key"] for r in recorded] == [str(i) for i in bad_ids]
            assert all(r["reason"] for r in recorded)
            # a good value later clears the problem: the row gets its vector
            await conn.execute(f"UPDATE {env.s}.t SET emb = $1{cast} WHERE id = $2", spec["good"], bad_ids[0])
            assert await conn.fetchval(f"SELECT emb_vector IS NOT NULL FROM {env.s}.t WHERE id = $1", bad_ids[0])
        finally:
            await conn.close()

    run(go())
