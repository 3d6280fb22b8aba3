"""Issue 12 item 4: under row-level security, a tenant's merged query never shows other tenants' candidate keys
or the distance bound: they are bound as parameters in the simple protocol too, so neither current_query() nor
pg_stat_activity carries them. The answer is still exact over the tenant's own rows."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from pgcutover.proxy.vectors import Vector

DIMS = 4
ROUTE = """
[[route]]
table = "public.rls_docs"
column = "embedding"
key = "id"
vector_column = "embedding"
legacy_column = "legacy"
legacy_format = "json"
dims = 4
"""
OTHER = 970_000  # the other tenant's keys: a digit string that appears nowhere else


@pytest.fixture(scope="module")
def tenants(pg):
    rng = np.random.default_rng(4)
    mine = rng.standard_normal((300, DIMS)).astype(np.float32)
    theirs = rng.standard_normal((300, DIMS)).astype(np.float32) * 0.01  # all nearer the origin than mine
    rows = [(i, "rls_a", v) for i, v in enumerate(mine, start=1)]
    rows += [(OTHER + i, "rls_b", v) for i, v in enumerate(theirs, start=1)]
    values = ",".join(f"({k}, '{t}', '{json.dumps([float(x) for x in v])}')" for k, t, v in rows)
    pg.psql("DROP TABLE IF EXISTS rls_docs; DROP ROLE IF EXISTS rls_a; DROP ROLE IF EXISTS rls_b;"
            "CREATE ROLE rls_a LOGIN; CREATE ROLE rls_b LOGIN;"
            f"CREATE TABLE rls_docs (id bigint PRIMARY KEY, tenant text NOT NULL, legacy text, "
            f"embedding vector({DIMS}));"
            f"INSERT INTO rls_docs (id, tenant, legacy) VALUES {values};"
            "UPDATE rls_docs SET embedding = legacy::vector WHERE id % 3 = 0;"
            "ALTER TABLE rls_docs ENABLE ROW LEVEL SECURITY;"
            "CREATE POLICY own_rows ON rls_docs USING (tenant = current_user);"
            "GRANT SELECT ON rls_docs TO rls_a, rls_b;"
            "GRANT pg_read_all_stats TO rls_a;")
    return mine


@pytest.fixture(scope="module")
def proxy(start_proxy, tenants):
    return start_proxy(ROUTE)


@pytest.mark.parametrize("extended", [False, True])
def test_a_tenant_never_sees_other_tenants_keys(proxy, tenants, extended: bool) -> None:
    q = np.zeros(DIMS, dtype=np.float32)  # the other tenant's rows are the nearest ones in the store
    text = Vector(q).to_text()
    sql = ("SELECT id, current_query(), (SELECT string_agg(query, ' ') FROM pg_stat_activity "
           "WHERE pid = pg_backend_pid()) FROM rls_docs ORDER BY embedding <-> {v} LIMIT 5")
    with psycopg.connect(proxy.dsn(user="rls_a"), autocommit=True) as conn:
        if extended:
            rows = conn.execute(sql.format(v="%s::vector"), [text]).fetchall()
        else:
            rows = conn.execute(sql.format(v=f"'{text}'")).fetchall()
    distances = np.sqrt((tenants.astype(np.float64) ** 2).sum(axis=1))
    assert [r[0] for r in rows] == [int(i) + 1 for i in np.argsort(distances)[:5]]
    for _, current, activity in rows:
        for seen in (current, activity):
            assert str(OTHER)[:4] not in seen, seen  # no other tenant's key, as a literal or otherwise
            assert "ANY(ARRAY" in seen.replace(" ", "") and "$" in seen  # the merged query, with parameters
