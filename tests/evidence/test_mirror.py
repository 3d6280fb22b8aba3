"""The mirror end to end on real PostgreSQL: requests built as the session builds them (plans from the Router,
Bind values as wire bytes), comparisons on both targets, samples in pgcutover.mirror_samples, the verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgcutover.proxy import metrics, report
from pgcutover.proxy.mirror import Mirror, MirrorRequest
from pgcutover.proxy.runtime import Runtime
from pgcutover.proxy.vectors import Vector

from .conftest import APP_ROLE, DATABASE, attach, make_config, make_runtime, route_toml, vector_text, vectors

SIMILAR = "SELECT id, content FROM {table} ORDER BY embedding <-> $1 LIMIT $2"


def request(rt: Runtime, sql: str, params: Sequence[bytes | None], formats: Sequence[int] = (),
            oids: Sequence[int] = (), client_target: str = "primary") -> MirrorRequest:
    plan = rt.router.plan(sql)
    assert plan.query is not None or plan.route is None, plan.reason
    table = plan.route.table if plan.route is not None else rt.routing.routes[0].table
    return MirrorRequest(route=rt.routing.route(table), plan=plan, sql=sql, params=tuple(params),
                         param_formats=tuple(formats), param_oids=tuple(oids), client_target=client_target,
                         client_latency=0.002, client_ok=True, user=APP_ROLE, database=DATABASE)


def similarity_requests(rt: Runtime, table: str, count: int, seed: int) -> list[MirrorRequest]:
    """Binary vectors and a text LIMIT, as a driver using binary binds sends them; half served by the shadow."""
    sql = SIMILAR.format(table=table)
    return [request(rt, sql, [Vector(v).to_binary(), b"10"], formats=[1, 0],
                    client_target="shadow" if i % 2 else "primary")
            for i, v in enumerate(vectors(count, seed))]


async def mirrored(rt: Runtime, requests: Sequence[MirrorRequest], **options) -> Mirror:
    """Run a mirror over `requests` until every sample is stored."""
    mirror = Mirror(rt, **options)
    attach(rt, mirror=mirror)
    task = asyncio.get_running_loop().create_task(mirror.run())
    for item in requests:
        while not mirror.submit(item):  # the test wants every sample: wait instead of dropping more
            await asyncio.sleep(0.01)
    await mirror.drain()
    await mirror.close()
    await task
    return mirror


async def stored_report(pg, rt: Runtime, table: str) -> report.RouteReport:
    conn = await asyncpg.connect(pg.dsn(database=DATABASE))
    try:
        route = rt.routing.route(table)
        return (await report.summarize(conn, [route], since=None))[0]
    finally:
        await conn.close()


def test_bad_shadow_index_is_not_ready(evidence_db) -> None:
    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_bad", "bad.items", mirror=100)]))
        mirror = await mirrored(rt, similarity_requests(rt, "ev_bad", 40, seed=100), concurrency=2)
        assert mirror.samples["public.ev_bad"] == 40, mirror.dropped_reasons_text("public.ev_bad")
        assert mirror.dropped["public.ev_bad"] == 0
        result = await stored_report(evidence_db, rt, "public.ev_bad")
        s = result.summary
        assert s.samples == s.compared == 40
        assert s.recall is not None and s.recall.mean < 0.6 and s.recall.high < 0.9
        assert result.verdict.startswith("not ready: recall vs primary"), result.verdict
        assert "< min_recall 0.9" in result.verdict
        assert mirror.recent_recall("public.ev_bad") < 0.6
        assert s.shadow_errors == 0 and s.primary.p95 is not None and s.shadow.p95 is not None

    asyncio.run(main())


def test_faithful_shadow_is_ready_and_judged_against_exact(evidence_db) -> None:
    async def main() -> None:
        route = route_toml("ev_good", "good.items", mirror=100, mirror_exact=100, max_latency_ratio=10.0)
        rt = await make_runtime(make_config(evidence_db, [route]))
        mirror = await mirrored(rt, similarity_requests(rt, "ev_good", 40, seed=200))
        assert mirror.samples["public.ev_good"] == 40
        result = await stored_report(evidence_db, rt, "public.ev_good")
        s = result.summary
        assert result.verdict == "ready", result.verdict
        assert s.recall is not None and s.recall.mean >= 0.9
        assert s.recall_exact_shadow is not None and s.recall_exact_shadow.n == 40
        assert s.recall_exact_primary is not None and s.recall_exact_primary.mean >= 0.9
        assert s.rank_agreement is not None and s.rank_agreement > 0.8
        assert s.distance_mean_abs is not None and s.distance_mean_abs < 1e-6  # same vectors, same distances

    asyncio.run(main())


def test_slow_shadow_is_not_ready_on_latency(evidence_db) -> None:
    async def main() -> None:
        route = route_toml("ev_slow", "slow.items", mirror=100, max_latency_ratio=3.0)
        rt = await make_runtime(make_config(evidence_db, [route]))
        await mirrored(rt, similarity_requests(rt, "ev_slow", 30, seed=300))
        result = await stored_report(evidence_db, rt, "public.ev_slow")
        assert result.summary.recall is not None and result.summary.recall.mean == 1.0
        assert result.summary.latency_ratio is not None and result.summary.latency_ratio > 3.0
        assert result.verdict.startswith("not ready: p95 latency"), result.verdict

    asyncio.run(main())


def test_missing_shadow_counts_as_shadow_errors(evidence_db) -> None:
    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_gone", "gone.items", mirror=100)]))
        mirror = await mirrored(rt, similarity_requests(rt, "ev_gone", 30, seed=400))
        assert mirror.shadow_errors["public.ev_gone"] == 30
        result = await stored_report(evidence_db, rt, "public.ev_gone")
        assert result.summary.shadow_errors == 30 and result.summary.primary_errors == 0
        assert result.verdict.startswith("not ready: shadow error rate 100.00% (30/30)"), result.verdict
        conn = await asyncpg.connect(evidence_db.dsn(database=DATABASE))
        try:
            states = await conn.fetch("SELECT DISTINCT shadow_sqlstate FROM pgcutover.mirror_samples "
                                      "WHERE route = 'public.ev_gone'")
        finally:
            await conn.close()
        assert [r[0] for r in states] == ["42P01"]

    asyncio.run(main())


def test_saturation_drops_and_counts(evidence_db) -> None:
    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_good", "good.items", mirror=100)]))
        mirror = Mirror(rt, queue_size=3)  # not running: nothing leaves the queue
        attach(rt, mirror=mirror)
        accepted = [mirror.submit(r) for r in similarity_requests(rt, "ev_good", 10, seed=500)]
        assert accepted == [True] * 3 + [False] * 7
        assert mirror.dropped["public.ev_good"] == 7
        assert mirror.dropped_reasons_text("public.ev_good") == "saturated=7"
        await mirror.close()
        assert mirror.submit(similarity_requests(rt, "ev_good", 1, seed=501)[0]) is False
        assert mirror.dropped_reasons_text("public.ev_good") == "closed=1, saturated=7"
        # the metrics say the same
        registry = CollectorRegistry()
        registry.register(metrics.Families(lambda: report.evidence_families(rt)))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        dropped = families["pgcutover_mirror_dropped"]
        assert dropped.type == "counter"
        assert [(s.labels, s.value) for s in dropped.samples if s.name.endswith("_total")] == \
            [({"route": "public.ev_good"}, 8.0)]

    asyncio.run(main())


def test_writes_are_never_mirrored(evidence_db) -> None:
    """A write is not even a similarity plan; a similarity SELECT that calls a volatile function (which could
    write, notify or change settings) is not run at all: no row ever lands."""
    evidence_db.psql(
        "CREATE TABLE IF NOT EXISTS ev_write_log (at timestamptz DEFAULT now());"
        f"GRANT INSERT ON ev_write_log TO {APP_ROLE};"
        "CREATE OR REPLACE FUNCTION ev_log_write() RETURNS boolean VOLATILE LANGUAGE sql "
        "AS 'INSERT INTO ev_write_log DEFAULT VALUES RETURNING true';", database=DATABASE)

    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_writes", "good.items", mirror=100)]))
        vector = vector_text(vectors(1, seed=600)[0]).encode()
        writes = [
            request(rt, "INSERT INTO ev_writes (id, embedding) VALUES (9999, $1)", [vector]),
            request(rt, "UPDATE ev_writes SET content = 'x' WHERE embedding <-> $1 < 1", [vector]),
            request(rt, "WITH w AS (DELETE FROM ev_writes WHERE id = 1 RETURNING id) "
                        "SELECT id FROM ev_writes ORDER BY embedding <-> $1 LIMIT 5", [vector]),
            request(rt, "SELECT id FROM ev_writes ORDER BY embedding <-> $1 LIMIT 5 FOR UPDATE", [vector]),
        ]
        sneaky = request(rt, "SELECT id FROM ev_writes WHERE ev_log_write() ORDER BY embedding <-> $1 LIMIT 5",
                         [vector])
        assert sneaky.plan.query is not None  # the router sees a similarity query
        mirror = await mirrored(rt, [*writes, sneaky])
        assert mirror.dropped_reasons_text("public.ev_writes") == "not-read-only=4, volatile-function=1"
        result = await stored_report(evidence_db, rt, "public.ev_writes")
        assert result.summary.samples == 0
        conn = await asyncpg.connect(evidence_db.dsn(database=DATABASE))
        try:
            assert await conn.fetchval("SELECT count(*) FROM ev_write_log") == 0
            assert await conn.fetchval("SELECT count(*) FROM ev_writes WHERE id IN (1, 9999) "
                                       "OR content = 'x'") == 1  # row 1 is still there, untouched
        finally:
            await conn.close()

    asyncio.run(main())


def test_unsupported_parameters_are_dropped(evidence_db) -> None:
    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_good", "good.items", mirror=100)]))
        vector = vector_text(vectors(1, seed=700)[0]).encode()
        uuid_param = request(rt, "SELECT id FROM ev_good WHERE uid <> $2 ORDER BY embedding <-> $1 LIMIT 5",
                             [vector, b"00000000-0000-0000-0000-000000000000"])
        no_limit = request(rt, "SELECT id FROM ev_good ORDER BY embedding <-> $1", [vector])
        too_many = request(rt, SIMILAR.format(table="ev_good"), [vector, b"100000"])
        mirror = await mirrored(rt, [uuid_param, no_limit, too_many])
        assert mirror.samples["public.ev_good"] == 0
        assert mirror.dropped_reasons_text("public.ev_good") == \
            "unsupported-param=1, unsupported:limit-too-large=1, unsupported:no-limit=1"

    asyncio.run(main())


def test_simple_query_literal_and_text_vector(evidence_db) -> None:
    async def main() -> None:
        rt = await make_runtime(make_config(evidence_db, [route_toml("ev_good", "good.items", mirror=100)]))
        literal = vector_text(vectors(1, seed=800)[0])
        simple = request(rt, f"SELECT id FROM ev_good ORDER BY embedding <-> '{literal}' LIMIT 7", [])
        text_bind = request(rt, SIMILAR.format(table="ev_good"), [literal.encode(), b"7"], client_target="shadow")
        mirror = Mirror(rt)
        task = asyncio.get_running_loop().create_task(mirror.run())
        try:
            while mirror._pool is None:
                await asyncio.sleep(0.01)
            samples = [await mirror.process(simple), await mirror.process(text_bind)]
        finally:
            await mirror.close()
            await task
        for sample in samples:
            assert sample.primary_ok and sample.shadow_ok and sample.k == 7 and sample.recall == 1.0
        assert samples[1].client_target == "shadow"

    asyncio.run(main())


@pytest.mark.parametrize("since", ["1h", "all"])
def test_report_cli_and_show_report(evidence_db, tmp_path, since: str) -> None:
    """Samples from two replicas, summarised by `pgcutover report` (text and JSON) and by SHOW REPORT."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    def sample(i: int, replica: str) -> report.Sample:
        return report.Sample(
            route="public.ev_report", replica=replica, query_id="q", client_target="primary", client_ok=True,
            client_ms=1.0, primary_ok=True, shadow_ok=True, shadow_fault=False, primary_ms=1.0 + i % 5,
            shadow_ms=1.2 + i % 5, primary_sqlstate=None, shadow_sqlstate=None, shadow_error=None, k=10,
            recall=1.0 if i % 10 else 0.9, rank_agreement=1.0, distance_mean_abs=0.0, distance_max_abs=0.0)

    config = make_config(evidence_db, [route_toml("ev_report", "good.items", mirror=5)])

    async def main() -> list:
        conn = await asyncpg.connect(evidence_db.dsn(database=DATABASE))
        try:
            await report.ensure_schema(conn)
            await conn.execute("DELETE FROM pgcutover.mirror_samples WHERE route = 'public.ev_report'")
            await report.insert_samples(conn, [sample(i, "a:1") for i in range(20)])
            await report.insert_samples(conn, [sample(i, "b:2") for i in range(20, 40)])
        finally:
            await conn.close()
        rt = await make_runtime(config)
        mirror = Mirror(rt)
        attach(rt, mirror=mirror)
        task = asyncio.get_running_loop().create_task(mirror.run())
        try:
            while mirror._pool is None:
                await asyncio.sleep(0.01)
            await mirror.refresh_reports()
        finally:
            await mirror.close()
            await task
        columns, rows = report.show_report(rt)
        return [dict(zip([c for c, _ in columns], row, strict=True)) for row in rows]

    shown = asyncio.run(main())
    assert len(shown) == 1 and shown[0]["route"] == "public.ev_report"
    assert shown[0]["verdict"] == "ready" and shown[0]["samples"] == 40 and shown[0]["recall"] == 0.99
    assert shown[0]["mirror_percent"] == 5.0

    toml = tmp_path / "report.toml"
    toml.write_text(
        "[proxy]\nlisten = \"127.0.0.1:6999\"\nmetrics = \"\"\n"
        f"upstream = \"postgresql://postgres@127.0.0.1:{evidence_db.port}/{DATABASE}?sslmode=disable\"\n"
        "[[route]]\ntable = \"public.ev_report\"\ncolumn = \"embedding\"\nshadow_table = \"good.items\"\n"
        "min_samples = 30\nmin_recall = 0.95\n")

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", "report", "--config", str(toml), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = json.loads(cli("--json", "--since", since, "--route", "ev_report"))
    (route,) = data["routes"]
    assert route["verdict"] == "ready" and route["samples"] == 40
    assert route["recall_vs_primary"]["mean"] == pytest.approx(0.99)
    assert route["latency_ms"]["primary"]["p50"] == pytest.approx(3.0)
    assert route["latency_ms"]["p95_ratio"] == pytest.approx(5.2 / 5.0)
    text = cli("--since", since)
    assert "route public.ev_report" in text and "verdict          ready" in text
