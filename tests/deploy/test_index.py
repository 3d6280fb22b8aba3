"""index: the HNSW index each route needs, built concurrently, idempotent, rebuilt when left INVALID."""

from __future__ import annotations

import pytest

from pgcutover.deploy.db import DeployError, quote_ident
from pgcutover.deploy.index import IndexOptions, create_indexes

from .conftest import Env, run


def _table(env: Env, column_type: str, rows: int = 30, dims: int | None = None) -> None:
    dims = dims or int(column_type.partition("(")[2].rstrip(")") or 0)
    env.sql(f"CREATE TABLE {env.s}.items (id int PRIMARY KEY, emb_vector {column_type})")
    env.sql(f"INSERT INTO {env.s}.items SELECT i, (SELECT array_agg(random())::real[] FROM generate_series(1, {dims}) "
            f"WHERE i > 0)::vector FROM generate_series(1, {rows}) i")


def _route(env: Env, **extra: object) -> dict[str, object]:
    return {"table": env.table("items"), "column": "emb_vector", **extra}


def _indexdefs(env: Env) -> list[tuple[str, bool]]:
    rows = env.sql("SELECT pg_get_indexdef(indexrelid) AS d, indisvalid AS v FROM pg_index "
                   "WHERE indrelid = to_regclass($1) AND NOT indisprimary ORDER BY 1", f"{env.s}.items")
    return [(r["d"], r["v"]) for r in rows]


def test_dry_run_prints_the_ddl_for_each_shape(env: Env) -> None:
    _table(env, "vector(16)", rows=0)
    out = env.cli("index", "--dry-run", "--maintenance-work-mem", "256MB", "--parallel-workers", "1",
                  config=env.write_config(_route(env)))
    assert out.stdout.splitlines() == [
        "SET maintenance_work_mem = '256MB';",
        "SET max_parallel_maintenance_workers = '1';",
        f'CREATE INDEX CONCURRENTLY "items_emb_vector_hnsw_cosine" ON "{env.schema}"."items" USING hnsw '
        '("emb_vector" "public"."vector_cosine_ops");',
    ]
    [script] = run(create_indexes(env.config(_route(env, metric="ip")), dry_run=True,
                                  options=IndexOptions(m=24, ef_construction=100)))
    assert '"public"."vector_ip_ops") WITH (m = 24, ef_construction = 100);' in script
    [script] = run(create_indexes(env.config(_route(env)), dry_run=True, options=IndexOptions(metric="l2")))
    assert '"public"."vector_l2_ops"' in script
    assert _indexdefs(env) == []


def test_above_2000_dimensions_a_halfvec_expression_index(env: Env) -> None:
    _table(env, "vector(3072)")
    config = env.write_config(_route(env))
    out = env.cli("index", config=config).stdout
    assert '(("emb_vector")::"public".halfvec(3072)) "public"."halfvec_cosine_ops"' in out
    [(definition, valid)] = _indexdefs(env)
    # exactly the shape the rewrite engine matches
    assert valid and "USING hnsw (((emb_vector)::halfvec(3072)) halfvec_cosine_ops)" in definition
    assert "already exists and is valid" in env.cli("index", config=config).stdout
    assert len(_indexdefs(env)) == 1


def test_invalid_leftover_is_dropped_and_rebuilt(env: Env) -> None:
    _table(env, "vector(16)")
    config = env.write_config(_route(env))
    env.cli("index", config=config)
    # what a failed CREATE INDEX CONCURRENTLY leaves behind
    env.sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass($1)",
            f"{env.s}.items_emb_vector_hnsw_cosine")
    assert _indexdefs(env)[0][1] is False
    out = env.cli("index", config=config).stdout
    assert "dropping INVALID index items_emb_vector_hnsw_cosine" in out and "built index" in out
    [(definition, valid)] = _indexdefs(env)
    assert valid and "USING hnsw (emb_vector vector_cosine_ops)" in definition


def test_an_equivalent_index_under_another_name_counts(env: Env) -> None:
    _table(env, "vector(16)")
    env.sql(f"CREATE INDEX mine ON {env.s}.items USING hnsw (emb_vector vector_cosine_ops)")
    [message] = run(create_indexes(env.config(_route(env))))
    assert "index mine already exists" in message
    # a different metric is a different index
    [message] = run(create_indexes(env.config(_route(env, metric="l2"))))
    assert "built index items_emb_vector_hnsw_l2" in message


def test_undeclared_dimensions_and_limits(env: Env) -> None:
    _table(env, "vector", dims=8)
    [message] = run(create_indexes(env.config(_route(env, dims=8))))
    assert "built index" in message
    assert "USING hnsw (((emb_vector)::vector(8)) vector_cosine_ops)" in _indexdefs(env)[0][0]
    with pytest.raises(DeployError, match="over HNSW's limit"):
        run(create_indexes(env.config(_route(env, dims=4001)), dry_run=True))
    env.sql(f"CREATE INDEX items_emb_vector_hnsw_ip ON {env.s}.items USING btree (id)")
    with pytest.raises(DeployError, match="exists with a different definition"):
        run(create_indexes(env.config(_route(env, dims=8, metric="ip"))))


@pytest.mark.parametrize("column_type", ["vector(16)", "vector(2100)"])
def test_quoted_and_mixed_case_schema_table_and_column_names(env: Env, column_type: str) -> None:
    """Issue 12 item 8: names are exact, quoted wherever they reach SQL, and compared as values."""
    schema = f'Mixed "Case" {env.schema}'
    qs = quote_ident(schema)
    env.pg.psql(f"CREATE SCHEMA {qs}")
    try:
        dims = int(column_type.partition("(")[2].rstrip(")"))
        env.sql(f'CREATE TABLE {qs}."My Items" (id int PRIMARY KEY, "Emb ""Vec""" {column_type})')
        env.sql(f'INSERT INTO {qs}."My Items" SELECT i, (SELECT array_agg(random())::real[] '
                f"FROM generate_series(1, {dims}) WHERE i > 0)::vector FROM generate_series(1, 20) i")
        config = env.write_config({"table": f"{schema}.My Items", "column": 'Emb "Vec"'})
        script = env.cli("index", "--dry-run", config=config).stdout
        assert f'ON {qs}."My Items" USING hnsw' in script
        first = env.cli("index", config=config).stdout
        assert "built index" in first, first
        assert "already exists and is valid" in env.cli("index", config=config).stdout
        [(definition, valid)] = [(r["d"], r["v"]) for r in env.sql(
            "SELECT pg_get_indexdef(indexrelid) AS d, indisvalid AS v FROM pg_index "
            "WHERE indrelid = to_regclass($1) AND NOT indisprimary", f'{qs}."My Items"')]
        assert valid and "USING hnsw" in definition
        # an INVALID leftover in that schema is found, dropped and rebuilt
        env.sql("UPDATE pg_index SET indisvalid = false WHERE indrelid = to_regclass($1) AND NOT indisprimary",
                f'{qs}."My Items"')
        out = env.cli("index", config=config).stdout
        assert "dropping INVALID index" in out and "built index" in out
    finally:
        env.pg.psql(f"DROP SCHEMA {qs} CASCADE")
