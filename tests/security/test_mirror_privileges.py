"""Issue 12 item 1: the mirror runs a client's statement with exactly the client's privileges, only when the
client's own execution succeeded, never when it calls a volatile function, and stores SQLSTATEs, not texts.
Everything runs through a real proxy whose own role, mirror role and clients are all non-superusers."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DATABASE, MIRRORED_ROUTE

NEAREST = "SELECT id FROM docs {where} ORDER BY embedding <-> '[1,2,3]' LIMIT 3"
EXFILTRATE = ("WHERE pg_notify('leak', (SELECT string_agg(name || ':' || amount, ',') FROM salaries))::text = ''")


def counters(proxy) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.labels.get("route") == "public.docs"}


async def until(predicate, what: str, proxy, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {counters(proxy)}\n{proxy.log()}"
        await asyncio.sleep(0.1)


def test_mirror_runs_as_the_client(sec_db, sec_proxy) -> None:
    proxy = sec_proxy('mirror_user = "sec_mirror"', MIRRORED_ROUTE)

    async def main() -> None:
        listener = await asyncpg.connect(sec_db.dsn(database=DATABASE))
        heard: list[str] = []
        await listener.add_listener("leak", lambda *args: heard.append(args[3]))
        app = await asyncpg.connect(proxy.dsn("sec_app", DATABASE))
        other = await asyncpg.connect(proxy.dsn("sec_other", DATABASE))
        outsider = await asyncpg.connect(proxy.dsn("sec_outsider", DATABASE))
        try:
            # the exfiltration: the client's own execution is refused, so nothing is mirrored either
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.fetch(NEAREST.format(where=EXFILTRATE))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # superuser-only function
                await app.fetch(NEAREST.format(where="WHERE pg_read_file('pg_hba.conf') IS NOT NULL"))
            # a volatile call the client may make: it runs once, the client's, and is never mirrored
            assert len(await app.fetch(NEAREST.format(where="WHERE pg_notify('leak', 'client')::text = ''"))) == 3
            # a role without rights on docs gets its own error; the mirror does not try on its behalf
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await outsider.fetch(NEAREST.format(where=""))
            # ordinary queries (a stable function too) are mirrored on both targets as their own role
            for client in (app, other):
                for n in range(3):
                    await client.fetch(NEAREST.format(where=f"WHERE lower(content) LIKE 'doc%' AND id > {n}"))
            await until(lambda: counters(proxy).get("pgcutover_mirror_samples_total") == 6, "6 mirrored samples", proxy)
            await until(lambda: counters(proxy).get("pgcutover_mirror_dropped_total") == 4, "4 refusals", proxy)
            await asyncio.sleep(0.5)  # a notification from a mirrored copy would arrive by now
            assert heard == ["client"]
        finally:
            for conn in (app, other, outsider):
                await conn.close()

        try:
            async def stored() -> list[asyncpg.Record]:
                return await listener.fetch("SELECT * FROM pgcutover.mirror_samples ORDER BY id")
            rows: list[asyncpg.Record] = []
            deadline = time.monotonic() + 30
            while len(rows) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                rows = await stored() if await listener.fetchval(
                    "SELECT to_regclass('pgcutover.mirror_samples') IS NOT NULL") else []
            assert len(rows) == 6
            # sec_app reads both tables: both targets answered. sec_other may not read the shadow: its mirrored
            # shadow statement was refused, which only happens if it ran as sec_other, not as the proxy
            ok = [r for r in rows if r["shadow_ok"]]
            refused = [r for r in rows if not r["shadow_ok"]]
            assert len(ok) == 3 and all(r["primary_ok"] and r["recall"] == 1.0 for r in ok)
            assert len(refused) == 3 and {r["shadow_sqlstate"] for r in refused} == {"42501"}
            assert all(r["primary_ok"] for r in refused)
            assert {r["shadow_error"] for r in refused} == {"InsufficientPrivilegeError"}  # a class, no text
            dump = repr([dict(r) for r in rows]) + proxy.log()
            for secret in ("alice", "123456", "permission denied", "pg_hba"):
                assert secret not in dump
        finally:
            await listener.close()

    asyncio.run(main())


def test_no_mirror_role_means_no_mirroring(sec_db, sec_proxy) -> None:
    proxy = sec_proxy("", MIRRORED_ROUTE)
    deadline = time.monotonic() + 30  # the warning comes once the routes are loaded, after the listener is up
    while "mirror_user is not set" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "mirror_user is not set: nothing is mirrored" in proxy.log()

    async def main() -> None:
        app = await asyncpg.connect(proxy.dsn("sec_app", DATABASE))
        try:
            for _ in range(3):
                await app.fetch(NEAREST.format(where=""))
        finally:
            await app.close()
        await until(lambda: counters(proxy).get("pgcutover_mirror_dropped_total") == 3, "3 refusals", proxy)
        assert counters(proxy).get("pgcutover_mirror_samples_total") == 0

    asyncio.run(main())


def test_no_membership_means_no_mirroring(sec_db, sec_proxy) -> None:
    """The mirror role may only become roles it was made a member of: PostgreSQL refuses the SET ROLE."""
    proxy = sec_proxy('mirror_user = "sec_mirror"', MIRRORED_ROUTE)

    async def main() -> None:
        loner = await asyncpg.connect(proxy.dsn("sec_loner", DATABASE))
        try:
            for _ in range(3):
                assert len(await loner.fetch(NEAREST.format(where=""))) == 3
        finally:
            await loner.close()
        await until(lambda: counters(proxy).get("pgcutover_mirror_dropped_total") == 3, "3 refusals", proxy)
        assert counters(proxy).get("pgcutover_mirror_samples_total") == 0
        assert "mirror_user cannot SET ROLE to a session's user (42501)" in proxy.log()

    asyncio.run(main())
