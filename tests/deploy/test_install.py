"""install-triggers / uninstall-triggers: idempotent, one transaction per route, safe with any identifier."""

from __future__ import annotations

import asyncio
import re
import sys

import numpy as np
import pytest

from pgcutover.deploy.backfill import BackfillOptions, backfill
from pgcutover.deploy.db import DeployError, quote_ident
from pgcutover.deploy.triggers import ALL_TRIGGERS, install, uninstall

from .conftest import ROOT, Env, run, vector_text

DIMS = 4


def _route(env: Env, **extra: object) -> dict[str, object]:
    return {"table": env.table("items"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
            "dims": DIMS, **extra}


def _tables(env: Env, rows: int = 0) -> None:
    env.sql(f"CREATE TABLE {env.s}.items (id int PRIMARY KEY, title text, emb text, emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {env.s}.shadow (id int PRIMARY KEY, title text, emb_vector vector({DIMS}))")
    if rows:
        env.sql(f"INSERT INTO {env.s}.items (id, title, emb) "
                f"SELECT i, 't' || i, '[' || i || ', 1, 2, 3]' FROM generate_series(1, {rows}) AS i")


def _triggers(env: Env, table: str = "items") -> set[str]:
    rows = env.sql("SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = ANY($2::text[])",
                   f"{quote_ident(env.schema)}.{quote_ident(table)}", list(ALL_TRIGGERS))
    return {r["tgname"] for r in rows}


def _functions(env: Env) -> int:
    return env.val("SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgcutover'::regnamespace "
                   "AND proname LIKE 'items\\_%'")


def test_install_and_uninstall_twice(env: Env) -> None:
    _tables(env)
    config = env.config(_route(env, shadow_table=env.table("shadow")))
    before = _functions(env) if env.val("SELECT to_regnamespace('pgcutover') IS NOT NULL") else 0
    for _ in range(2):
        plans = run(install(config))
        assert set(plans[0].triggers) == set(ALL_TRIGGERS)
        assert _triggers(env) == set(ALL_TRIGGERS)
    env.sql(f"INSERT INTO {env.s}.items (id, emb) VALUES (1, '[1,2,3,4]')")
    assert env.val(f"SELECT emb_vector::text FROM {env.s}.shadow WHERE id = 1") == "[1,2,3,4]"
    results = [run(uninstall(config, env.table("items"))) for _ in range(2)]
    assert results == [[(env.table("items"), True)], [(env.table("items"), False)]]
    assert _triggers(env) == set()
    assert _functions(env) == before
    env.sql(f"INSERT INTO {env.s}.items (id, emb) VALUES (2, '[1,2,3,4]')")  # plain table again
    assert env.val(f"SELECT emb_vector FROM {env.s}.items WHERE id = 2") is None


def test_reinstall_follows_the_config(env: Env) -> None:
    _tables(env)
    run(install(env.config(_route(env, shadow_table=env.table("shadow")))))
    assert _triggers(env) == set(ALL_TRIGGERS)
    run(install(env.config(_route(env))))  # shadow_table removed from the route
    assert _triggers(env) == {t for t in ALL_TRIGGERS if "shadow" not in t}
    env.sql(f"INSERT INTO {env.s}.items (id, emb) VALUES (1, '[1,2,3,4]')")
    assert env.val(f"SELECT count(*) FROM {env.s}.shadow") == 0


def test_install_on_a_table_with_rows_then_backfill(env: Env) -> None:
    _tables(env, rows=500)
    config = env.config(_route(env, shadow_table=env.table("shadow")))
    run(install(config))
    # existing rows are untouched by install...
    assert env.val(f"SELECT count(*) FROM {env.s}.items WHERE emb_vector IS NULL") == 500
    # ...and filled by the backfill, which also copies them to the shadow
    run(backfill(config, options=BackfillOptions(batch=64, shadow=True, progress=False)))
    assert env.val(f"SELECT count(*) FROM {env.s}.items WHERE emb_vector IS DISTINCT FROM emb::vector") == 0
    assert env.val(
        f"SELECT count(*) FROM {env.s}.items i FULL JOIN {env.s}.shadow s USING (id) "
        "WHERE (i.title, i.emb_vector::text) IS DISTINCT FROM (s.title, s.emb_vector::text)"
    ) == 0


def test_uninstall_without_route_removes_what_the_config_forgot(env: Env) -> None:
    _tables(env)
    env.sql(f"CREATE TABLE {env.s}.other (id int PRIMARY KEY, emb text, emb_vector vector({DIMS}))")
    other = {"table": env.table("other"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
             "dims": DIMS}
    run(install(env.config(_route(env), other)))
    assert _triggers(env, "other")
    done = run(uninstall(env.config(_route(env))))  # `other` is no longer configured
    assert (env.table("other"), True) in done
    assert _triggers(env) == set() and _triggers(env, "other") == set()


def test_install_refuses_what_it_cannot_do(env: Env) -> None:
    _tables(env)
    env.sql(f"CREATE TABLE {env.s}.nokey (id int, emb text, emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {env.s}.shadow_nokey (id int, emb_vector vector({DIMS}))")
    cases = [
        ({**_route(env), "table": env.table("missing")}, "does not exist"),
        ({**_route(env), "table": env.table("nokey")}, "primary key or a unique index"),
        (_route(env, vector_column="nope"), "vector_column 'nope' does not exist"),
        (_route(env, legacy_format="bytea_f32"), "legacy_format = 'bytea_f32' needs"),
        (_route(env, dims=5), "dims = 5 but emb_vector is vector(4)"),
        (_route(env, shadow_table=env.table("shadow_nokey")), "shadow key 'id' needs"),
    ]
    for route, message in cases:
        with pytest.raises(DeployError, match=re.escape(message)):
            run(install(env.config(route)))
    assert _triggers(env) == set()


HOSTILE = {
    "table": 'Items "x"; DROP TABLE y; --',
    "key": "Key Col",
    "legacy": "Emb'; SELECT 1; --",
    "vector": 'Vec"Col',
    "shadow": "Shadow Table",
}


def test_hostile_identifiers_are_quoted_everywhere(env: Env) -> None:
    h = {k: quote_ident(v) for k, v in HOSTILE.items()}
    env.sql(f"CREATE TABLE {env.s}.{h['table']} ({h['key']} text PRIMARY KEY, {h['legacy']} text, "
            f"{h['vector']} vector({DIMS}), note text)")
    env.sql(f"CREATE TABLE {env.s}.{h['shadow']} ({h['key']} text PRIMARY KEY, {h['vector']} vector({DIMS}), "
            "note text)")
    env.sql(f"INSERT INTO {env.s}.{h['table']} VALUES ('a''b', '[1,2,3,4]', NULL, 'old')")
    route = {"table": env.table(HOSTILE["table"]), "column": HOSTILE["vector"], "key": HOSTILE["key"],
             "legacy_column": HOSTILE["legacy"], "dims": DIMS, "shadow_table": env.table(HOSTILE["shadow"]),
             "on_bad_vector": "skip"}
    config = env.write_config(route)
    env.cli("install-triggers", config=config)
    env.cli("install-triggers", config=config)
    vec = vector_text(np.array([0.5, 1, 2, 3], dtype=np.float32))
    env.sql(f"INSERT INTO {env.s}.{h['table']} VALUES ('x\"y', $1, NULL, 'n'), ('bad', '[1]', NULL, 'b')", vec)
    env.cli("backfill", "--shadow", "--quiet", config=config)
    rows = env.sql(f"SELECT {h['key']} AS k, {h['vector']}::text AS v, note FROM {env.s}.{h['shadow']} ORDER BY 1")
    assert [(r["k"], r["v"], r["note"]) for r in rows] == [
        ("a'b", "[1,2,3,4]", "old"), ("bad", None, "b"), ('x"y', "[0.5,1,2,3]", "n")]
    status = env.cli("status", "--json", config=config).stdout
    assert '"differing_keys": 0' in status and '"bad_rows": 1' in status
    assert "CREATE INDEX CONCURRENTLY" in env.cli("index", "--dry-run", config=config).stdout
    env.cli("uninstall-triggers", config=config)
    assert env.val("SELECT count(*) FROM pg_tables WHERE schemaname = $1", env.schema) == 2


def test_dry_run_changes_nothing(env: Env) -> None:
    _tables(env)
    config = env.write_config(_route(env, shadow_table=env.table("shadow")))
    out = env.cli("install-triggers", "--dry-run", config=config).stdout
    assert "CREATE TRIGGER pgcutover_dual_write" in out and "REFERENCING OLD TABLE" in out
    assert _triggers(env) == set()


def test_installs_at_once_and_beside_writers(env: Env) -> None:
    _tables(env, rows=50)
    config = env.write_config(_route(env, shadow_table=env.table("shadow")))

    async def go() -> None:
        async def writer(stop: asyncio.Event) -> int:
            conn = await env.connect()
            n = 0
            try:
                while not stop.is_set():
                    await conn.execute(f"UPDATE {env.s}.items SET title = $1 WHERE id = $2", f"w{n}", n % 50 + 1)
                    n += 1
            finally:
                await conn.close()
            return n

        stop = asyncio.Event()
        task = asyncio.create_task(writer(stop))
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pgcutover.deploy.cli", "install-triggers", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(3)]
        outputs = [await proc.communicate() for proc in procs]
        stop.set()
        assert await task > 0
        assert [proc.returncode for proc in procs] == [0, 0, 0], outputs

    run(go())
    assert _triggers(env) == set(ALL_TRIGGERS)
