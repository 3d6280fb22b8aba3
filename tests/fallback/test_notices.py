"""The notice payload contract shared with the deploy triggers, and the follower's defences against notices from
anyone (issue 12 item 5): range-checked keys, a bounded backlog that collapses into one resync, rate-limited
warnings, a configurable channel."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import numpy as np
import pytest

from pgcutover.core.config import ConfigError, parse_config
from pgcutover.fallback.notices import (
    CHANNEL,
    MAX_PAYLOAD_BYTES,
    ChangeNotice,
    NoticeError,
    WarningLimiter,
    build_notices,
    parse_notice,
    valid_channel,
)
from pgcutover.fallback.store import LegacyStore, _key_converter
from tests.fallback.conftest import create_table, run, wait_for
from tests.fallback.test_follow import agrees, db_state, following


def test_parse() -> None:
    notice = parse_notice('{"table": "public.items", "kind": "upsert", "keys": [1, "two", 3]}')
    assert notice == ChangeNotice("public.items", "upsert", (1, "two", 3))
    assert parse_notice(b'{"table": "s.t", "kind": "resync"}').is_resync
    assert parse_notice('{"table": "s.t", "kind": "migrated", "keys": [5]}').keys == (5,)


@pytest.mark.parametrize("payload", [
    "not json", "[1, 2]", '{"kind": "upsert", "keys": [1]}', '{"table": "s.t", "kind": "merge", "keys": [1]}',
    '{"table": "items", "kind": "upsert", "keys": [1]}', '{"table": "s.t", "kind": "upsert", "keys": 1}',
    '{"table": "s.t", "kind": "delete", "keys": [true]}', '{"table": "s.t", "kind": "delete", "keys": [[1]]}',
    '{"table": "s.t", "kind": "delete", "keys": []}', '{"table": "s.t", "kind": "upsert"}',
])
def test_parse_rejects(payload: str) -> None:
    with pytest.raises(NoticeError):
        parse_notice(payload)


def test_build_splits_under_the_limit() -> None:
    keys = [*range(10_000_000, 10_004_000), "a-string-key", 'quote"d']
    payloads = build_notices("public.items", "upsert", keys)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    parsed = [parse_notice(p) for p in payloads]
    assert [k for n in parsed for k in n.keys] == keys
    assert {n.kind for n in parsed} == {"upsert"}


def test_build_falls_back_to_resync() -> None:
    payloads = build_notices("public.items", "delete", range(5000), max_notices=2)
    assert [parse_notice(p) for p in payloads] == [ChangeNotice("public.items", "resync")]
    assert parse_notice(build_notices("s.t", "resync", [])[0]).is_resync
    with pytest.raises(NoticeError):
        build_notices("s.t", "upsert", ["x" * 9000])


@pytest.mark.parametrize("key", [2 ** 63, -(2 ** 63) - 1, 2 ** 64 - 1, 10 ** 30])
def test_keys_outside_bigint_are_refused(key: int) -> None:
    with pytest.raises(NoticeError):
        parse_notice(f'{{"table": "s.t", "kind": "upsert", "keys": [1, {key}]}}')


def test_bigint_extremes_are_keys() -> None:
    keys = parse_notice(f'{{"table": "s.t", "kind": "delete", "keys": [{2 ** 63 - 1}, {-(2 ** 63)}]}}').keys
    assert keys == (2 ** 63 - 1, -(2 ** 63))


@pytest.mark.parametrize(("type_name", "bad"), [("smallint", 2 ** 15), ("integer", -(2 ** 31) - 1),
                                               ("bigint", 2 ** 63)])
def test_key_converter_checks_the_column_range(type_name: str, bad: int) -> None:
    convert = _key_converter(type_name)
    assert convert(bad - 1 if bad > 0 else bad + 1) == (bad - 1 if bad > 0 else bad + 1)
    with pytest.raises(ValueError):
        convert(bad)


def test_warning_limiter() -> None:
    now = [0.0]
    log = logging.getLogger("pgcutover.test.limiter")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log.addHandler(Keep())
    try:
        limiter = WarningLimiter(log, interval=10.0, clock=lambda: now[0])
        assert limiter.warning("a", "bad %s", 1)
        assert not any(limiter.warning("a", "bad %s", n) for n in range(50))
        assert limiter.warning("b", "other")  # kinds are limited separately
        now[0] = 10.5
        assert limiter.warning("a", "bad %s", 2)
    finally:
        log.handlers.clear()
    assert records == ["bad 1", "other", "bad 2 (50 similar warnings suppressed in the last 10s)"]


def test_channel_names() -> None:
    assert valid_channel("pgcutover_changes") and valid_channel("Tenant 7 changes") and valid_channel("x" * 63)
    assert not any(valid_channel(c) for c in ("", "x" * 64, "a\x00b", None, 5))
    base = {"proxy": {"upstream": "postgresql://u@127.0.0.1:5432/db"}}
    assert parse_config(base).proxy.notify_channel == CHANNEL
    assert parse_config({"proxy": {**base["proxy"], "notify_channel": "app_changes"}}).proxy.notify_channel \
        == "app_changes"
    for bad in ("", "y" * 64, 7):
        with pytest.raises(ConfigError):
            parse_config({"proxy": {**base["proxy"], "notify_channel": bad}})
    with pytest.raises(ValueError):
        LegacyStore(_route(), channel="")


def _route():
    from pgcutover.core.config import Route
    return Route(table="public.t", column="v", legacy_column="l", dims=4)


def test_pending_notices_are_bounded() -> None:
    async def main() -> None:
        store = LegacyStore(_route(), max_pending=5, max_pending_bytes=10_000)
        payload = build_notices("public.t", "upsert", [1, 2, 3])[0]
        for _ in range(4):
            store._on_notify(None, 0, CHANNEL, payload)
        assert len(store._pending) == 4 and store._resync_since is None
        for _ in range(100):
            store._on_notify(None, 0, CHANNEL, payload)
        assert len(store._pending) <= 5 and store.notices_dropped >= 95
        assert store._resync_since is not None and store.refresh_lag() >= 0
        # bytes: one notice of 7,999 bytes fits, two do not
        big = LegacyStore(_route(), max_pending=1000, max_pending_bytes=10_000)
        fat = build_notices("public.t", "upsert", [f"{i:08d}" for i in range(700)])[0]
        assert len(fat) > 5000
        big._on_notify(None, 0, CHANNEL, fat)
        big._on_notify(None, 0, CHANNEL, fat)
        assert big._pending_bytes <= 10_000 and big.notices_dropped == 2 and big._resync_since is not None

    run(main())


def test_follower_survives_hostile_notices(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Keys beyond bigint and beyond the column's integer range, floods that overflow the backlog, garbage:
    the follower keeps running, reconciles, warns a few times (not once per notice) and applies later notices."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=4, rows=60, seed=31, key_type="integer")
        store = LegacyStore(table.route(), reconcile_interval=3600, max_pending=20, resync_interval=0.2)
        name = f"public.{table.name}"
        conn = await asyncpg.connect(dsn)
        try:
            async with following(dsn, store) as task:
                for payload in [f'{{"table": "{name}", "kind": "upsert", "keys": [{2 ** 63}]}}',
                                f'{{"table": "{name}", "kind": "upsert", "keys": [{2 ** 31}]}}',
                                f'{{"table": "{name}", "kind": "delete", "keys": [{2 ** 64 + 5}]}}'] * 20 \
                        + ["garbage"] * 30:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                # a flood straight into the backlog (the loop cannot drain it in between): one resync
                before = store.reconciles
                for _ in range(500):
                    store._on_notify(None, 0, CHANNEL, f'{{"table": "{name}", "kind": "upsert", "keys": [1]}}')
                assert len(store._pending) <= 20 and store.notices_dropped > 0
                await conn.execute(f"DELETE FROM {table.name} WHERE id < 10")  # no notice: the resync finds it
                good, bad = await db_state(conn, table)
                await wait_for(lambda: store.reconciles > before and agrees(store, good, bad))
                assert not task.done()
                # and ordinary notices still work afterwards
                await conn.execute(f"UPDATE {table.name} SET emb = '[1,2,3,4]' WHERE id = 20")
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   build_notices(name, "upsert", [20])[0])
                await wait_for(lambda: store.get(20) is not None
                               and np.array_equal(store.get(20), np.array([1, 2, 3, 4], np.float32)))
                assert not task.done()
        finally:
            await conn.close()

    with caplog.at_level(logging.WARNING, logger="pgcutover.fallback"):
        run(main())
    warnings = [r for r in caplog.records if "notice" in r.getMessage()]
    assert 0 < len(warnings) <= 10, [r.getMessage() for r in warnings]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_custom_channel(dsn: str) -> None:
    """A deployment on its own channel: notices there are applied, those on the default channel are not."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=4, rows=20, seed=32)
        store = LegacyStore(table.route(), reconcile_interval=3600, channel="Tenant 7 changes")
        name = f"public.{table.name}"
        conn = await asyncpg.connect(dsn)
        try:
            async with following(dsn, store):
                await conn.execute(f"UPDATE {table.name} SET emb = '[4,3,2,1]' WHERE id IN (3, 4)")
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, build_notices(name, "upsert", [3])[0])
                await conn.execute("SELECT pg_notify($1, $2)", "Tenant 7 changes",
                                   build_notices(name, "upsert", [4])[0])
                want = np.array([4, 3, 2, 1], np.float32)
                await wait_for(lambda: np.array_equal(store.get(4), want))
                await asyncio.sleep(0.3)
                assert not np.array_equal(store.get(3), want)  # the default channel is not ours here
        finally:
            await conn.close()

    run(main())
