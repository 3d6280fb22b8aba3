"""The circuit breaker against the real shared routing table: it trips on shadow errors and on shadow latency,
writes split 0 with its reasons (pgcutover.routing and routing_history), ignores the client's own errors, and
never raises a split."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgcutover.proxy import control, metrics, report
from pgcutover.proxy.breaker import Breaker
from pgcutover.proxy.runtime import Runtime

from .conftest import DATABASE, attach, make_config, route_toml

TABLE = "public.ev_breaker"
IDLE = "public.ev_report"  # split 0 in the config


def config(evidence_db, **keys):
    routes = [route_toml("ev_breaker", "good.items", split=50, breaker_min_samples=20, breaker_window_s=30,
                         max_error_rate=0.05, max_latency_ratio=3.0, **keys),
              route_toml("ev_report", "good.items", split=0)]
    return make_config(evidence_db, routes, port=7123)


async def fresh(evidence_db, **keys) -> tuple[Runtime, Breaker, asyncpg.Connection]:
    """A runtime whose routing says split 50, and a shared table that agrees (no override rows)."""
    conn = await asyncpg.connect(evidence_db.dsn(database=DATABASE))
    await control.init_schema(conn)
    await conn.execute("DELETE FROM pgcutover.routing WHERE table_name = ANY($1::text[])", [TABLE, IDLE])
    rt = Runtime(config(evidence_db, **keys))
    breaker = Breaker(rt, interval=0.05)
    attach(rt, breaker=breaker)
    return rt, breaker, conn


def feed(breaker: Breaker, n: int, *, shadow_ok: bool = True, sqlstate: str | None = None,
         shadow_latency: float = 0.002, primary_latency: float = 0.002, table: str = TABLE,
         primary: str | None = None) -> None:
    """`primary`: what the failover's re-run on the primary did ("" answered); None: not re-run."""
    for _ in range(n):
        breaker.record(table, "shadow", shadow_latency, shadow_ok, sqlstate, primary=primary)
        breaker.record(table, "primary", primary_latency, True, None)


async def breaker_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT table_name, split, previous_split, changed_by, reason FROM "
                            "pgcutover.routing_history WHERE changed_by LIKE 'circuit breaker%' ORDER BY generation")


def test_shadow_errors_trip_to_split_zero_everywhere(evidence_db) -> None:
    async def main() -> None:
        rt, breaker, conn = await fresh(evidence_db)
        try:
            before = len(await breaker_rows(conn))
            feed(breaker, 25, shadow_ok=False, sqlstate="42P01", primary="")
            task = asyncio.get_running_loop().create_task(breaker.run())
            deadline = time.monotonic() + 10
            while await conn.fetchval("SELECT split FROM pgcutover.routing WHERE table_name = $1", TABLE) is None:
                assert time.monotonic() < deadline, "the breaker did not roll back"
                await asyncio.sleep(0.05)
            task.cancel()
            row = await conn.fetchrow("SELECT split, changed_by, reason FROM pgcutover.routing "
                                      "WHERE table_name = $1", TABLE)
            assert row["split"] == 0
            assert row["changed_by"].startswith("circuit breaker @ ") and row["changed_by"].endswith(":7123")
            assert "shadow error rate 100.0% (25/25 in the last 30s, last 42P01) > max_error_rate 5.0%" \
                in row["reason"]
            history = (await breaker_rows(conn))[before:]
            assert [(h["table_name"], h["split"], h["previous_split"]) for h in history] == [(TABLE, 0.0, 50.0)]
            assert breaker.trips == {(TABLE, "error_rate"): 1}

            # the follower applies it (every replica does within a second): status and metrics show why
            rt.apply_routing(rt.config, await control.load_overrides(conn))
            state = next(s for s in breaker.state_rows() if s.route == TABLE)
            assert state.state == "tripped" and state.trips == 1
            assert state.last_trip.startswith("error_rate: shadow error rate 100.0%")
            registry = CollectorRegistry()
            registry.register(metrics.Families(lambda: report.evidence_families(rt)))
            text = generate_latest(registry).decode()
            trips = {f.name: f for f in text_string_to_metric_families(text)}["pgcutover_breaker_trips"]
            assert [(s.labels, s.value) for s in trips.samples if s.name.endswith("_total")] == \
                [({"route": TABLE, "reason": "error_rate"}, 1.0)]

            # split 0 now: more errors change nothing, and nothing is ever written back up
            feed(breaker, 50, shadow_ok=False, sqlstate="08006")
            assert await breaker.step() == []
            assert len(await breaker_rows(conn)) == before + 1
        finally:
            await conn.close()

    asyncio.run(main())


def test_slow_shadow_trips_on_latency(evidence_db) -> None:
    async def main() -> None:
        _, breaker, conn = await fresh(evidence_db)
        try:
            feed(breaker, 25, shadow_latency=0.200, primary_latency=0.010)
            (trip,) = await breaker.step()
            assert trip.reason == "latency" and trip.previous_split == 50
            reason = await conn.fetchval("SELECT reason FROM pgcutover.routing WHERE table_name = $1", TABLE)
            assert reason == "circuit breaker: shadow p95 200.0 ms > 3 x primary p95 10.0 ms (n=25/25 in the last 30s)"
        finally:
            await conn.close()

    asyncio.run(main())


def test_what_does_not_trip(evidence_db) -> None:
    async def main() -> None:
        rt, breaker, conn = await fresh(evidence_db)
        try:
            # the client's own errors: bad input, syntax, a missing column it asked for, a cancel it sent
            for sqlstate in ("22P02", "42601", "42703", "23505", "57014", "0A000", "25P02", "40001"):
                feed(breaker, 5, shadow_ok=False, sqlstate=sqlstate)
            assert await breaker.step() == []  # 42703 may be the shadow's: a probe finds its table whole
            # too few executions to judge, on either side
            _, small, other = await fresh(evidence_db)
            await other.close()
            feed(small, 19, shadow_ok=False, sqlstate="42P01", primary="")
            assert small.evaluate() == []
            small.record(TABLE, "shadow", 0.5, True, None)
            for _ in range(30):
                small.record(TABLE, "shadow", 0.5, True, None)
            assert small.evaluate()[0][1] == "error_rate"  # 19/50 errors: now judged
            slow_alone = Breaker(rt)
            for _ in range(30):
                slow_alone.record(TABLE, "shadow", 0.5, True, None)
            slow_alone.record(TABLE, "primary", 0.001, True, None)
            assert slow_alone.evaluate() == []  # one primary execution is no baseline
            # errors older than the window are forgotten
            old = Breaker(rt)
            feed(old, 40, shadow_ok=False, sqlstate="08006")
            assert old.evaluate(now=time.monotonic() + 31) == []
            assert await conn.fetchval("SELECT count(*) FROM pgcutover.routing WHERE table_name = $1", TABLE) == 0
        finally:
            await conn.close()

    asyncio.run(main())


def test_shadow_timeouts_count_only_when_shadow_timeout_caused_them(evidence_db) -> None:
    async def main() -> None:
        _, breaker, conn = await fresh(evidence_db, shadow_timeout_ms=100)
        try:
            feed(breaker, 25, shadow_ok=False, sqlstate="57014", shadow_latency=0.020)  # cancelled by the client
            assert breaker.evaluate() == []
            feed(breaker, 25, shadow_ok=False, sqlstate="57014", shadow_latency=0.101)  # our timeout
            ((_, reason, detail),) = breaker.evaluate()
            assert reason == "error_rate" and "(25/50" in detail
        finally:
            await conn.close()

    asyncio.run(main())


def test_never_raises_a_split(evidence_db) -> None:
    async def main() -> None:
        rt, breaker, conn = await fresh(evidence_db)
        try:
            before = len(await breaker_rows(conn))
            # a route at split 0 has nothing to protect, however bad its shadow looks
            feed(breaker, 40, shadow_ok=False, sqlstate="42P01", table=IDLE, primary="")
            assert await breaker.step() == []
            # another replica rolled back first: this one writes nothing more
            await control.set_route(conn, rt.config, TABLE, 0.0, actor="another replica", reason="test")
            feed(breaker, 40, shadow_ok=False, sqlstate="42P01", primary="")
            assert await breaker.step() == []
            assert breaker.trips == {}
            # an operator raises the split again; the breaker only ever brings it down
            await control.set_route(conn, rt.config, TABLE, 30.0, actor="operator", reason="test")
            rt.apply_routing(rt.config, await control.load_overrides(conn))
            feed(breaker, 40, shadow_ok=False, sqlstate="42P01", primary="")
            (trip,) = await breaker.step()
            assert trip.previous_split == 30
            rows = (await breaker_rows(conn))[before:]
            assert [(r["table_name"], r["split"]) for r in rows] == [(TABLE, 0.0)]
            assert all(r["split"] == 0 for r in await breaker_rows(conn))
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize("target", ["fallback_merged", "passthrough"])
def test_record_ignores_other_targets(evidence_db, target: str) -> None:
    async def main() -> None:
        _, breaker, conn = await fresh(evidence_db)
        await conn.close()
        for _ in range(50):
            breaker.record(TABLE, target, 1.0, False, None)
        assert breaker.evaluate() == []

    asyncio.run(main())


def test_latency_counts_only_executions_timed_alone(evidence_db) -> None:
    async def main() -> None:
        _, breaker, conn = await fresh(evidence_db)
        await conn.close()
        for _ in range(30):  # pipelined or first-prepared shadow executions: their time is not theirs alone
            breaker.record(TABLE, "shadow", 0.300, True, None, clean=False)
            breaker.record(TABLE, "primary", 0.010, True, None)
        assert breaker.evaluate() == []
        feed(breaker, 25, shadow_latency=0.300, primary_latency=0.010)
        ((_, reason, detail),) = breaker.evaluate()
        assert reason == "latency" and "n=25/55" in detail

    asyncio.run(main())
