"""Schema pgcutover is closed to PUBLIC (issue 12 item 2), tested with non-superuser roles.

Roles: `app` has only its privileges on the source table (what an application has), `reader` was named with
`install-triggers --grant-to` (a role that queries through the proxy), `outsider` has nothing. The installer is
the session's superuser, as in the demo.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import asyncpg
import numpy as np
import psycopg
import pytest

from pgcutover.deploy.db import function_base, quote_ident
from pgcutover.deploy.status import StatusOptions, status, to_json, to_table
from pgcutover.deploy.triggers import install

from .conftest import ROOT, Env, run, toml_value

DIMS = 3


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


class Roles:
    """Login roles of one test (roles are cluster-wide: their names carry the test's schema)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.names = {kind: f"{env.schema}_{kind}"[-63:] for kind in ("app", "reader", "outsider")}
        for name in self.names.values():
            env.sql(f"DROP ROLE IF EXISTS {quote_ident(name)}")
            env.sql(f"CREATE ROLE {quote_ident(name)} LOGIN NOSUPERUSER")

    def __getitem__(self, kind: str) -> str:
        return self.names[kind]

    async def connect(self, kind: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.env.pg.dsn(user=self.names[kind]))

    def attempt(self, kind: str, *statements: str) -> asyncpg.PostgresError | None:
        """Run statements as the role; the first error, or None when all succeeded."""

        async def go() -> asyncpg.PostgresError | None:
            conn = await self.connect(kind)
            try:
                for statement in statements:
                    await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                return exc
            finally:
                await conn.close()
            return None

        return run(go())


@pytest.fixture
def setup(env: Env) -> tuple[Env, Roles, object]:
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, title text, emb bytea, emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, title text, emb_vector vector({DIMS}))")
    env.sql(f"INSERT INTO {s}.items (id, title, emb) VALUES (1, 'one', $1), (2, 'two', $2)",
            f32(1, 2, 3), f32(4, 5, 6))
    roles = Roles(env)
    env.sql(f"GRANT USAGE ON SCHEMA {s} TO {quote_ident(roles['app'])}, {quote_ident(roles['outsider'])}")
    env.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.items TO {quote_ident(roles['app'])}")
    config = env.config({"table": env.table("items"), "column": "emb", "vector_column": "emb_vector",
                         "legacy_column": "emb", "legacy_format": "bytea_f32", "dims": DIMS,
                         "on_bad_vector": "skip", "shadow_table": env.table("shadow")})
    for _ in range(2):  # idempotent, and grants survive a second run
        run(install(config, grant_to=(roles["reader"],)))
    return env, roles, config


def _functions(env: Env, like: str) -> list[str]:
    return [r[0] for r in env.sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'pgcutover'::regnamespace "
        "AND p.proname LIKE $1 ORDER BY 1", like)]


def test_nothing_in_the_schema_is_open_to_public(setup) -> None:
    env, roles, _ = setup
    outsider = roles["outsider"]
    assert not env.val("SELECT has_schema_privilege($1, 'pgcutover', 'USAGE')", outsider)
    functions = _functions(env, "%")
    assert "pgcutover.record_bad_row(text,text,text)" in functions and len(functions) > 10
    callable_ = [f for f in functions if env.val("SELECT has_function_privilege($1, $2, 'EXECUTE')", outsider, f)]
    assert callable_ == []
    tables = [r[0] for r in env.sql(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'pgcutover'::regnamespace "
        "AND c.relkind IN ('r', 'S')")]
    assert "pgcutover.bad_rows" in tables
    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
        for table in tables:
            if table.endswith("_seq") or "generation" in table:
                continue
            assert not env.val("SELECT has_table_privilege($1, $2, $3)", outsider, table, privilege), (table,
                                                                                                      privilege)
    # the role named with --grant-to: the conversion the fallback's queries call, and nothing else
    reader = roles["reader"]
    granted = [f for f in functions if env.val("SELECT has_function_privilege($1, $2, 'EXECUTE')", reader, f)]
    assert granted == ["pgcutover.f32le_to_float8(bytea)", "pgcutover.f64le_to_float8(bytea)",
                       "pgcutover.to_vector(anyelement,text,integer)", "pgcutover.try_vector(anyelement,text,integer)"]

    async def convert() -> str:
        conn = await roles.connect("reader")
        try:
            return await conn.fetchval("SELECT pgcutover.try_vector($1::bytea, 'bytea_f32', 3)::text", f32(1, 2, 3))
        finally:
            await conn.close()

    assert run(convert()) == "[1,2,3]"


def test_shadow_sync_cannot_be_attached_to_a_table_of_ones_own(setup) -> None:
    env, roles, _ = setup
    base = function_base(env.schema, "items")
    shadow_fns = _functions(env, f"{base}\\_shadow\\_%")
    assert len(shadow_fns) == 4
    for fn in shadow_fns:
        name = fn.removesuffix("()")
        for kind in ("outsider", "reader", "app"):
            error = roles.attempt(
                kind, "CREATE TEMP TABLE mine (id int PRIMARY KEY, title text, emb bytea, emb_vector vector(3))",
                f"CREATE TRIGGER attack AFTER INSERT ON mine REFERENCING NEW TABLE AS pgcutover_new "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
            )
            assert isinstance(error, asyncpg.InsufficientPrivilegeError), (kind, fn, error)
    # Even a role allowed to execute it (here the installer) cannot make it write for another table.
    s = env.s
    env.sql(f"CREATE TABLE {s}.decoy (id int PRIMARY KEY, title text, emb bytea, emb_vector vector({DIMS}))")
    insert_fn = next(f for f in shadow_fns if f.endswith("_insert()"))
    [dual] = _functions(env, f"{base}\\_dual\\_write")
    try:
        env.sql(f"CREATE TRIGGER attack AFTER INSERT ON {s}.decoy REFERENCING NEW TABLE AS pgcutover_new "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {insert_fn}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="belongs to"):
            env.sql(f"INSERT INTO {s}.decoy (id, title) VALUES (99, 'forged')")
        env.sql(f"DROP TRIGGER attack ON {s}.decoy")
        env.sql(f"CREATE TRIGGER attack BEFORE INSERT ON {s}.decoy FOR EACH ROW EXECUTE FUNCTION {dual}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="belongs to"):
            env.sql(f"INSERT INTO {s}.decoy (id, title) VALUES (99, 'forged')")
        assert env.val(f"SELECT count(*) FROM {s}.shadow WHERE id = 99") == 0
    finally:  # our functions must not stay attached elsewhere (uninstall-triggers would refuse to drop them)
        env.sql(f"DROP TABLE {s}.decoy")


def test_applications_cannot_call_the_helpers(setup) -> None:
    env, roles, _ = setup
    calls = [
        "SELECT pgcutover.record_bad_row('x.y', '1', 'forged')",
        "SELECT pgcutover.notify_keys('x.y', 'resync', '[1]'::jsonb)",
        "INSERT INTO pgcutover.bad_rows (table_name, key, reason) VALUES ('x.y', '1', 'forged')",
        "DELETE FROM pgcutover.backfill_checkpoint",
    ]
    for kind in ("outsider", "reader", "app"):
        for call in calls:
            error = roles.attempt(kind, call)
            assert isinstance(error, asyncpg.InsufficientPrivilegeError), (kind, call, error)
    assert env.val("SELECT count(*) FROM pgcutover.bad_rows WHERE reason = 'forged'") == 0


def test_an_application_role_writes_through_the_triggers_with_table_privileges_only(setup) -> None:
    env, roles, _ = setup
    t = f"{env.s}.items"

    async def writes() -> list[str]:
        conn = await roles.connect("app")
        notices: list[str] = []
        listener = await env.connect()
        await listener.add_listener("pgcutover_changes", lambda *args: notices.append(args[-1]))
        try:
            await conn.execute(f"INSERT INTO {t} (id, title, emb) VALUES (3, 'three', $1)", f32(7, 8, 9))
            await conn.execute(f"UPDATE {t} SET emb = $1 WHERE id = 1", f32(1, 1, 1))
            await conn.execute(f"INSERT INTO {t} (id, title, emb) VALUES (4, 'bad', $1)", b"\x00\x01")  # skip
            await conn.execute(f"UPDATE {t} SET title = 'renamed' WHERE id = 2")
            await conn.execute(f"DELETE FROM {t} WHERE id = 3")
        finally:
            await conn.close()
            await listener.close()
        return notices

    notices = run(writes())
    assert any('"kind" : "upsert"' in n or '"kind": "upsert"' in n for n in notices), notices
    rows = env.sql(f"SELECT id, title, emb_vector::text AS v FROM {t} ORDER BY id")
    assert [(r["id"], r["title"], r["v"]) for r in rows] == [
        (1, "one", "[1,1,1]"), (2, "renamed", None), (4, "bad", None)]
    shadow = env.sql(f"SELECT id, title, emb_vector::text AS v FROM {env.s}.shadow ORDER BY id")
    assert [(r["id"], r["title"], r["v"]) for r in shadow] == [
        (1, "one", "[1,1,1]"), (2, "renamed", "[4,5,6]"), (4, "bad", None)]
    assert env.val("SELECT count(*) FROM pgcutover.bad_rows WHERE table_name = $1 AND key = '4'",
                   env.table("items")) == 1


def test_status_survives_forged_content_in_the_schema(setup) -> None:
    env, _, config = setup
    table = env.table("items")
    env.sql(f"INSERT INTO {env.s}.items (id, title, emb) VALUES (5, 'bad', $1)", b"\x01")
    env.sql("INSERT INTO pgcutover.bad_rows (table_name, key, reason) VALUES "
            "($1, 'not a number', 'forged'), ($1, '99999999999999999999', 'forged'), "
            "($1, E'\\\\x00''; DROP TABLE x; --', 'forged')", table)
    env.sql("INSERT INTO pgcutover.backfill_checkpoint (table_name, slot, pass, lo, hi, last_key, rows_done, "
            "rows_total, rate) VALUES ($1, 7, 2147483647, 'zz', 'not a key', '''', -5, NULL, 'NaN')", table)
    [report] = run(status(config, options=StatusOptions()))
    assert report["bad_rows"] == 1
    assert report["backfill"]["pass"] == 2147483647
    assert report["shadow"]["differing_keys"] is not None
    to_table([report])
    assert json.loads(to_json([report]))["routes"][0]["backfill"]["rate"] is None  # NaN: valid JSON all the same


def _proxy_cli(env: Env, *args: str, config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_row_level_security_the_shadow_lacks_is_refused(env: Env) -> None:
    s = env.s
    env.sql(f"CREATE TABLE {s}.docs (id int PRIMARY KEY, tenant text, emb text, emb_vector vector({DIMS}))")
    env.sql(f'CREATE TABLE {s}."Docs Shadow" (id int PRIMARY KEY, tenant text, emb_vector vector({DIMS}))')
    env.sql(f"ALTER TABLE {s}.docs ENABLE ROW LEVEL SECURITY")
    env.sql(f"CREATE POLICY tenant_isolation ON {s}.docs USING (tenant = current_user)")
    route = {"table": env.table("docs"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
             "dims": DIMS, "shadow_table": env.table("Docs Shadow")}
    config = env.write_config(route)

    def refused(result: subprocess.CompletedProcess, *words: str) -> None:
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line, no traceback
        for word in words:
            assert word in lines[0], lines[0]

    refused(env.cli("install-triggers", config=config, check=False),
            "row-level security", "not enabled on the shadow", "tenant_isolation", "--force")
    assert env.val(f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{s}.docs'::regclass AND NOT tgisinternal") == 0
    refused(_proxy_cli(env, "route", "set", env.table("docs"), "--split", "10", config=config),
            "refusing split 10", "row-level security", "tenant_isolation")
    # RLS on, but the policy differs (another expression) and an extra permissive one lets everything through
    env.sql(f'ALTER TABLE {s}."Docs Shadow" ENABLE ROW LEVEL SECURITY')
    env.sql(f'CREATE POLICY tenant_isolation ON {s}."Docs Shadow" USING (tenant = session_user)')
    env.sql(f'CREATE POLICY open ON {s}."Docs Shadow" USING (true)')
    refused(env.cli("install-triggers", config=config, check=False), "missing or different", "tenant_isolation",
            "only on the shadow: open")
    env.cli("install-triggers", "--force", config=config)  # the operator's explicit choice
    env.sql(f'DROP POLICY open ON {s}."Docs Shadow"')
    env.sql(f'DROP POLICY tenant_isolation ON {s}."Docs Shadow"')
    env.sql(f'CREATE POLICY tenant_isolation ON {s}."Docs Shadow" USING (tenant = current_user)')
    env.cli("install-triggers", config=config)  # the same protection on both: accepted, and idempotent
    env.cli("install-triggers", config=config)
    result = _proxy_cli(env, "route", "set", env.table("docs"), "--split", "10", config=config)
    assert result.returncode == 0, result.stderr
    assert _proxy_cli(env, "route", "set", env.table("docs"), "--split", "0", config=config).returncode == 0
    env.sql(f"ALTER TABLE {s}.docs FORCE ROW LEVEL SECURITY")
    refused(_proxy_cli(env, "route", "set", env.table("docs"), "--split", "5", config=config),
            "does not FORCE row level security")
    assert _proxy_cli(env, "rollback", env.table("docs"), config=config).returncode == 0  # split 0: always


def test_the_table_check_accepts_partitions_of_the_table(env: Env) -> None:
    s = env.s
    env.sql(f"CREATE TABLE {s}.parts (id int PRIMARY KEY, emb text, emb_vector vector({DIMS})) "
            "PARTITION BY RANGE (id)")
    env.sql(f"CREATE TABLE {s}.parts_low PARTITION OF {s}.parts FOR VALUES FROM (0) TO (100)")
    env.sql(f"CREATE TABLE {s}.parts_high PARTITION OF {s}.parts FOR VALUES FROM (100) TO (200)")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, emb_vector vector({DIMS}))")
    run(install(env.config({"table": env.table("parts"), "column": "emb", "vector_column": "emb_vector",
                            "legacy_column": "emb", "dims": DIMS, "shadow_table": env.table("shadow")})))
    env.sql(f"INSERT INTO {s}.parts (id, emb) VALUES (1, '[1,2,3]'), (150, '[4,5,6]')")
    env.sql(f"UPDATE {s}.parts SET emb = NULL WHERE id = 150")
    rows = env.sql(f"SELECT p.id, p.emb_vector::text AS v, h.emb_vector::text AS hv FROM {s}.parts p "
                   f"JOIN {s}.shadow h USING (id) ORDER BY 1")
    assert [(r["id"], r["v"], r["hv"]) for r in rows] == [(1, "[1,2,3]", "[1,2,3]"), (150, None, None)]


def test_through_the_proxy_a_granted_role_gets_the_bytea_fallback_and_others_a_clean_error(
        env: Env, start_proxy) -> None:
    """--grant-to is what a role querying through the proxy needs: the merged query of a bytea route calls
    pgcutover.try_vector as the client. A role without the grant gets permission denied, and the proxy goes on."""
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, emb bytea, emb_vector vector({DIMS}))")
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((60, DIMS)).astype(np.float32)
    for i, v in enumerate(vectors, start=1):  # 1..20 migrated, the rest legacy-only (served by the fallback)
        env.sql(f"INSERT INTO {s}.items VALUES ($1, $2, CASE WHEN $1 <= 20 THEN $3::vector END)",
                i, f32(*v), "[" + ",".join(str(float(x)) for x in v) + "]")
    roles = Roles(env)
    for kind in ("reader", "app"):
        env.sql(f"GRANT USAGE ON SCHEMA {s} TO {quote_ident(roles[kind])}")
        env.sql(f"GRANT SELECT ON {s}.items TO {quote_ident(roles[kind])}")
    route = {"table": env.table("items"), "column": "emb", "key": "id", "vector_column": "emb_vector",
             "legacy_column": "emb", "legacy_format": "bytea_f32", "dims": DIMS}
    run(install(env.config(route), grant_to=(roles["reader"],)))
    proxy = start_proxy("[[route]]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in route.items()) + "\n")
    q = rng.standard_normal(DIMS).astype(np.float32)
    want = [int(i) + 1 for i in np.argsort(np.linalg.norm(vectors - q, axis=1), kind="stable")[:5]]
    sql = f"SELECT id FROM {s}.items ORDER BY emb <-> '[{','.join(str(float(x)) for x in q)}]' LIMIT 5"
    assert any(k > 20 for k in want)  # the answer needs legacy-only rows
    deadline, got = time.monotonic() + 30, None
    with psycopg.connect(proxy.dsn(user=roles["reader"]), autocommit=True) as conn:
        while time.monotonic() < deadline and got != want:  # the store loads in the background
            got = [r[0] for r in conn.execute(sql).fetchall()]
            time.sleep(0.1)
    assert got == want
    with psycopg.connect(proxy.dsn(user=roles["app"]), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # same session, still served
