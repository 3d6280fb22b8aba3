"""Issue 11, items 1 and 2 through two real proxy processes: a transaction stays on one target while the split
flips every 200 ms, with every driver's way of running transactions, and `pgcutover rollback` moves every
session to the primary at its next transaction, on both replicas, whatever the sticky mode.

Primary and shadow hold the same vectors with a content tag saying which table answered, so each answer
shows its target; it must also be exactly the answer of that target's table.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import psycopg
import pytest

from pgcutover.core.config import load_config
from pgcutover.proxy import control

from .conftest import ROUTE_TOML, cli, set_split, wait_until
from .test_split_through_proxy import QUERY, VECTOR

PSYCOPG_QUERY = QUERY.replace("$1", "%s")
FLIP_SECONDS = 6.0
FLIP_EVERY = 0.2


@dataclass
class Tx:
    kind: str
    replica: int
    started: float  # monotonic, before its first statement was sent
    answers: list[list[tuple[int, str]]]

    @property
    def targets(self) -> set[str]:
        return {content for rows in self.answers for _, content in rows}


@dataclass
class Workload:
    """Clients running two-query transactions back to back until told to stop, recording each one."""

    dsns: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[Tx] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, kinds: dict[str, Callable[[str, int], None]]) -> None:
        for replica, dsn in enumerate(self.dsns):
            for kind, run in kinds.items():
                thread = threading.Thread(target=self._guard, args=(kind, run, dsn, replica), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _guard(self, kind: str, run: Callable[[str, int], None], dsn: str, replica: int) -> None:
        try:
            run(dsn, replica)
        except BaseException as exc:  # asserted empty by the test
            self.errors.append((kind, exc))

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"

    def record(self, kind: str, replica: int, started: float, *answers: list[tuple[int, str]]) -> None:
        self.done.append(Tx(kind, replica, started, [list(map(tuple, rows)) for rows in answers]))

    # -- the four ways of running a transaction ----------------------------------------------------------------
    def psycopg_autocommit_off(self, dsn: str, replica: int) -> None:
        with psycopg.connect(dsn) as conn:  # psycopg's default: every statement is in a transaction
            while not self.stop.is_set():
                started = time.monotonic()
                first = conn.execute(PSYCOPG_QUERY, [VECTOR]).fetchall()
                second = conn.execute(PSYCOPG_QUERY, [VECTOR]).fetchall()
                conn.commit()
                self.record("psycopg", replica, started, first, second)

    def asyncpg_transactions(self, dsn: str, replica: int) -> None:
        async def main() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                while not self.stop.is_set():
                    started = time.monotonic()
                    async with conn.transaction():
                        first = await conn.fetch(QUERY, VECTOR)
                        second = await conn.fetch(QUERY, VECTOR)
                    self.record("asyncpg", replica, started, [tuple(r) for r in first], [tuple(r) for r in second])
            finally:
                await conn.close()

        asyncio.run(main())

    def psycopg_pipeline(self, dsn: str, replica: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in itertools.count():
                if self.stop.is_set():
                    break
                started = time.monotonic()
                named = n % 2 == 1  # every other time BEGIN and COMMIT are server-prepared statements
                with conn.pipeline() as pipeline:  # BEGIN ... COMMIT sent at once: one Sync, or two
                    conn.execute("BEGIN", prepare=named)
                    first = conn.execute(PSYCOPG_QUERY, [VECTOR])
                    if n % 4 >= 2:
                        pipeline.sync()  # the transaction goes on past a Sync
                    second = conn.execute(PSYCOPG_QUERY, [VECTOR])
                    conn.execute("COMMIT", prepare=named)
                self.record("pipeline", replica, started, first.fetchall(), second.fetchall())

    def explicit_text(self, dsn: str, replica: int) -> None:
        """JDBC-style: BEGIN and COMMIT as statements of their own, server-prepared like pgjdbc's after a few."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute("BEGIN", prepare=True)
                first = conn.execute(PSYCOPG_QUERY, [VECTOR]).fetchall()
                second = conn.execute(PSYCOPG_QUERY, [VECTOR]).fetchall()
                conn.execute("COMMIT", prepare=True)
                self.record("explicit", replica, started, first, second)

    def all_kinds(self) -> dict[str, Callable[[str, int], None]]:
        return {"psycopg": self.psycopg_autocommit_off, "asyncpg": self.asyncpg_transactions,
                "pipeline": self.psycopg_pipeline, "explicit": self.explicit_text}


def expected_answers(pg) -> dict[str, list[tuple[int, str]]]:
    answers = {}
    for target, table in (("primary", "rt_items"), ("shadow", "rt_shadow.rt_items")):
        out = pg.psql(f"SELECT id, content FROM {table} ORDER BY embedding <-> '{VECTOR}' LIMIT 5")
        answers[target] = [(int(i), c) for i, c in (line.split("|") for line in out.split())]
    return answers


def proxy_split(proxy, table: str = "public.rt_items") -> float:
    """The split the proxy process itself has in force (its admin console)."""
    with psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True) as conn:
        rows = conn.execute("SHOW ROUTES").fetchall()
    return next(float(r[5]) for r in rows if r[0] == table)


def breaker_trips(proxy) -> list[str]:
    out = cli("route", "history", "rt_items", proxy=proxy)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "circuit breaker" in line]



class Flipper(threading.Thread):
    """Writes the split through the shared routing table every `every` seconds (as `route set` does)."""

    def __init__(self, proxy, splits: tuple[float, ...], every: float) -> None:
        super().__init__(daemon=True)
        self.config = load_config(proxy.config_path)
        self.splits, self.every = splits, every
        self.stop = threading.Event()
        self.flips = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        async def main() -> None:
            conn = await control.connect(self.config)
            try:
                while not self.stop.is_set():
                    split = self.splits[self.flips % len(self.splits)]
                    await control.set_route(conn, self.config, "rt_items", split, actor="test flipper")
                    self.flips += 1
                    await asyncio.sleep(self.every)
            finally:
                await conn.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc


def rollback_reaches_every_session(load: Workload, replicas, kinds: int) -> tuple[float, float]:
    """`pgcutover rollback`, then: once both replicas have it in force, every session's next transaction is on
    the primary. Returns the moments it was asked for and both replicas had it."""
    asked = time.monotonic()
    out = cli("rollback", "rt_items", proxy=replicas[0])
    assert out.returncode == 0, out.stderr
    wait_until(lambda: all(proxy_split(p) == 0 for p in replicas))
    applied = time.monotonic()
    sessions = {(tx.kind, tx.replica) for tx in load.done}
    assert len(sessions) == kinds * len(replicas), sessions

    def each_session_went_on() -> bool:
        after = {(tx.kind, tx.replica) for tx in list(load.done) if tx.started >= applied}
        return after == sessions or bool(load.errors)

    wait_until(each_session_went_on, timeout=30)
    return asked, applied


@pytest.fixture(scope="module")
def query_replicas(start_proxy, routed_tables):
    first = start_proxy(ROUTE_TOML.format(sticky="query"))
    second = start_proxy(ROUTE_TOML.format(sticky="query"))
    set_split(first, 0)
    return first, second


def test_transactions_keep_one_target_while_the_split_flips(query_replicas, routed_tables) -> None:
    expected = expected_answers(routed_tables)
    assert expected["primary"] != expected["shadow"]  # the tag shows the target
    load = Workload([p.dsn() for p in query_replicas])
    flipper = Flipper(query_replicas[0], (100.0, 50.0, 0.0, 50.0), FLIP_EVERY)
    trips_before = breaker_trips(query_replicas[0])
    kinds = load.all_kinds()
    try:
        load.start(kinds)
        flipper.start()
        time.sleep(FLIP_SECONDS)
        flipper.stop.set()
        flipper.join(10)
        assert flipper.error is None, flipper.error
        _, applied = rollback_reaches_every_session(load, query_replicas, len(kinds))
    finally:
        load.finish()
        set_split(query_replicas[0], 0)
    assert not load.errors, load.errors[:3]
    assert flipper.flips >= FLIP_SECONDS / FLIP_EVERY / 3, flipper.flips
    mixed = [tx for tx in load.done if len(tx.targets) != 1]
    assert not mixed, f"{len(mixed)} of {len(load.done)} transactions spanned both targets, e.g. {mixed[:2]}"
    wrong = [tx for tx in load.done if any(rows != expected[next(iter(tx.targets))] for rows in tx.answers)]
    assert not wrong, wrong[:2]
    for kind in kinds:  # the flips did reach every kind of session, on both sides
        assert {next(iter(tx.targets)) for tx in load.done if tx.kind == kind and tx.started < applied} == {
            "primary", "shadow"}, kind
    late = [tx for tx in load.done if tx.started >= applied and tx.targets != {"primary"}]
    assert not late, late[:2]
    # equal tables, equally fast: the flips alone never trip the circuit breaker (issue 11, item 3)
    assert breaker_trips(query_replicas[0]) == trips_before


@pytest.mark.parametrize("sticky", ["session", "application_name"])
def test_rollback_overrides_sticky_sessions(start_proxy, routed_tables, sticky: str) -> None:
    """Sessions stuck to the shadow by their sticky point still go to the primary at their next transaction."""
    replicas = (start_proxy(ROUTE_TOML.format(sticky=sticky)), start_proxy(ROUTE_TOML.format(sticky=sticky)))
    set_split(replicas[0], 100)
    wait_until(lambda: all(proxy_split(p) == 100 for p in replicas))
    load = Workload([p.dsn() for p in replicas])
    kinds = {"psycopg": load.psycopg_autocommit_off, "asyncpg": load.asyncpg_transactions}
    try:
        load.start(kinds)
        wait_until(lambda: {(tx.kind, tx.replica) for tx in list(load.done)} == {
            (k, r) for k in kinds for r in range(2)} or bool(load.errors))
        asked, applied = rollback_reaches_every_session(load, replicas, len(kinds))
    finally:
        load.finish()
        set_split(replicas[0], 0)
    assert not load.errors, load.errors[:3]
    before = [tx for tx in load.done if tx.started < asked]
    assert before and all(tx.targets == {"shadow"} for tx in before), before[-2:]
    late = [tx for tx in load.done if tx.started >= applied and tx.targets != {"primary"}]
    assert not late, late[:2]


def test_multi_statement_queries_open_and_close_transactions(query_replicas) -> None:
    """psql-style simple Queries: `BEGIN; ...` opens a transaction and `...; COMMIT` ends it, inside one Query."""
    literal = QUERY.replace("$1", f"'{VECTOR}'")
    proxy = query_replicas[1]
    set_split(query_replicas[0], 50)
    wait_until(lambda: proxy_split(proxy) == 50)
    seen = set()
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for _ in range(30):
                conn.execute("BEGIN; SELECT 1")  # no parameters: one simple Query with two statements
                targets = {c for _ in range(4) for _, c in conn.execute(literal).fetchall()}
                conn.execute("SELECT 1; COMMIT")
                assert len(targets) == 1, targets
                seen |= targets
                conn.execute("START TRANSACTION; SAVEPOINT a")
                first = {c for _, c in conn.execute(literal).fetchall()}
                conn.execute("ROLLBACK TO SAVEPOINT a; SELECT 2")  # still the same transaction
                assert {c for _, c in conn.execute(literal).fetchall()} == first
                conn.execute("ROLLBACK")
    finally:
        set_split(query_replicas[0], 0)
    assert seen == {"primary", "shadow"}  # each transaction chose again
