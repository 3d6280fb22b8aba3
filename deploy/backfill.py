"""backfill: fill vector_column from legacy_column (and, with --shadow, copy rows to the shadow table).

Design:
- A *pass* splits the keys still to do into slots (4 per worker), contiguous key ranges (lo, hi] with one row each in
  `pgcutover.backfill_checkpoint`. Workers (one connection each) walk their slot by keyset pagination; every
  batch is one short READ COMMITTED transaction that locks the slot row, picks the next keys after `last_key`,
  converts them server-side (`legacy::vector(dims)` for JSON text; the SQL decoders in schema.sql for bytea) and
  advances `last_key` in the same transaction. A SIGKILL loses at most the batches in flight, which roll back.
- Never overwrites a newer value: the UPDATE only touches rows whose vector is still NULL, and READ COMMITTED
  re-checks that condition on the newest row version when a concurrent writer got there first.
- Concurrent backfills of one table cooperate instead of racing: they join the pass in progress, and a slot row
  is locked by at most one batch at a time (SKIP LOCKED picks a free slot; with none free a worker waits for a
  busy one), so two runs walk the same cursors and end in the same state as one run. Only starting a pass takes
  an advisory lock, for a moment; nothing is held across batches, so a killed run never blocks the next one.
- A batch with a bad legacy value falls back (via a savepoint) to a per-row safe conversion; bad rows keep a
  NULL vector, are recorded in `pgcutover.bad_rows` and reported at the end.
- Rows written behind a cursor by a writer without triggers are caught by another pass, started automatically
  while legacy-only rows (other than known bad ones) remain.
- Never a deadlock with the application (so never an application statement failed by us): a batch waits for a
  row lock only while it holds no row an application could want (the first key of the batch, under a short
  lock_timeout, retried on our side); every other row of the batch, and every shadow row it deletes, is locked
  in key order with SKIP LOCKED, and the batch ends before the first row another transaction holds. The shadow
  copy and the conversion then touch only rows this batch holds, and each shadow key is only ever written by
  the holder of its source row, so they wait for nobody. See "Backfill and locks" in deploy/README.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TextIO

import asyncpg

from pgcutover.core.config import Config
from pgcutover.deploy.db import (
    SCHEMA,
    DeployError,
    ResolvedRoute,
    Sql,
    connect,
    quote_literal,
    resolve_route,
    select_routes,
)
from pgcutover.deploy.triggers import SHADOW_TRIGGERS, install_schema, shadow_values

MAX_PASSES = 3
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.LockNotAvailableError)
BATCH_RETRIES = 20
# Our side of every lock wait: a batch gives up a wait after LOCK_TIMEOUT and tries again (a long application
# transaction holding a row makes the backfill wait, for up to LOCK_RETRIES tries, never the other way round).
LOCK_TIMEOUT = "200ms"
LOCK_RETRIES = 850  # with the pauses between tries, about ten minutes of waiting for one row
# More slots than workers: a worker that is done takes the next free slot, so the pass does not end with one
# worker alone on the last big range while the others wait.
SLOTS_PER_WORKER = 4
CHECKPOINT = f"{SCHEMA}.backfill_checkpoint"


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    batch: int = 1000
    max_rate: float | None = None  # rows per second over all workers; None = as fast as the server goes
    shadow: bool = False
    workers: int = 2
    progress: bool = True


@dataclass
class BackfillResult:
    table: str
    passes: int = 0
    rows_done: int = 0  # vectors written by this run
    rows_copied: int = 0  # rows copied to the shadow by this run
    bad: dict[str, str] = field(default_factory=dict)  # key -> reason, found by this run
    elapsed: float = 0.0
    pass_numbers: list[int] = field(default_factory=list)  # the table's pass numbers this run worked on

    @property
    def rate(self) -> float:
        """Rows handled per second (vectors written, or rows copied with --shadow), sleeps included."""
        rows = max(self.rows_done, self.rows_copied)
        return rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def passes_text(self) -> str:
        """The same numbering as the progress line and `pgcutover status`: `pass 3`, `passes 3-4`."""
        numbers = self.pass_numbers
        if not numbers:
            return "no pass"
        return f"pass {numbers[0]}" if len(numbers) == 1 else f"passes {numbers[0]}-{numbers[-1]}"


RATE_WINDOW_S = 10.0


class RateWindow:
    """Rows per second over the last RATE_WINDOW_S seconds of wall time (throttling sleeps included), so the
    rate shown is the rate achieved, whatever --max-rate makes the workers wait."""

    def __init__(self, seconds: float = RATE_WINDOW_S) -> None:
        self.seconds = seconds
        self.points: deque[tuple[float, int]] = deque()

    def add(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.points.append((now, total))
        while len(self.points) > 2 and now - self.points[1][0] >= self.seconds:
            self.points.popleft()

    def rate(self) -> float | None:
        """None until the window spans half a second (too short to say)."""
        if len(self.points) < 2:
            return None
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 0.5 else None


@dataclass
class Position:
    """Where this process is, for the line Ctrl-C prints."""

    table: str = ""
    pass_number: int = 0
    done: int = 0
    total: int = 0


POSITION = Position()


class Progress:
    """A one-line bar with rate and ETA on a terminal; a plain log line every few seconds otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr, enabled: bool = True,
                 max_rate: float | None = None) -> None:
        self.label, self.total, self.stream, self.enabled = label, max(total, 0), stream, enabled
        self.tty = enabled and stream.isatty()
        self.last_log = time.monotonic()
        self.max_rate = max_rate

    def update(self, done: int, rate: float | None, *, final: bool = False) -> None:
        POSITION.done, POSITION.total = done, max(self.total, done)
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last_log < (0.2 if self.tty else 5.0):
            return
        self.last_log = now
        total = max(self.total, done)
        pct = 100.0 * done / total if total else 100.0
        remaining = max(total - done, 0)
        if self.max_rate:
            # too early to measure: the throttle is the best guess; and after a stall the workers catch up in a
            # burst above --max-rate, but what remains cannot go faster than the throttle
            rate = self.max_rate if rate is None else min(rate, self.max_rate)
        if not remaining:
            eta = "0s"
        elif rate:
            eta = _duration(remaining / rate)
        else:
            eta = "?"
        shown = "?" if rate is None else f"{rate:,.0f}"
        text = f"{self.label}: {done:,}/{total:,} rows ({pct:5.1f}%) {shown} rows/s ETA {eta}"
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RouteSql:
    """The statements of one route's backfill, built once from quoted names and catalog types."""

    def __init__(self, r: ResolvedRoute, shadow: bool) -> None:
        if r.legacy is None and not shadow:
            raise DeployError(f"{r.display}: no legacy_column to backfill from (use --shadow to copy rows)")
        if shadow and r.shadow is None:
            raise DeployError(f"{r.display}: --shadow needs shadow_table in the route")
        self.r, self.shadow = r, shadow
        t, key, vec, keytype = r.table.ident, r.key.ident, r.vector.ident, r.key.type_sql
        self.keys = Sql(f"$1::text[]::{keytype}[]")
        self.legacy_only = Sql(f"{vec} IS NULL AND {r.legacy.ident} IS NOT NULL") if r.legacy else Sql("false")
        # With --shadow every row is a candidate (each is copied), otherwise only legacy-only rows.
        self.where = Sql("true") if shadow else self.legacy_only
        if r.legacy is not None:
            legacy = Sql(f"{t}.{r.legacy.ident}")
            self.fast_sql = (
                f"UPDATE {t} SET {vec} = {r.conversion(legacy)} "
                f"WHERE {key} = ANY({self.keys}) AND {self.legacy_only} RETURNING {key}::text"
            )
            # One conversion per row; xmin pins the row version it was computed from, so a row that a
            # concurrent writer changed meanwhile is left alone (its own write, or a later pass, handles it).
            self.safe_sql = (
                f"UPDATE {t} SET {vec} = c.v FROM (SELECT {key} AS k, xmin AS x, "
                f"{r.safe_conversion(Sql(r.legacy.ident))} AS v FROM {t} "
                f"WHERE {key} = ANY({self.keys}) AND {self.legacy_only}) AS c "
                f"WHERE {t}.{key} = c.k AND {t}.xmin = c.x AND c.v IS NOT NULL AND {t}.{vec} IS NULL "
                f"RETURNING {t}.{key}::text"
            )
            self.reasons_sql = (
                f"SELECT {key}::text AS key, {SCHEMA}.vector_error({r.legacy.ident}, {r.format_lit}, {r.dims}) "
                f"AS reason FROM {t} WHERE {key} = ANY({self.keys}) AND {self.legacy_only}"
            )
            self.remaining_sql = (
                f"SELECT count(*) FROM {t} WHERE {self.legacy_only} AND NOT EXISTS (SELECT 1 FROM "
                f"{SCHEMA}.bad_rows AS b WHERE b.table_name = $1 AND b.key = {t}.{key}::text)"
            )
        # Slot bounds: the upper key of each of n groups of equal size (the last group is unbounded above).
        self.bounds_sql = (
            f"SELECT max({key})::text AS hi, count(*) AS n FROM (SELECT {key}, ntile($1) OVER (ORDER BY {key}) AS b "
            f"FROM {t} WHERE {self.where}) AS s GROUP BY b ORDER BY b"
        )
        self._lock_sql()
        if shadow:
            self._shadow_sql()

    def candidates(self, limit: int, lower: str | None, upper: str | None) -> tuple[str, list[object]]:
        """Next keys of a slot in (lower, upper]. Absent bounds are left out of the text (not `$n IS NULL OR`)
        so that every variant plans as an index range scan."""
        r = self.r
        t, key, keytype = r.table.ident, r.key.ident, r.key.type_sql
        conditions, args = [self.where], [limit]
        for bound, op in ((lower, ">"), (upper, "<=")):
            if bound is not None:
                args.append(bound)
                conditions.append(Sql(f"{key} {op} ${len(args)}::text::{keytype}"))
        # Aliased: `ORDER BY key` would otherwise sort by the text output column of the same name.
        query = f"SELECT {key}::text AS k FROM {t} WHERE {' AND '.join(conditions)} ORDER BY {t}.{key} LIMIT $1"
        return query, args

    def _lock_sql(self) -> None:
        r = self.r
        t, key, keytype = r.table.ident, r.key.ident, r.key.type_sql
        # FOR NO KEY UPDATE: what our UPDATE of the vector takes anyway; it leaves foreign-key checks (KEY SHARE)
        # of other tables alone. ORDER BY puts the locking after the sort: rows are locked in key order.
        self.wait_first_sql = f"SELECT 1 FROM {t} WHERE {key} = $1::text::{keytype} FOR NO KEY UPDATE"
        self.lock_sql = (f"SELECT {key}::text FROM {t} WHERE {key} = ANY({self.keys}) "
                         f"ORDER BY {t}.{key} FOR NO KEY UPDATE SKIP LOCKED")
        self.present_sql = f"SELECT {key}::text FROM {t} WHERE {key} = ANY({self.keys})"
        # The shadow too when we write it ourselves (--shadow needs privileges on it anyway; without it, the sync
        # triggers write it as their owner).
        tables = [t, r.shadow.ident] if self.shadow and r.shadow is not None else [t]
        self.table_locks_sql = f"LOCK TABLE {', '.join(tables)} IN ROW EXCLUSIVE MODE"

    def orphans(self, lower: str | None, upper: str | None) -> tuple[str, list[object]]:
        """Shadow keys in (lower, upper] without a row in the table (bounds left out of the text when absent)."""
        r = self.r
        assert r.shadow is not None and r.shadow_key is not None
        skey, skeytype = r.shadow_key.ident, r.shadow_key.type_sql
        conditions, args = [self.orphan], []
        for bound, op in ((lower, ">"), (upper, "<=")):
            if bound is not None:
                args.append(bound)
                conditions.append(Sql(f"s.{skey} {op} ${len(args)}::text::{skeytype}"))
        return f"SELECT s.{skey}::text FROM {r.shadow.ident} AS s WHERE {' AND '.join(conditions)}", args

    def _shadow_sql(self) -> None:
        r = self.r
        assert r.shadow is not None and r.shadow_key is not None
        v = shadow_values(r)
        t, key, s = r.table.ident, r.key.ident, r.shadow.ident
        skey, skeytype = r.shadow_key.ident, r.shadow_key.type_sql
        # Only rows the batch holds (Worker.lock_rows): the newest version is copied, and the lock held until
        # commit makes any later write of these rows reach the shadow (through its trigger) after this copy.
        # No lock is taken here, so the copy cannot wait for (or deadlock with) a writer of the source.
        self.copy_sql = (
            f"INSERT INTO {s} AS s ({v['columns']}){v['overriding']} "
            f"SELECT {v['values']} FROM {t} AS n WHERE n.{key} = ANY({self.keys}) "
            f"ORDER BY n.{key} "
            f"ON CONFLICT ({skey}) DO UPDATE SET {v['assignments']}"
        )
        self.orphan = Sql(f"NOT EXISTS (SELECT 1 FROM {t} AS t WHERE t.{key} = s.{skey})")
        orphan = self.orphan
        self.lock_orphans_sql = (f"SELECT s.{skey}::text FROM {s} AS s WHERE s.{skey} = ANY($1::text[]::{skeytype}[]) "
                                 f"ORDER BY s.{skey} FOR UPDATE SKIP LOCKED")
        self.delete_orphans_sql = f"DELETE FROM {s} AS s WHERE s.{skey} = ANY($1::text[]::{skeytype}[]) AND {orphan}"


@dataclass
class Slot:
    number: int
    pass_: int
    shadow: bool
    lo: str | None
    hi: str | None
    last_key: str | None


class Shared:
    """State the workers of one run share: totals, rate limit, progress."""

    def __init__(self, result: BackfillResult, options: BackfillOptions, progress: Progress, done: int) -> None:
        self.result, self.options, self.progress = result, options, progress
        self.started = time.monotonic()
        self.processed = 0  # candidate rows handled by this run in this pass (what --max-rate limits)
        self.done = done  # rows done in this pass by anyone, for the progress bar
        self.rates: dict[int, float] = {}
        self.window = RateWindow()
        self.window.add(done, self.started)

    @property
    def rate(self) -> float | None:
        """This run's rows per second over the sliding window (None until it can tell)."""
        return self.window.rate()

    async def throttle(self) -> None:
        if self.options.max_rate:
            ahead = self.processed / self.options.max_rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


class Worker:
    """One connection working through slots of the current pass, one batch per transaction."""

    def __init__(self, conn: asyncpg.Connection, sql: RouteSql, shared: Shared, index: int) -> None:
        self.conn, self.sql, self.r, self.shared, self.index = conn, sql, sql.r, shared, index
        self.preferred = index
        self.batch = max(1, min(shared.options.batch, int(shared.options.max_rate or shared.options.batch)))
        self.rate = 0.0
        self.rows = 0  # rows this worker handled, for its own sliding window (the slot's `rate` in status)
        self.window = RateWindow()
        self.window.add(0)

    async def run(self, pass_: int) -> None:
        while True:
            failures = lock_waits = 0
            while True:
                try:
                    more = await self._batch(pass_)
                    break
                except asyncpg.LockNotAvailableError:
                    # lock_timeout: a row or the table is held by someone else; we step back and retry
                    lock_waits += 1
                    if lock_waits >= LOCK_RETRIES:
                        raise DeployError(
                            f"{self.r.display}: a row or the table stayed locked by another transaction for "
                            f"{lock_waits} tries of {LOCK_TIMEOUT}; run backfill again to resume when it is done"
                        ) from None
                    await asyncio.sleep(min(0.02 * lock_waits, 0.5))
                except RETRYABLE:
                    failures += 1
                    if failures == BATCH_RETRIES:
                        raise
                    await asyncio.sleep(0.05 * failures)
            if not more:
                return
            self.shared.progress.update(self.shared.done, self.shared.rate)
            await self.shared.throttle()

    async def _lock_slot(self, pass_: int) -> Slot | None:
        """A free unfinished slot of the pass (ours first); with none free, wait for a busy one."""
        query = (
            f"SELECT slot, pass, shadow, lo, hi, last_key FROM {CHECKPOINT} WHERE table_name = $1 AND pass = $2 "
            "AND finished_at IS NULL ORDER BY slot = $3 DESC, slot LIMIT 1 FOR UPDATE"
        )
        row = await self.conn.fetchrow(query + " SKIP LOCKED", self.r.display, pass_, self.preferred)
        if row is None:
            row = await self.conn.fetchrow(query, self.r.display, pass_, self.preferred)
        if row is None:
            return None
        self.preferred = row["slot"]
        return Slot(row["slot"], row["pass"], row["shadow"], row["lo"], row["hi"], row["last_key"])

    async def _batch(self, pass_: int) -> bool:
        """One transaction on one slot. False when no unfinished slot is left in the pass."""
        t0 = time.monotonic()
        async with self.conn.transaction(isolation="read_committed"):
            slot = await self._lock_slot(pass_)
            if slot is None:
                return False
            # After the slot (a busy slot is waited for without a timeout: only our own workers hold those).
            await self.conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            # The table locks our writes need, taken now, while we hold no row: a DDL queued on either table
            # makes us step back here instead of waiting with rows locked.
            await self.conn.execute(self.sql.table_locks_sql)
            lower = slot.last_key if slot.last_key is not None else slot.lo
            query, args = self.sql.candidates(self.batch, lower, slot.hi)
            keys = [row[0] for row in await self.conn.fetch(query, *args)]
            last = keys[-1] if keys else None
            if keys:
                keys, last = await self.lock_rows(keys)
            if last is None:
                if slot.shadow:
                    await self.delete_orphans(lower, slot.hi)
                await self.conn.execute(
                    f"UPDATE {CHECKPOINT} SET finished_at = now(), updated_at = now(), rate = NULL "
                    "WHERE table_name = $1 AND slot = $2", self.r.display, slot.number,
                )
                self.shared.rates.pop(slot.number, None)
                return True
            written, bad = await self.convert(keys)
            copied = await self.copy_to_shadow(keys, written, lower, last) if slot.shadow else 0
            count = copied if slot.shadow else len(written)
            self.rows += count
            self.window.add(self.rows)
            # the achieved rate (throttle sleeps included); the batch's own speed only until the window can tell
            self.rate = self.window.rate() or count / max(time.monotonic() - t0, 1e-6)
            await self.conn.execute(
                f"UPDATE {CHECKPOINT} SET last_key = $3, rows_done = rows_done + $4, rows_bad = rows_bad + $5, "
                "rows_copied = rows_copied + $6, rate = $7, updated_at = now() WHERE table_name = $1 AND slot = $2",
                self.r.display, slot.number, last, len(written), len(bad), copied, self.rate,
            )
        result = self.shared.result
        result.rows_done += len(written)
        result.rows_copied += copied
        result.bad.update(bad)
        self.shared.processed += len(keys)
        self.shared.done += count
        self.shared.window.add(self.shared.done)
        self.shared.rates[slot.number] = self.rate
        return True

    async def lock_rows(self, keys: list[str]) -> tuple[list[str], str]:
        """Lock the batch's rows without ever waiting while holding one: returns the keys now held (in key
        order) and the key the batch may advance to, which is just before the first row another transaction
        holds (that row is the first key of the next batch, so the cursor never passes a row it skipped)."""
        # The only wait: for the first row, while this transaction holds no row at all (only its slot, which no
        # application touches), so no application can be waiting for us meanwhile. Bounded by lock_timeout.
        await self.conn.execute(self.sql.wait_first_sql, keys[0])
        held = [row[0] for row in await self.conn.fetch(self.sql.lock_sql, keys)]
        if len(held) == len(keys):
            return held, keys[-1]
        mine = set(held)
        busy = {row[0] for row in await self.conn.fetch(self.sql.present_sql, [k for k in keys if k not in mine])}
        # Keys in between that are gone (deleted, key changed) are simply passed.
        end = next((i for i, k in enumerate(keys) if k in busy), len(keys))
        prefix = keys[:end] or keys[:1]  # keys[0] is ours or gone, never busy
        # Rows we locked beyond the first busy one stay locked until commit, untouched: harmless, as we wait for
        # nothing more in this transaction.
        return [k for k in prefix if k in mine], prefix[-1]

    async def convert(self, keys: list[str]) -> tuple[list[str], dict[str, str]]:
        """Write vectors for the batch; returns (keys written, bad key -> reason)."""
        if self.r.legacy is None or not keys:
            return [], {}
        try:
            async with self.conn.transaction():  # a savepoint: a bad value rolls back only this statement
                return [row[0] for row in await self.conn.fetch(self.sql.fast_sql, keys)], {}
        except (asyncpg.DataError, asyncpg.ProgramLimitExceededError):
            pass
        written = [row[0] for row in await self.conn.fetch(self.sql.safe_sql, keys)]
        rows = await self.conn.fetch(self.sql.reasons_sql, keys)
        bad = {row["key"]: row["reason"] for row in rows if row["reason"]}
        if bad:
            await self.conn.executemany(
                f"INSERT INTO {SCHEMA}.bad_rows AS b (table_name, key, reason, seen_at) VALUES ($1, $2, $3, now()) "
                "ON CONFLICT (table_name, key) DO UPDATE SET reason = EXCLUDED.reason, seen_at = EXCLUDED.seen_at",
                [(self.r.display, key, reason) for key, reason in bad.items()],
            )
        return written, bad

    async def copy_to_shadow(self, keys: list[str], written: list[str], lo: str | None, hi: str | None) -> int:
        """Upsert the batch's rows into the shadow and delete shadow rows in (lo, hi] with no source row."""
        synced = await self.conn.fetchval(
            "SELECT count(*) = $3 FROM pg_trigger WHERE tgrelid = $1 AND tgname = ANY($2::text[]) AND tgenabled <> 'D'",
            self.r.table.oid, list(SHADOW_TRIGGERS), len(SHADOW_TRIGGERS),
        )
        if synced:  # the UPDATE above already reached the shadow through the sync trigger
            done = set(written)
            keys = [k for k in keys if k not in done]
        copied = 0
        if keys:
            status = await self.conn.execute(self.sql.copy_sql, keys)
            copied = int(status.rsplit(" ", 1)[-1])
        await self.delete_orphans(lo, hi)
        return copied + (len(written) if synced else 0)

    async def delete_orphans(self, lo: str | None, hi: str | None) -> None:
        query, args = self.sql.orphans(lo, hi)
        candidates = [row[0] for row in await self.conn.fetch(query, *args)]
        if not candidates:
            return
        # Lock first (key order, skipping rows a writer holds: its source row is on its way back), then re-check
        # in a new statement (new snapshot): a writer that was inserting one of these keys has committed by now
        # and its row is seen, so only true orphans are deleted.
        locked = [row[0] for row in await self.conn.fetch(self.sql.lock_orphans_sql, candidates)]
        if locked:
            await self.conn.execute(self.sql.delete_orphans_sql, locked)


class BackfillRun:
    """This process's part in backfilling one route (other processes may share its passes)."""

    def __init__(self, conns: list[asyncpg.Connection], r: ResolvedRoute, options: BackfillOptions,
                 stream: TextIO = sys.stderr) -> None:
        self.conns, self.r, self.options, self.stream = conns, r, options, stream
        self.result = BackfillResult(table=r.display)

    async def begin_pass(self, previous: int | None) -> tuple[int, bool]:
        """Join the pass in progress, or start a new one. Returns (pass number, its shadow mode)."""
        conn = self.conns[0]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"pgcutover:backfill:{self.r.display}")
            current = await conn.fetchrow(
                f"SELECT max(pass) AS pass, bool_or(shadow) AS shadow, count(*) FILTER (WHERE finished_at IS NULL) "
                f"AS open FROM {CHECKPOINT} WHERE table_name = $1", self.r.display,
            )
            number = current["pass"] or 0
            if current["open"] and number != previous and (current["shadow"] or not self.options.shadow):
                return number, current["shadow"]
            sql = RouteSql(self.r, self.options.shadow)
            groups = await conn.fetch(sql.bounds_sql, SLOTS_PER_WORKER * max(1, self.options.workers))
            # Slot i covers (hi of group i-1, hi of group i]; the first is open below, the last above.
            his = [*(g["hi"] for g in groups[:-1]), None]
            los = [None, *his[:-1]]
            counts = [g["n"] for g in groups] or [0]  # nothing to do: still one slot, finished at once
            await conn.execute(f"DELETE FROM {CHECKPOINT} WHERE table_name = $1", self.r.display)
            await conn.executemany(
                f"INSERT INTO {CHECKPOINT} (table_name, slot, pass, shadow, lo, hi, last_key, rows_total) "
                "VALUES ($1, $2, $3, $4, $5, $6, $5, $7)",
                [(self.r.display, i, number + 1, self.options.shadow, lo, hi, n)
                 for i, (lo, hi, n) in enumerate(zip(los, his, counts, strict=True))],
            )
            return number + 1, self.options.shadow

    async def run_pass(self, number: int, shadow: bool) -> None:
        sql = RouteSql(self.r, shadow)
        totals = await self.conns[0].fetchrow(
            "SELECT sum(rows_total)::bigint AS total, "
            "sum(CASE WHEN shadow THEN rows_copied ELSE rows_done END)::bigint AS done "
            f"FROM {CHECKPOINT} WHERE table_name = $1 AND pass = $2", self.r.display, number,
        )
        progress = Progress(f"{self.r.display} pass {number}", totals["total"] or 0, self.stream,
                            self.options.progress, self.options.max_rate)
        POSITION.table, POSITION.pass_number = self.r.display, number
        POSITION.done, POSITION.total = totals["done"] or 0, totals["total"] or 0
        shared = Shared(self.result, self.options, progress, totals["done"] or 0)
        workers = [Worker(conn, sql, shared, i) for i, conn in enumerate(self.conns)]
        await asyncio.gather(*(w.run(number) for w in workers))
        elapsed = time.monotonic() - shared.started
        progress.update(shared.done, (shared.done - (totals["done"] or 0)) / elapsed if elapsed > 0 else None,
                        final=True)

    async def remaining(self) -> int:
        if self.r.legacy is None:
            return 0
        return await self.conns[0].fetchval(RouteSql(self.r, False).remaining_sql, self.r.display)

    async def run(self) -> BackfillResult:
        started = time.monotonic()
        previous: int | None = None
        for _ in range(MAX_PASSES):
            number, shadow = await self.begin_pass(previous)
            await self._heartbeat_name()
            await self.run_pass(number, shadow)
            self.result.passes += 1
            self.result.pass_numbers.append(number)
            previous = number
            left = await self.remaining()
            if left == 0:
                break
            self._say(f"{self.r.display}: {left} legacy-only rows were written behind the cursor; another pass")
        self.result.elapsed = time.monotonic() - started
        return self.result

    async def _heartbeat_name(self) -> None:
        """Name the connections after the route: while they exist the backfill is alive (`pgcutover status`
        tells `running` or `stale` from `interrupted` by looking for them in pg_stat_activity)."""
        for conn in self.conns:
            await conn.execute(f"SET application_name = {quote_literal(heartbeat_name(self.r.display))}")

    def _say(self, text: str) -> None:
        if self.options.progress:
            self.stream.write(text + "\n")
            self.stream.flush()


async def _open(config: Config, count: int) -> list[asyncpg.Connection]:
    conns = [await connect(config) for _ in range(count)]
    for conn in conns:
        # Lets the server notice a killed client between checks, so its batch (and slot lock) goes fast.
        await conn.execute("SET client_connection_check_interval = '1s'")
        # A batch commits its checkpoint with its rows, so a commit lost in a server crash is simply redone:
        # no need to wait for the WAL flush of every batch.
        await conn.execute("SET synchronous_commit = off")
        # Statement triggers keep each batch's old and new rows (with their vectors) in transition tables:
        # let a batch's worth stay in memory instead of spilling to temporary files.
        await conn.execute("SET work_mem = '64MB'")
    return conns


async def backfill(config: Config, table: str | None = None, options: BackfillOptions | None = None,
                   stream: TextIO = sys.stderr) -> list[BackfillResult]:
    """Backfill the selected routes one after another, each with `options.workers` connections."""
    options = options or BackfillOptions()
    conns = await _open(config, max(1, options.workers))
    try:
        await install_schema(conns[0])
        results = []
        resolved = [await resolve_route(conns[0], route) for route in select_routes(config, table)]
        for r in resolved:
            # Over all routes, --shadow applies where there is a shadow, and a route with nothing to fill is
            # skipped; a route named with --route must be able to do what was asked.
            wanted = replace(options, shadow=options.shadow and (table is not None or r.shadow is not None))
            if table is None and r.legacy is None and not wanted.shadow:
                if options.progress:
                    stream.write(f"{r.display}: no legacy_column and no --shadow copy: nothing to backfill\n")
                continue
            RouteSql(r, wanted.shadow)  # fail early on a route that cannot be backfilled
            results.append(await BackfillRun(conns, r, wanted, stream).run())
        return results
    finally:
        for conn in conns:
            await conn.close()


def heartbeat_name(table: str) -> str:
    """application_name of a backfill's connections (PostgreSQL keeps 63 bytes of it)."""
    return f"pgcutover backfill {table}"[:63]


def interrupted_line(command: str) -> str:
    """What Ctrl-C prints: where this run stopped and how to resume (batches in flight were rolled back)."""
    if not POSITION.table:
        return f"interrupted before the first batch; nothing changed. Resume: {command}"
    pct = 100.0 * POSITION.done / POSITION.total if POSITION.total else 0.0
    return (f"interrupted: {POSITION.table} pass {POSITION.pass_number} stopped at {POSITION.done:,}/"
            f"{POSITION.total:,} rows ({pct:.1f}%), checkpoint saved; resume with: {command}")


def report(results: list[BackfillResult], stream: TextIO, limit: int = 20) -> None:
    for res in results:
        stream.write(
            f"{res.table}: {res.rows_done:,} vectors written, {res.rows_copied:,} rows copied to the shadow, "
            f"{len(res.bad):,} bad rows skipped, {res.passes_text}, {res.elapsed:.1f}s ({res.rate:,.0f} rows/s)\n"
        )
        for key, reason in list(res.bad.items())[:limit]:
            stream.write(f"  bad row key={key}: {reason}\n")
        if len(res.bad) > limit:
            stream.write(f"  ... and {len(res.bad) - limit} more (see pgcutover.bad_rows)\n")
