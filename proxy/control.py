"""The shared routing table in the upstream database: one source of truth for every proxy replica.

Changes are written in one transaction (new generation, audit row, NOTIFY), so every proxy LISTENing on
`pgcutover_routing` applies them within a second; a periodic re-read covers a lost notification. This is
the proxy's own control connection (asyncpg), never a client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from pgcutover.core.config import STICKY_MODES, Config, ConfigError, Route
from pgcutover.core.connect import connect as core_connect
from pgcutover.core.routing import Override, canonical_table

log = logging.getLogger("pgcutover.control")

CHANNEL = "pgcutover_routing"

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgcutover;
CREATE SEQUENCE IF NOT EXISTS pgcutover.routing_generation;
CREATE TABLE IF NOT EXISTS pgcutover.routing (
    table_name  text PRIMARY KEY,
    split       double precision NOT NULL CHECK (split >= 0 AND split <= 100),
    sticky      text CHECK (sticky IN ('query', 'session', 'application_name')),
    generation  bigint NOT NULL,
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pgcutover.routing_history (
    generation      bigint PRIMARY KEY,
    table_name      text NOT NULL,
    split           double precision NOT NULL,
    sticky          text,
    previous_split  double precision,
    changed_by      text NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    reason          text NOT NULL DEFAULT ''
);
"""


def default_actor(via: str) -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} via {via}"


async def connect(config: Config) -> asyncpg.Connection:
    return await core_connect(config, "pgcutover-control")


async def init_schema(conn: asyncpg.Connection) -> None:
    # Advisory lock: two replicas or an init racing an install-triggers must not both create the tables.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgcutover.schema'))")
        await conn.execute(SCHEMA_SQL)


async def load_overrides(conn: asyncpg.Connection) -> list[Override]:
    """Rows of pgcutover.routing; none when the schema was never initialised (the TOML alone rules)."""
    exists = await conn.fetchval("SELECT to_regclass('pgcutover.routing') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT table_name, split, sticky, generation, changed_by, changed_at::text AS changed_at, reason "
        "FROM pgcutover.routing ORDER BY generation")
    return [Override(r["table_name"], r["split"], r["sticky"], r["generation"], r["changed_by"], r["changed_at"],
                     r["reason"]) for r in rows]


async def validate_change(conn: asyncpg.Connection, route: Route, split: float, sticky: str | None) -> None:
    """Refuse what cannot work: a split outside 0..100, an unknown mode, a shadow that is not there."""
    if not 0 <= split <= 100:
        raise ConfigError(f"split {split:g} for {route.table} must be between 0 and 100")
    if sticky is not None and sticky not in STICKY_MODES:
        raise ConfigError(f"sticky {sticky!r} must be one of {', '.join(STICKY_MODES)}")
    if split > 0:
        if not route.shadow_table:
            raise ConfigError(f"{route.table} has no shadow_table: only split 0 is possible")
        from pgcutover.deploy.db import (  # config names are exact: quoted as install-triggers does
            rls_gap,
            table_ident_text,
        )

        found = await conn.fetchval(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 "
            "AND NOT attisdropped", table_ident_text(route.shadow_table), route.pg_shadow_column)
        if not found:
            raise ConfigError(f"shadow {route.shadow_table}.{route.pg_shadow_column} does not exist upstream")

        gap = await rls_gap(conn, route.table, route.shadow_table)
        if gap:
            raise ConfigError(
                f"refusing split {split:g} for {route.table}: it has row-level security its shadow "
                f"{route.shadow_table} lacks ({gap}), so the shadow would serve rows the source hides; copy the "
                "policies to the shadow and ENABLE ROW LEVEL SECURITY on it first"
            )


@dataclass(frozen=True, slots=True)
class Change:
    table: str
    split: float
    sticky: str | None
    generation: int
    previous_split: float | None


async def set_route(conn: asyncpg.Connection, config: Config, table: str, split: float, *,
                    sticky: str | None = None, actor: str, reason: str = "") -> Change:
    """Validate, then write the change, its audit row and the notification in one transaction."""
    name = canonical_table(config.routes, table)
    route = config.route_for(name)
    assert route is not None
    await validate_change(conn, route, split, sticky)
    await init_schema(conn)
    async with conn.transaction():
        previous = await conn.fetchrow(
            "SELECT split, sticky FROM pgcutover.routing WHERE table_name = $1 FOR UPDATE", name)
        sticky = sticky or (previous["sticky"] if previous else None)
        generation = await conn.fetchval("SELECT nextval('pgcutover.routing_generation')")
        await conn.execute(
            "INSERT INTO pgcutover.routing (table_name, split, sticky, generation, changed_by, reason) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (table_name) DO UPDATE SET split = EXCLUDED.split, "
            "sticky = EXCLUDED.sticky, generation = EXCLUDED.generation, changed_by = EXCLUDED.changed_by, "
            "changed_at = now(), reason = EXCLUDED.reason", name, float(split), sticky, generation, actor, reason)
        previous_split = previous["split"] if previous else route.split
        await conn.execute(
            "INSERT INTO pgcutover.routing_history (generation, table_name, split, sticky, previous_split, "
            "changed_by, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            generation, name, float(split), sticky, previous_split, actor, reason)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(generation))
    return Change(name, float(split), sticky, generation, previous_split)


async def rollback(conn: asyncpg.Connection, config: Config, tables: list[str] | None, *, actor: str,
                   reason: str = "rollback") -> list[Change]:
    """Split to 0 for the named routes (all routes when None). Needs no shadow, so it cannot be refused."""
    names = [canonical_table(config.routes, t) for t in tables] if tables else [r.table for r in config.routes]
    return [await set_route(conn, config, name, 0.0, actor=actor, reason=reason) for name in names]


async def history(conn: asyncpg.Connection, config: Config, table: str) -> list[asyncpg.Record]:
    name = canonical_table(config.routes, table)
    if not await conn.fetchval("SELECT to_regclass('pgcutover.routing_history') IS NOT NULL"):
        return []
    return await conn.fetch(
        "SELECT generation, split, previous_split, sticky, changed_by, changed_at, reason "
        "FROM pgcutover.routing_history WHERE table_name = $1 ORDER BY generation", name)


RESERVED_ROLE = "pg_use_reserved_connections"


async def check_reserved_connections(conn: asyncpg.Connection) -> str | None:
    """Why the control role may be locked out by a client connection storm, or None when it cannot be.

    PostgreSQL 16+ keeps `reserved_connections` slots for members of pg_use_reserved_connections (superusers
    have superuser_reserved_connections). Without either, a storm that fills max_connections refuses the
    routing follower with 53300, and a rollback cannot reach this replica until it ends."""
    row = await conn.fetchrow(
        "SELECT current_user AS role, current_setting('server_version_num')::int AS version, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser")
    assert row is not None
    if row["superuser"]:
        return None
    if row["version"] < 160000:
        return (f"control role {row['role']!r} has no reserved connection slots (PostgreSQL < 16 has no "
                f"{RESERVED_ROLE}): a client connection storm can lock the routing follower out")
    member = await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", RESERVED_ROLE)
    reserved = int(await conn.fetchval("SELECT current_setting('reserved_connections')"))
    if member and reserved > 0:
        return None
    fix = []
    if not member:
        fix.append(f"GRANT {RESERVED_ROLE} TO {row['role']}")
    if reserved == 0:
        fix.append("ALTER SYSTEM SET reserved_connections = 3 (then restart)")
    return (f"control role {row['role']!r} cannot use reserved connection slots: a client connection storm "
            f"can lock the routing follower out; run {'; '.join(fix)}")


class Outage:
    """Logs a control connection's failure once per outage (not once per retry) and its recovery, and paces
    retries with a capped exponential backoff."""

    def __init__(self, what: str, first_delay: float = 0.25, max_delay: float = 5.0) -> None:
        self.what = what
        self.first_delay, self.max_delay = first_delay, max_delay
        self.delay = first_delay
        self.since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next attempt."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s unavailable: %s; retrying with backoff (logged again when it is back)", self.what,
                        _describe(exc))
        delay, self.delay = self.delay, min(self.delay * 2, self.max_delay)
        return delay

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("%s back after %.1f s (%d failed attempts)", self.what, time.monotonic() - self.since,
                        self.failures)
        self.since, self.failures, self.delay = None, 0, self.first_delay


def _describe(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' ({sqlstate})' if sqlstate else ''}: {exc}"


class RoutingFollower:
    """Keeps a proxy's routing equal to the shared table: LISTEN for changes, re-read on a timer, reconnect."""

    def __init__(self, get_config: Callable[[], Config], apply: Callable[[list[Override]], None],
                 poll_interval: float = 5.0,
                 on_connect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None) -> None:
        self._get_config = get_config
        self._apply = apply
        self._poll = poll_interval
        self._on_connect = on_connect  # e.g. writing the admin console's local-only changes
        self._wake = asyncio.Event()
        self.connected = False
        self.loaded = False  # routing read at least once (or the table is known to be absent)
        self.outage = Outage("routing control connection")
        self._checked_reserved = False

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def refresh_now(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            conn = None
            try:
                conn = await connect(self._get_config())
                conn.add_termination_listener(lambda _: self._wake.set())  # a killed backend: reconnect now
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected = True
                self.outage.recovered()
                if not self._checked_reserved:
                    self._checked_reserved = True
                    warning = await check_reserved_connections(conn)
                    if warning:
                        log.warning("%s", warning)
                if self._on_connect is not None:
                    await self._on_connect(conn)
                while True:
                    self._wake.clear()
                    self._apply(await load_overrides(conn))
                    self.loaded = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self.connected = False
                await asyncio.sleep(self.outage.failed(exc))
            finally:
                self.connected = False
                if conn is not None:
                    conn.terminate()
