"""status --json: every figure checked against counts computed independently in the test."""

from __future__ import annotations

import json

import pytest

from pgcutover.deploy.status import StatusOptions, status, to_table

from .conftest import Env, run

DIMS = 4


def _setup(env: Env) -> dict[str, object]:
    s = env.s
    env.sql(f"CREATE TABLE {s}.items (id int PRIMARY KEY, emb text, emb_vector vector({DIMS}))")
    env.sql(f"CREATE TABLE {s}.shadow (id int PRIMARY KEY, emb_vector vector({DIMS}))")
    env.sql(f"INSERT INTO {s}.items SELECT i, '[' || i || ',1,2,3]', NULL FROM generate_series(1, 280) i")
    env.sql(f"UPDATE {s}.items SET emb_vector = emb::vector WHERE id <= 100")  # migrated already
    env.sql(f"UPDATE {s}.items SET emb = '[1]' WHERE id > 270")  # bad legacy values
    env.sql(f"INSERT INTO {s}.items SELECT i, NULL, NULL FROM generate_series(281, 300) i")  # no vector at all
    return {"table": env.table("items"), "column": "emb", "vector_column": "emb_vector", "legacy_column": "emb",
            "dims": DIMS, "shadow_table": env.table("shadow"), "on_bad_vector": "skip", "split": 12.5}


def _truth(env: Env) -> dict[str, int]:
    s = env.s
    return {
        "total_rows": env.val(f"SELECT count(*) FROM {s}.items"),
        "migrated": env.val(f"SELECT count(*) FROM {s}.items WHERE emb_vector IS NOT NULL"),
        "legacy_only": env.val(f"SELECT count(*) FROM {s}.items WHERE emb_vector IS NULL AND emb IS NOT NULL"),
        "bad_rows": env.val(f"SELECT count(*) FROM {s}.items WHERE emb_vector IS NULL AND emb IS NOT NULL "
                            "AND vector_dims(emb::vector) <> 4"),
        "shadow_rows": env.val(f"SELECT count(*) FROM {s}.shadow"),
        "differing": env.val(
            f"SELECT count(*) FROM {s}.items i FULL JOIN {s}.shadow h USING (id) "
            "WHERE i.id IS NULL OR h.id IS NULL OR i.emb_vector::text IS DISTINCT FROM h.emb_vector::text"),
    }


def _status(env: Env, config, *args: str) -> dict:
    [route] = json.loads(env.cli("status", "--json", *args, config=config).stdout)["routes"]
    return route


def _check(report: dict, truth: dict[str, int], bad_known: bool = True) -> None:
    for key in ("total_rows", "migrated", "legacy_only"):
        assert report[key] == truth[key], key
    assert report["bad_rows"] == (truth["bad_rows"] if bad_known else 0)
    with_vector = truth["migrated"] + truth["legacy_only"]
    assert report["percent_migrated"] == pytest.approx(100 * truth["migrated"] / with_vector, abs=1e-3)
    assert report["shadow"]["rows"] == truth["shadow_rows"]
    assert report["shadow"]["differing_keys"] == truth["differing"]


def test_status_matches_independent_counts(env: Env) -> None:
    route = _setup(env)
    config = env.write_config(route)

    # before anything is installed: nothing known about bad rows, no checkpoint, no triggers, empty shadow
    report = _status(env, config)
    _check(report, _truth(env), bad_known=False)
    assert report["backfill"] is None and report["indexes"] == []
    assert report["triggers"] == {"dual_write": False, "shadow_sync": False, "notify": False, "disabled": []}
    assert (report["split"], report["split_source"]) == (12.5, "config")

    env.cli("install-triggers", config=config)
    env.cli("backfill", "--shadow", "--batch", "40", config=config)
    env.cli("index", config=config)
    report = _status(env, config)
    truth = _truth(env)
    assert truth["differing"] == 0 and truth["bad_rows"] == 10
    _check(report, truth)
    backfill = report["backfill"]
    assert backfill["state"] == "finished" and backfill["rows_done"] == 170 and backfill["rows_bad"] == 10
    assert backfill["rows_copied"] == 300 and backfill["shadow"] is True
    assert report["triggers"] == {"dual_write": True, "shadow_sync": True, "notify": True, "disabled": []}
    [index] = report["indexes"]
    assert index["type"] == "hnsw" and index["valid"] and index["size_bytes"] > 0

    # the shadow drifts behind the triggers' back: missing, changed and orphan rows, below, between and above
    s = env.s
    env.sql(f"DELETE FROM {s}.shadow WHERE id IN (5, 150, 299)")
    env.sql(f"UPDATE {s}.shadow SET emb_vector = '[9,9,9,9]' WHERE id IN (1, 77, 200, 280)")
    env.sql(f"INSERT INTO {s}.shadow VALUES (-1, NULL), (1000, '[1,1,1,1]'), (1001, NULL)")
    env.sql(f"ALTER TABLE {s}.items DISABLE TRIGGER pgcutover_notify_update")
    truth = _truth(env)
    assert truth["differing"] == 10
    for batch in ("7", "64", "5000"):
        _check(_status(env, config, "--diff-batch", batch), truth)
    assert _status(env, config)["triggers"]["disabled"] == ["pgcutover_notify_update"]
    assert _status(env, config, "--no-diff")["shadow"]["differing_keys"] is None

    # the human table carries the same figures
    table = env.cli("status", config=config).stdout
    assert "MIGRATED" in table and f"{truth['migrated']:,}" in table and "10 differ" in table


def test_split_comes_from_the_shared_routing_table(env: Env) -> None:
    route = _setup(env)
    config = env.config(route)
    routing = f"{env.schema}.routing"
    env.sql(f"CREATE TABLE {env.s}.routing (table_name text PRIMARY KEY, split float8, generation bigint)")
    options = StatusOptions(diff=False, routing_table=routing)
    [report] = run(status(config, options=options))
    assert (report["split"], report["split_source"]) == (12.5, "config")  # table there, route not in it
    env.sql(f"INSERT INTO {env.s}.routing VALUES ($1, 40, 3)", env.table("items"))
    [report] = run(status(config, options=options))
    assert (report["split"], report["split_source"]) == (40.0, routing)
    assert "40%" in to_table([report])
