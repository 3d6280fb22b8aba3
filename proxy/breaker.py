"""The circuit breaker: when the shadow misbehaves under real traffic, route that table back to the primary.

Per route, a sliding window (`breaker_window_s`) of the routed executions the sessions report through
`record()` (a deque append: nothing else happens on the client's path). A task evaluates the windows a few
times a second and trips when, with at least `breaker_min_samples` executions on the side(s) involved,

- the shadow's error rate exceeds `max_error_rate`, counting only the errors that are the shadow's fault, or
- the shadow's p95 latency exceeds `max_latency_ratio` times the primary's p95 over the same window, and by
  at least `breaker_latency_floor_ms`; so does the shadow's p95 lower bound over the primary's upper bound
  (90%: a p95 of a few dozen samples is about their largest, one scheduling hiccup). Only executions timed
  alone in their cycle count (a pipelined one also waits for its neighbours, a first execution on a target
  also prepares its statement), and only from the seconds in which both targets served (same load).

Whose fault an error is, strongest evidence first (`verdict()`):

1. the primary ran the same statement: a shadow failure outside a transaction is re-run on the primary by the
   failover (proxy/failover.py). If the primary fails the same way (same SQLSTATE), the error is the
   client's (`WHERE no_such_function(id)`); if the primary answers, it is the shadow's.
2. the SQLSTATE: data, integrity, syntax, privilege, transaction-state and concurrency errors are the
   client's whatever the target; lost connections, resources, internal errors and our own shadow timeout
   are the shadow's.
3. what may be either (an undefined table, column, function or type, e.g. inside a transaction, where there
   is no replay) is *unverified*: it counts only if it would trip the breaker and a probe of the shadow (does
   its table still have its column?) fails.

Tripping writes split = 0 through the shared routing table (`control.set_route`, so every replica follows
within a second, with an audit row in pgcutover.routing_history naming the breaker and the figures), logs,
and counts. The breaker only ever writes split 0: it never raises a split, and it does nothing to a route
whose split is already 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from pgcutover.core.config import ConfigError
from pgcutover.core.enums import Target
from pgcutover.core.sqlstate import (
    QUERY_CANCELED,
    UNDEFINED_COLUMN,
    UNDEFINED_FUNCTION,
    UNDEFINED_OBJECT,
    UNDEFINED_TABLE,
)

from . import control
from .evidence import percentile

if TYPE_CHECKING:
    from pgcutover.core.config import Route

    from .runtime import Runtime

log = logging.getLogger("pgcutover.breaker")

# SQLSTATE classes whose errors a client causes on any target: data (22), integrity (23), syntax and access
# (42, except an undefined table or function, which is what a broken or renamed shadow gives), feature not
# supported (0A), transaction state (25: e.g. a statement in an already aborted transaction), transaction
# rollback (40: serialization failures and deadlocks are about concurrency, not the shadow).
CLIENT_FAULT_CLASSES = frozenset({"22", "23", "42", "0A", "25", "40"})
SHADOW_FAULT_CODES = frozenset({UNDEFINED_TABLE, UNDEFINED_FUNCTION})
# what a broken shadow gives but a client's own mistake gives too: undefined table, function, column, object
AMBIGUOUS_CODES = frozenset({UNDEFINED_TABLE, UNDEFINED_FUNCTION, UNDEFINED_COLUMN, UNDEFINED_OBJECT})
MAX_WINDOW_ENTRIES = 50_000  # per route and target: bounds memory at any query rate (the window then shortens)
LATENCY_BUCKET_S = 1.0  # latencies are paired by the second they were recorded in
PROBE_TTL = 5.0  # seconds a probe of the shadow settles unverified errors for
SHADOW, CLIENT, UNVERIFIED = "shadow", "client", "unverified"  # verdicts on a failed shadow execution


def shadow_fault(sqlstate: str | None, *, timed_out: bool = False) -> bool:
    """Whether a failed execution on the shadow counts against the shadow.

    No SQLSTATE means the connection was lost or the server never answered. 57014 (query canceled) counts
    only when `shadow_timeout_ms` caused it (`timed_out`), not when the client cancelled.

    >>> [shadow_fault(code) for code in ("42P01", "42601", "22P02", "08006", "53300", "57P01", "XX000", None)]
    [True, False, False, True, True, True, True, True]
    >>> shadow_fault("57014"), shadow_fault("57014", timed_out=True)
    (False, True)
    """
    if sqlstate is None or sqlstate in SHADOW_FAULT_CODES:
        return True
    if sqlstate == QUERY_CANCELED:
        return timed_out
    return sqlstate[:2] not in CLIENT_FAULT_CLASSES


def p95_bounds(values: list[float], z: float = 1.2816) -> tuple[float, float]:
    """A distribution-free one-sided 90% lower and upper bound of the p95 of what `values` sample: the order
    statistics whose ranks lie z standard deviations of Binomial(n, 0.95) below and above n x 0.95.

    >>> p95_bounds([float(i) for i in range(1, 101)])
    (92.0, 99.0)
    >>> p95_bounds([1.0] * 24 + [50.0])  # one outlier in 25: not the p95's lower bound
    (1.0, 50.0)
    """
    ordered = sorted(values)
    n = len(ordered)
    spread = z * math.sqrt(n * 0.95 * 0.05)
    low = min(n, max(1, math.floor(n * 0.95 - spread)))
    high = min(n, math.ceil(n * 0.95 + spread) + 1)
    return ordered[low - 1], ordered[high - 1]


def verdict(sqlstate: str | None, *, timed_out: bool = False, primary: str | None = None) -> str:
    """Whose fault a failed shadow execution is: SHADOW, CLIENT or UNVERIFIED.

    `primary` is what the primary did with the same statement when the failover re-ran it: "" it answered, a
    SQLSTATE it failed with; None when it was not re-run.

    >>> verdict("42883", primary="42883"), verdict("42P01", primary=""), verdict("42883"), verdict("22P02")
    ('client', 'shadow', 'unverified', 'client')
    >>> verdict(None), verdict("53300"), verdict("57014"), verdict("57014", timed_out=True)
    ('shadow', 'shadow', 'client', 'shadow')
    >>> verdict("42P01", primary="XX000")  # the primary failed otherwise: the shadow's error stands on its own
    'unverified'
    """
    if primary == "":
        return SHADOW  # the primary answered what the shadow could not
    if primary is not None and primary == sqlstate:
        return CLIENT  # the primary raises it too: the statement's fault, not the shadow's
    if sqlstate in AMBIGUOUS_CODES:
        return UNVERIFIED
    return SHADOW if shadow_fault(sqlstate, timed_out=timed_out) else CLIENT


@dataclass(frozen=True, slots=True)
class Trip:
    route: str
    reason: str  # "error_rate" | "latency"
    detail: str
    at: float  # epoch seconds
    previous_split: float | None
    generation: int | None  # routing generation written; None when another replica had already rolled back


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One route's breaker as SHOW REPORT, status and metrics show it."""

    route: str
    state: str  # "closed" (watching), "idle" (split 0: nothing to protect), "tripped" (rolled back by us)
    window_s: float
    shadow_n: int
    shadow_errors: int  # counted against the shadow
    shadow_p95_ms: float | None
    primary_n: int
    primary_p95_ms: float | None
    trips: int
    last_trip: str | None
    last_trip_at: float | None
    client_errors: int = 0  # shadow errors in the window that were the client's: not counted
    unverified_errors: int = 0  # shadow errors in the window counted only if a probe finds the shadow broken
    probe: str | None = None  # the last probe of the shadow: "ok" or what is wrong with it


# (monotonic time, latency s, ok, sqlstate, primary's outcome of the same statement, timed alone): raw,
# classified at evaluation (off the client's path)
_Entry = tuple[float, float, bool, "str | None", "str | None", bool]


@dataclass(slots=True)
class _Window:
    shadow: deque[_Entry] = field(default_factory=lambda: deque(maxlen=MAX_WINDOW_ENTRIES))
    primary: deque[_Entry] = field(default_factory=lambda: deque(maxlen=MAX_WINDOW_ENTRIES))

    def prune(self, horizon: float) -> None:
        for entries in (self.shadow, self.primary):
            while entries and entries[0][0] < horizon:
                entries.popleft()

    def clear(self) -> None:
        self.shadow.clear()
        self.primary.clear()


@dataclass(frozen=True, slots=True)
class _Figures:
    shadow_n: int
    shadow_errors: int
    last_error: str | None
    shadow_latencies: list[float]
    primary_latencies: list[float]
    client_errors: int = 0
    unverified_errors: int = 0
    last_unverified: str | None = None


class Breaker:
    def __init__(self, runtime: Runtime, *, interval: float = 0.25) -> None:
        self.rt = runtime
        self.interval = interval
        self._windows: dict[str, _Window] = {}
        self._pending: dict[str, int] = {}  # route -> generation of our rollback, until it is in force here
        self.trips: Counter[tuple[str, str]] = Counter()  # (route, reason) -> trips by this replica
        self.last_trips: dict[str, Trip] = {}
        self._probes: dict[str, tuple[float, str | None]] = {}  # route -> (monotonic time, problem or None)
        self._noted: dict[str, float] = {}  # route -> when errors not counted were last logged
        self._conn: asyncpg.Connection | None = None

    @property
    def actor(self) -> str:
        return f"circuit breaker @ {socket.gethostname()}:{self.rt.config.proxy.listen.port}"

    # -- the client's path --------------------------------------------------------------------------------------
    def record(self, table: str, target: str, latency: float, ok: bool, sqlstate: str | None, *,
               primary: str | None = None, clean: bool = True) -> None:
        """One routed execution (target "primary" or "shadow"). A deque append; never raises, never waits.

        `primary`: for a failed shadow execution that the failover re-ran, what the primary did ("" answered,
        else its SQLSTATE). `clean`: its latency is its own (alone in its cycle, nothing prepared first).
        """
        window = self._windows.get(table)
        if window is None:
            window = self._windows[table] = _Window()
        entries = window.shadow if target == Target.SHADOW else window.primary if target == Target.PRIMARY else None
        if entries is not None:
            entries.append((time.monotonic(), latency, ok, sqlstate, primary, clean))

    # -- evaluation ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.step()
        finally:
            await self._drop_connection()

    async def step(self) -> list[Trip]:
        """One evaluation of every window, and the rollbacks it calls for. Never raises for the database."""
        tripped = []
        for route, reason, detail in self.evaluate():
            try:
                if reason == UNVERIFIED:  # errors that may be the client's would trip: is the shadow broken?
                    problem = await self._probe(route)
                    if problem is None:
                        self._note(route, f"{detail}; not counted: the shadow's table and column are there")
                        continue
                    reason, detail = "error_rate", f"{detail}; shadow probe: {problem}"
                trip = await self._trip(route, reason, detail)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ConfigError) as exc:
                # the window keeps its figures: the next evaluation tries again
                log.error("circuit breaker could not roll back %s (%s): %s", route.table, detail, exc)
                await self._drop_connection()
                continue
            if trip is not None:
                tripped.append(trip)
        return tripped

    def evaluate(self, now: float | None = None) -> list[tuple[Route, str, str]]:
        """(route, reason, detail) for each route whose shadow crossed a threshold. Pure bookkeeping, no I/O."""
        now = time.monotonic() if now is None else now
        decisions = []
        generation = self.rt.routing.generation
        for route in self.rt.routing.routes:
            window = self._window(route)
            if window is None:
                continue
            pending = self._pending.get(route.table)
            if pending is not None:
                if generation < pending and route.split > 0:
                    window.clear()  # executions from before our rollback reached this replica
                    continue
                del self._pending[route.table]
            if route.split <= 0:
                window.clear()
                continue
            window.prune(now - route.breaker_window_s)
            decision = self._judge(route, self._figures(route, window))
            if decision is not None:
                decisions.append((route, *decision))
        return decisions

    def _window(self, route: Route) -> _Window | None:
        return self._windows.get(route.table) or self._windows.get(route.relname)

    @staticmethod
    def _figures(route: Route, window: _Window) -> _Figures:
        timeout = route.shadow_timeout_ms / 1000 if route.shadow_timeout_ms > 0 else None
        errors = client = unverified = 0
        last_error = last_unverified = None
        shadow_timed: list[tuple[int, float]] = []
        for at, latency, ok, sqlstate, primary, clean in window.shadow:
            if ok:
                if clean:
                    shadow_timed.append((int(at / LATENCY_BUCKET_S), latency))
                continue
            timed_out = timeout is not None and latency >= 0.95 * timeout
            judged = verdict(sqlstate, timed_out=timed_out, primary=primary)
            if judged is SHADOW:
                errors += 1
                last_error = sqlstate or "connection lost"
            elif judged is CLIENT:
                client += 1
            else:
                unverified += 1
                last_unverified = sqlstate
        primary_timed = [(int(at / LATENCY_BUCKET_S), latency)
                         for at, latency, ok, _, _, clean in window.primary if ok and clean]
        # Latencies are compared over the same stretches of time only: seconds in which both targets served.
        # The machine's load changes from second to second; a split that flips between 0 and 100 would
        # otherwise compare one side's busy seconds with the other's quiet ones.
        both = {bucket for bucket, _ in shadow_timed} & {bucket for bucket, _ in primary_timed}
        latencies = [latency for bucket, latency in shadow_timed if bucket in both]
        primary_latencies = [latency for bucket, latency in primary_timed if bucket in both]
        return _Figures(len(window.shadow), errors, last_error, latencies, primary_latencies, client, unverified,
                        last_unverified)

    @staticmethod
    def _judge(route: Route, f: _Figures) -> tuple[str, str] | None:
        span = f"in the last {route.breaker_window_s:g}s"
        minimum = route.breaker_min_samples
        if f.shadow_n >= minimum and f.shadow_errors / f.shadow_n > route.max_error_rate:
            return "error_rate", (f"shadow error rate {f.shadow_errors / f.shadow_n:.1%} ({f.shadow_errors}/"
                                  f"{f.shadow_n} {span}, last {f.last_error}) > max_error_rate "
                                  f"{route.max_error_rate:.1%}" + _ignored(f))
        possible = f.shadow_errors + f.unverified_errors
        if f.shadow_n >= minimum and possible / f.shadow_n > route.max_error_rate:
            return UNVERIFIED, (f"shadow error rate {possible / f.shadow_n:.1%} ({possible}/{f.shadow_n} {span}, "
                                f"{f.unverified_errors} unverified, last {f.last_unverified}) > max_error_rate "
                                f"{route.max_error_rate:.1%}" + _ignored(f))
        if len(f.shadow_latencies) >= minimum and len(f.primary_latencies) >= minimum:
            shadow_p95 = percentile(f.shadow_latencies, 0.95)
            primary_p95 = percentile(f.primary_latencies, 0.95)
            assert shadow_p95 is not None and primary_p95 is not None
            # Both a ratio and an absolute margin: sub-millisecond queries differ by large ratios of noise. And
            # the p95s as far as the samples show them (90% bounds): with a few dozen samples a p95 is about the
            # largest one, so one scheduling hiccup on a busy machine must not pass for a slow shadow.
            shadow_low, _ = p95_bounds(f.shadow_latencies)
            _, primary_high = p95_bounds(f.primary_latencies)
            if (shadow_p95 > route.max_latency_ratio * primary_p95
                    and shadow_p95 - primary_p95 > route.breaker_latency_floor_ms / 1000
                    and shadow_low > route.max_latency_ratio * primary_high
                    and shadow_low - primary_high > route.breaker_latency_floor_ms / 1000):
                return "latency", (f"shadow p95 {shadow_p95 * 1000:.1f} ms > {route.max_latency_ratio:g} x primary "
                                   f"p95 {primary_p95 * 1000:.1f} ms (n={len(f.shadow_latencies)}/"
                                   f"{len(f.primary_latencies)} {span})")
        return None

    async def _probe(self, route: Route) -> str | None:
        """What is wrong with the shadow's table, or None when it has its column (our own catalog query with
        typed parameters: never client SQL). Cached for PROBE_TTL seconds."""
        now = time.monotonic()
        cached = self._probes.get(route.table)
        if cached is not None and now - cached[0] < PROBE_TTL:
            return cached[1]
        conn = await self._connection()
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 "
            "AND NOT attisdropped", route.shadow_table, route.pg_shadow_column)
        problem = None if found else f"{route.shadow_table}.{route.pg_shadow_column} does not exist"
        self._probes[route.table] = (now, problem)
        return problem

    def _note(self, route: Route, text: str) -> None:
        """Why the breaker did not trip although errors came in: logged at most once a minute per route."""
        now = time.monotonic()
        if now - self._noted.get(route.table, -60.0) >= 60.0:
            self._noted[route.table] = now
            log.info("circuit breaker for %s: %s", route.table, text)

    # -- tripping ------------------------------------------------------------------------------------------------
    async def _trip(self, route: Route, reason: str, detail: str) -> Trip | None:
        conn = await self._connection()
        window = self._window(route)
        async with conn.transaction():
            # One breaker write per rollback, whichever replicas trip at once: the lock orders them, and the
            # later ones then see split 0 and write nothing (no "split 0 -> 0" rows).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgcutover.breaker'), hashtext($1))",
                               route.table)
            current = await self._shared_split(conn, route)
            if (current[0] if current is not None else route.split) <= 0:
                # another replica (or an operator) already rolled back: nothing to write
                log.info("circuit breaker for %s: %s; split is already 0 (generation %s)", route.table, detail,
                         current[1] if current else "-")
                if current is not None:
                    self._pending[route.table] = current[1]
                if window is not None:
                    window.clear()
                return None
            text = f"circuit breaker: {detail}"
            change = await control.set_route(conn, self.rt.config, route.table, 0.0, actor=self.actor,
                                             reason=text)
        self._pending[route.table] = change.generation
        if window is not None:
            window.clear()
        self.trips[(route.table, reason)] += 1
        trip = Trip(route.table, reason, detail, time.time(), change.previous_split, change.generation)
        self.last_trips[route.table] = trip
        log.warning("circuit breaker tripped: %s split %s -> 0 (generation %d): %s", route.table,
                    f"{change.previous_split:g}" if change.previous_split is not None else "?", change.generation,
                    detail)
        return trip

    @staticmethod
    async def _shared_split(conn: asyncpg.Connection, route: Route) -> tuple[float, int] | None:
        if not await conn.fetchval("SELECT to_regclass('pgcutover.routing') IS NOT NULL"):
            return None
        row = await conn.fetchrow("SELECT split, generation FROM pgcutover.routing WHERE table_name = $1",
                                  route.table)
        return (row["split"], row["generation"]) if row is not None else None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await control.connect(self.rt.config)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    # -- what it shows ------------------------------------------------------------------------------------------
    def state_rows(self) -> list[BreakerState]:
        now = time.monotonic()
        rows = []
        for route in self.rt.routing.routes:
            window = self._window(route) or _Window()
            window.prune(now - route.breaker_window_s)
            f = self._figures(route, window)
            probe = self._probes.get(route.table)
            trip = self.last_trips.get(route.table)
            tripped = trip is not None and route.split <= 0
            state = "tripped" if tripped else "idle" if route.split <= 0 else "closed"
            shadow_p95 = percentile(f.shadow_latencies, 0.95)
            primary_p95 = percentile(f.primary_latencies, 0.95)
            rows.append(BreakerState(
                route=route.table, state=state, window_s=route.breaker_window_s, shadow_n=f.shadow_n,
                shadow_errors=f.shadow_errors,
                shadow_p95_ms=None if shadow_p95 is None else shadow_p95 * 1000,
                primary_n=len(f.primary_latencies),
                primary_p95_ms=None if primary_p95 is None else primary_p95 * 1000,
                trips=sum(n for (table, _), n in self.trips.items() if table == route.table),
                last_trip=f"{trip.reason}: {trip.detail}" if trip else None,
                last_trip_at=trip.at if trip else None,
                client_errors=f.client_errors, unverified_errors=f.unverified_errors,
                probe=None if probe is None else probe[1] or "ok",
            ))
        return rows


def _ignored(f: _Figures) -> str:
    return f"; {f.client_errors} more were the client's (not counted)" if f.client_errors else ""
