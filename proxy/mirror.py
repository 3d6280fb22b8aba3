"""Mirrored comparisons: a share of the routed similarity queries also runs, off the client's path, on both
targets, and the two top-k answers are compared on keys.

The session rolls `mirror` percent for read-only similarity statements outside explicit transactions and calls
`Mirror.submit()`, which only enqueues (bounded; a full queue drops the request and counts it), so the
client's latency and result never depend on the mirror. Workers (bounded concurrency) take requests off the
queue and, on the proxy's own asyncpg pool:

1. build per-target statements that return the route key and the distance with the client's FROM, WHERE,
   ORDER BY, LIMIT and OFFSET (rewrite/mirror_sql.py);
2. decode the client's Bind values by the statement's parameter types (proxy/wire_params.py);
3. run primary and shadow one after the other in random order, each in a READ ONLY transaction (the shadow
   under `shadow_timeout_ms`), timing the execution alone; with `mirror_exact` percent, also run the
   primary's statement with index scans disabled: brute force, the truth both targets are judged against;
4. compare (proxy/evidence.py) and queue a sample; a flusher COPYs samples into `pgcutover.mirror_samples`
   in batches, and refreshes the report summary that SHOW REPORT shows.

Nothing that writes is ever mirrored: the plan must be a similarity SELECT, the statements built are checked
again, and they run in READ ONLY transactions, where PostgreSQL itself refuses any write.

The mirror runs a client's statement with exactly the client's privileges, never the proxy's (SECURITY.md):

- its connections authenticate as `[proxy] mirror_user`, a role with no privileges of its own that is a member
  (NOINHERIT, or WITH INHERIT FALSE) of the application roles; each mirrored transaction first does
  `SET LOCAL ROLE <the session's user>` (set_config('role', ...), so PostgreSQL checks the membership) and the
  client's search_path. Without `mirror_user` nothing is mirrored (a warning at start says so);
- only executions that succeeded for the client, from a session on the mirror's own database, are mirrored;
- a statement calling a VOLATILE function (pg_notify, set_config, nextval, random, ...), or one whose calls
  cannot be told, is not run at all: every named function is looked up in pg_proc (cached per name), and while
  any operator, cast, type I/O, index or aggregate support function in the database is VOLATILE, nothing is;
- samples and the log keep SQLSTATEs, never error texts (a message can quote the data it failed on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from pgcutover.core.enums import Target
from pgcutover.core.lru import ByteLRU
from pgcutover.rewrite.mirror_sql import (
    MAX_K,
    VOLATILE_ELSEWHERE_SQL,
    VOLATILE_NAMES_SQL,
    Unsupported,
    called_functions,
    is_read_only,
    keys_sql,
)

from . import report
from .evidence import compare
from .wire_params import UnsupportedParam, decode_params

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.plan import Plan

    from .runtime import Runtime

log = logging.getLogger("pgcutover.mirror")

RECENT = 200  # samples per route behind the recall gauge
MAX_PENDING = 10_000  # samples held while the database cannot take them (the oldest go first)
STATEMENT_CACHE = 512  # per-target statements kept, by plan
STATEMENT_CACHE_BYTES = 32 << 20  # and their estimated memory (rewrite.router.plan_bytes)
VOLATILITY_TTL = 60.0  # seconds a function name's volatility (and the database-wide check) is trusted
VOLATILITY_CACHE = 4096  # function names kept
MIRROR_PASSWORD_ENV = "PGCUTOVER_MIRROR_PASSWORD"
# pg_catalog-qualified: these run after the client's search_path is in force, which may put a schema of its own
# before pg_catalog
_EXACT_SETTINGS = ("SELECT pg_catalog.set_config('enable_indexscan', 'off', true), "
                   "pg_catalog.set_config('enable_bitmapscan', 'off', true), "
                   "pg_catalog.set_config('enable_indexonlyscan', 'off', true)")
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError, TimeoutError)


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    route: Route  # the live route
    plan: Plan  # the client's statement's plan (plan.query is not None)
    sql: str  # the client's original SQL text
    params: tuple[bytes | None, ...]  # Bind values exactly as on the wire (empty for a simple Query)
    param_formats: tuple[int, ...]  # Bind format codes (none: all text; one: applies to all)
    param_oids: tuple[int, ...]  # from the client's Parse (0 = unspecified)
    client_target: str  # "primary" | "shadow": where the client's query ran
    client_latency: float  # seconds, send to ReadyForQuery, as the proxy measured it
    client_ok: bool
    user: str = ""  # the session's user: the role the statement runs as (SET ROLE)
    database: str = ""  # the session's database: mirrored only when it is the mirror's own
    search_path: str = ""  # the session's search_path as the server reported it ("" = the role's default)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    latency: float | None  # seconds of the execution alone
    rows: list[tuple[object, float | None]]  # (key, distance), nearest first
    sqlstate: str | None = None
    error: str | None = None  # an error class name (from the SQLSTATE or the exception type), never a message


class _Dropped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Mirror:
    def __init__(self, runtime: Runtime, *, concurrency: int = 2, queue_size: int = 64,
                 flush_interval: float = 1.0, refresh_interval: float = 15.0,
                 statement_timeout_ms: int = 30_000) -> None:
        self.rt = runtime
        self.concurrency = max(1, concurrency)
        self.queue: asyncio.Queue[MirrorRequest] = asyncio.Queue(maxsize=max(1, queue_size))
        self.flush_interval = flush_interval
        self.refresh_interval = refresh_interval
        self.statement_timeout_ms = statement_timeout_ms  # a cap for the mirror's own statements on any target
        self.replica = f"{socket.gethostname()}:{runtime.config.proxy.listen.port}"
        # Counters by route table (this replica's): exported as metrics, shown by SHOW REPORT.
        self.submitted: Counter[str] = Counter()
        self.samples: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.dropped_reasons: Counter[tuple[str, str]] = Counter()
        self.shadow_errors: Counter[str] = Counter()
        self._recall: dict[str, deque[float]] = {}
        self.reports: dict[str, report.RouteReport] = {}  # last summary read back (all replicas' samples)
        self.reports_at: float | None = None
        self._pending: list[report.Sample] = []
        # per-target statements by plan: bounded in bytes, since each entry keeps its plan alive
        self._statements: ByteLRU[tuple[int, str], tuple[Plan, str | Unsupported]] = ByteLRU(
            STATEMENT_CACHE, STATEMENT_CACHE_BYTES)
        self._rng = random.Random()
        self._buckets: dict[str, tuple[float, float]] = {}  # route table -> (tokens, refreshed at)
        self._pool: asyncpg.Pool | None = None  # the proxy's own user: sample storage and the report only
        self._exec_pool: asyncpg.Pool | None = None  # mirror_user: runs client statements (as the client)
        self._volatile: ByteLRU[str, tuple[bool, float]] = ByteLRU(VOLATILITY_CACHE)  # name -> (volatile, checked)
        self._volatile_elsewhere: tuple[bool, float] | None = None
        self._functions: ByteLRU[str, frozenset[str]] = ByteLRU(STATEMENT_CACHE * 3, STATEMENT_CACHE_BYTES)
        self._warned_roles: set[str | None] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._schema_ready = False
        self._store_ok = True  # last flush worked (logs once per outage, not once per second)
        self._last_prune = 0.0

    # -- the client's path ------------------------------------------------------------------------------------
    def submit(self, request: MirrorRequest) -> bool:
        """Enqueue; never blocks, never raises. False (counted as dropped) when saturated or closed."""
        try:
            table = request.route.table
            if self._closed:
                self._drop(table, "closed")
                return False
            if not request.client_ok:  # the client's own execution failed: nothing to compare, maybe a probe
                self._drop(table, "client-failed")
                return False
            if not self.rt.config.proxy.mirror_user:
                self._drop(table, "no-mirror-user")
                return False
            self.queue.put_nowait(request)
            self.submitted[table] += 1
            return True
        except asyncio.QueueFull:
            self._drop(request.route.table, "saturated")
            return False
        except Exception:  # the client's path must never see the mirror fail
            log.exception("mirror submit failed")
            return False

    def admit(self, route: Route) -> bool:
        """Called when a query rolled for mirroring, before anything is decoded for it. False: over budget.

        Token bucket per route: `mirror` is the share of queries offered, `mirror_max_per_s` the budget.

        Each mirrored query costs the database two more queries; on a busy server that load slows every
        client, however far off their path it runs. The budget keeps it a small, fixed fraction.
        """
        rate = route.mirror_max_per_s
        if rate <= 0:
            return True
        now = time.monotonic()
        tokens, last = self._buckets.get(route.table, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)  # up to one second's worth saved up
        if tokens < 1:
            self._buckets[route.table] = (tokens, now)
            self._drop(route.table, "rate")
            return False
        self._buckets[route.table] = (tokens - 1, now)
        return True

    def _drop(self, table: str, reason: str) -> None:
        self.dropped[table] += 1
        self.dropped_reasons[(table, reason)] += 1

    def dropped_reasons_text(self, table: str) -> str | None:
        parts = [f"{reason}={n}" for (t, reason), n in sorted(self.dropped_reasons.items()) if t == table]
        return ", ".join(parts) or None

    def recent_recall(self, table: str) -> float | None:
        values = self._recall.get(table)
        return sum(values) / len(values) if values else None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Workers and the flusher; returns when close() is called (or when cancelled)."""
        proxy = self.rt.config.proxy
        kwargs = proxy.upstream.asyncpg_kwargs()
        settings = {"application_name": "pgcutover-mirror", "statement_timeout": str(self.statement_timeout_ms)}
        self._pool = asyncpg.create_pool(**kwargs, min_size=0, max_size=1, timeout=proxy.connect_timeout,
                                         server_settings=settings)
        await self._pool
        if proxy.mirror_user:
            exec_kwargs = {**kwargs, "user": proxy.mirror_user, "password": os.environ.get(MIRROR_PASSWORD_ENV)}
            self._exec_pool = asyncpg.create_pool(**exec_kwargs, min_size=0, max_size=self.concurrency,
                                                  timeout=proxy.connect_timeout, server_settings=settings)
            await self._exec_pool
        elif any(route.mirror > 0 for route in self.rt.routing.routes):
            log.warning("mirror: routes ask for mirroring but [proxy] mirror_user is not set: nothing is mirrored "
                        "(mirrored statements never run with the proxy's own credentials; see SECURITY.md)")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(loop.create_task(self._flush_loop()))
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()

    async def drain(self) -> None:
        """Wait until every queued request was processed and its sample written (tests, shutdown)."""
        await self.queue.join()
        await self.flush()

    async def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout)
        pools = [self._pool, self._exec_pool]
        self._pool = self._exec_pool = None
        for pool in pools:
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except (TimeoutError, Exception):
                pool.terminate()

    # -- workers -----------------------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            request = await self.queue.get()
            try:
                await self.process(request)
            except _Dropped as drop:
                self._drop(request.route.table, drop.reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mirrored comparison failed")
                self._drop(request.route.table, "internal-error")
            finally:
                self.queue.task_done()

    async def process(self, request: MirrorRequest) -> report.Sample:
        """Run one mirrored comparison and queue its sample. Raises _Dropped."""
        route, plan = request.route, request.plan
        if plan.query is None or not is_read_only(plan.query.expression):
            raise _Dropped("not-read-only")
        if not route.shadow_table:
            raise _Dropped("no-shadow")
        if not request.client_ok:
            raise _Dropped("client-failed")
        if not request.user:
            raise _Dropped("no-user")
        if request.database and request.database != self.rt.config.proxy.upstream.database:
            raise _Dropped("other-database")  # the client may not even have CONNECT on the mirror's database
        sql = {target: self._keys_sql(plan, target) for target in (Target.PRIMARY, Target.SHADOW)}
        exact = self._rng.random() * 100 < route.mirror_exact
        if exact:
            sql[Target.EXACT] = self._keys_sql(plan, Target.EXACT)
        pool = self._exec_pool
        if pool is None:
            raise _Dropped("not-running" if self.rt.config.proxy.mirror_user else "no-mirror-user")
        try:
            async with pool.acquire() as conn:
                await self._check_volatility(conn, sql.values())
                async with conn.transaction(readonly=True):
                    await self._become_client(conn, request)
                    args = await self._arguments(conn, request, sql[Target.PRIMARY])
                order = [Target.PRIMARY, Target.SHADOW]
                self._rng.shuffle(order)  # neither target always runs on a warm connection
                outcomes = {target: await self._execute(conn, request, target, sql[target], args)
                            for target in order}
                truth = await self._execute(conn, request, Target.EXACT, sql[Target.EXACT], args) if exact else None
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:  # e.g. the pool cannot connect right now
            raise _Dropped("mirror-connection") from exc
        sample = self._sample(request, outcomes[Target.PRIMARY], outcomes[Target.SHADOW], truth)
        self._record(sample)
        return sample

    async def _become_client(self, conn: asyncpg.Connection, request: MirrorRequest) -> None:
        """Inside the mirrored transaction: the client's role (checked by PostgreSQL against mirror_user's
        memberships) and search_path, both reverting at the transaction's end."""
        try:
            await conn.execute("SELECT pg_catalog.set_config('role', $1, true), "
                               "pg_catalog.set_config('search_path', $2, true)",
                               request.user, request.search_path or '"$user", public')
        except asyncpg.PostgresError as exc:
            if exc.sqlstate not in self._warned_roles:
                self._warned_roles.add(exc.sqlstate)
                log.warning("mirror: [proxy] mirror_user cannot SET ROLE to a session's user (%s); grant it "
                            "membership of the application roles (SECURITY.md)", exc.sqlstate)
            raise _Dropped(f"set-role:{exc.sqlstate}") from exc

    async def _check_volatility(self, conn: asyncpg.Connection, statements: Iterable[str]) -> None:
        """Refuse a statement that calls a VOLATILE function, or whose calls cannot be told. Raises _Dropped."""
        now = time.monotonic()
        if self._volatile_elsewhere is None or now - self._volatile_elsewhere[1] > VOLATILITY_TTL:
            self._volatile_elsewhere = (bool(await conn.fetchval(VOLATILE_ELSEWHERE_SQL)), now)
        if self._volatile_elsewhere[0]:
            raise _Dropped("volatile-operators-in-database")
        names: set[str] = set()
        for sql in statements:
            try:
                names |= self._functions_of(sql)
            except Unsupported as exc:
                raise _Dropped(exc.reason) from exc
        unknown = []
        for name in sorted(names):
            cached = self._volatile.get(name)
            if cached is None or now - cached[1] > VOLATILITY_TTL:
                unknown.append(name)
            elif cached[0]:
                raise _Dropped("volatile-function")
        if unknown:
            found = {row[0]: row[1] for row in await conn.fetch(VOLATILE_NAMES_SQL, unknown)}
            for name in unknown:
                self._volatile.put(name, (found.get(name, True), now))  # not in pg_proc: unsure, refused
            if any(found.get(name, True) for name in unknown):
                raise _Dropped("volatile-function")

    def _functions_of(self, sql: str) -> frozenset[str]:
        found = self._functions.get(sql)
        if found is None:
            found = called_functions(sql)
            self._functions.put(sql, found, 2 * len(sql) + 200)
        return found

    def _keys_sql(self, plan: Plan, target: str) -> str:
        """Per-target statement, cached by plan (the plan object is held, so its id stays unique)."""
        key = (id(plan), target)
        cached = self._statements.get(key)
        if cached is None:
            catalog = self.rt.router.catalog if self.rt.router is not None else None
            try:
                built: str | Unsupported = keys_sql(plan, target, catalog)
            except Unsupported as exc:
                built = exc
            cached = (plan, built)
            # the plan's parsed tree (kept alive here) and the statement text, as rewrite.router.plan_bytes counts
            text = len(built) if isinstance(built, str) else 0
            self._statements.put(key, cached, 40_000 + 4 * text)
        if isinstance(cached[1], Unsupported):
            raise _Dropped(f"unsupported:{cached[1].reason}")
        return cached[1]

    async def _arguments(self, conn: asyncpg.Connection, request: MirrorRequest, primary_sql: str) -> list[object]:
        """The client's Bind values, typed as the primary's statement types them."""
        try:
            statement = await conn.prepare(primary_sql)
        except asyncpg.PostgresError as exc:
            # our statement cannot be prepared (e.g. a correlated subquery taken out of its query)
            raise _Dropped(f"prepare:{exc.sqlstate}") from exc
        types = statement.get_parameters()
        try:
            args = decode_params(request.params, request.param_formats, request.param_oids, types)
        except UnsupportedParam as exc:
            log.debug("mirror: unsupported parameter (%s)", type(exc).__name__)  # the message may quote a value
            raise _Dropped("unsupported-param") from exc
        query = request.plan.query
        assert query is not None
        if query.limit_param is not None and query.limit_param <= len(args):
            limit = args[query.limit_param - 1]
            if not isinstance(limit, int) or limit > MAX_K:
                raise _Dropped("unsupported:limit-too-large")
        return args

    async def _execute(self, conn: asyncpg.Connection, request: MirrorRequest, target: str, sql: str,
                       args: list[object]) -> Outcome:
        route = request.route
        started = None
        try:
            async with conn.transaction(readonly=True):
                await self._become_client(conn, request)
                if target == Target.SHADOW and route.shadow_timeout_ms > 0:
                    await conn.execute("SELECT pg_catalog.set_config('statement_timeout', $1, true)",
                                       str(int(route.shadow_timeout_ms)))
                elif target == Target.EXACT:
                    await conn.execute(_EXACT_SETTINGS)
                statement = await conn.prepare(sql)
                count = len(statement.get_parameters())
                started = time.perf_counter()
                records = await statement.fetch(*args[:count])
                latency = time.perf_counter() - started
            return Outcome(True, latency, [(r[-2], r[-1]) for r in records])
        except asyncpg.PostgresError as exc:
            elapsed = time.perf_counter() - started if started is not None else None
            return Outcome(False, elapsed, [], exc.sqlstate, type(exc).__name__)  # the class, not the message
        except asyncpg.DataError as exc:
            raise _Dropped("unsupported-param") from exc
        except _CONNECTION_ERRORS as exc:
            if target == Target.PRIMARY:
                raise
            return Outcome(False, None, [], None, f"connection:{type(exc).__name__}")

    def _sample(self, request: MirrorRequest, primary: Outcome, shadow: Outcome,
                truth: Outcome | None) -> report.Sample:
        both = primary.ok and shadow.ok
        main = compare(primary.rows, shadow.rows) if both else None
        exact = truth.rows if truth is not None and truth.ok else None
        vs_primary = compare(exact, primary.rows) if exact is not None and primary.ok else None
        vs_shadow = compare(exact, shadow.rows) if exact is not None and shadow.ok else None
        return report.Sample(
            route=request.route.table, replica=self.replica,
            query_id=hashlib.sha1(request.sql.encode(), usedforsecurity=False).hexdigest()[:16],
            client_target=request.client_target, client_ok=request.client_ok,
            client_ms=request.client_latency * 1000 if request.client_latency is not None else None,
            primary_ok=primary.ok, shadow_ok=shadow.ok,
            # paired with the primary's answer to the same statement, any shadow failure is the shadow's
            shadow_fault=primary.ok and not shadow.ok,
            primary_ms=primary.latency * 1000 if primary.ok and primary.latency is not None else None,
            shadow_ms=shadow.latency * 1000 if shadow.ok and shadow.latency is not None else None,
            primary_sqlstate=primary.sqlstate, shadow_sqlstate=shadow.sqlstate, shadow_error=shadow.error,
            k=main.k if main else None, recall=main.recall if main else None,
            rank_agreement=main.rank_agreement if main else None,
            distance_mean_abs=main.distance_mean_abs if main else None,
            distance_max_abs=main.distance_max_abs if main else None,
            exact_k=len(exact) if exact is not None else None,
            primary_recall_exact=vs_primary.recall if vs_primary else None,
            shadow_recall_exact=vs_shadow.recall if vs_shadow else None,
        )

    def _record(self, sample: report.Sample) -> None:
        table = sample.route
        self.samples[table] += 1
        if sample.shadow_fault:
            self.shadow_errors[table] += 1
            log.info("mirror: %s failed on the shadow (SQLSTATE %s, %s) where the primary answered", table,
                     sample.shadow_sqlstate or "none", sample.shadow_error)
        if sample.recall is not None:
            self._recall.setdefault(table, deque(maxlen=RECENT)).append(sample.recall)
        self._pending.append(sample)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]

    # -- persistence ---------------------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        next_refresh = 0.0
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
                if time.monotonic() >= next_refresh:
                    await self.refresh_reports()
                    next_refresh = time.monotonic() + self.refresh_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away: samples wait (bounded), the next round retries
                if self._store_ok:
                    log.warning("mirror: cannot write samples or read the report (%s); retrying", exc)
                self._store_ok = False
            else:
                if not self._store_ok:
                    log.info("mirror: writing samples again")
                self._store_ok = True

    async def flush(self) -> int:
        """Write the queued samples in one COPY. Returns how many were written."""
        if not self._pending or self._pool is None:
            return 0
        batch, self._pending = self._pending, []
        try:
            async with self._pool.acquire() as conn:
                if not self._schema_ready:
                    await report.ensure_schema(conn)
                    self._schema_ready = True
                await report.insert_samples(conn, batch)
                if time.monotonic() - self._last_prune > 3600:
                    self._last_prune = time.monotonic()
                    await report.prune_samples(conn)
        except BaseException:
            self._pending[:0] = batch  # keep them for the next attempt
            del self._pending[: max(0, len(self._pending) - MAX_PENDING)]
            raise
        return len(batch)

    async def refresh_reports(self) -> None:
        """Re-read the summary of all replicas' samples for SHOW REPORT."""
        if self._pool is None:
            return
        async with self._pool.acquire() as conn:
            reports = await report.summarize(conn, self.rt.routing.routes)
        self.reports = {r.summary.route: r for r in reports}
        self.reports_at = time.monotonic()
