"""Per-session routing of statements: the decision point for Query, Parse, Bind and Close.

The router (rewrite/) turns SQL text into a plan; the split picks a target per query; this module turns the
two into the messages the server gets, keeping the reply queue exact:

- a simple Query or a Parse is re-written for its target (or forwarded byte for byte when the plan says so);
- a named statement is prepared for the target chosen at Parse time, under the client's name; when a later
  execution goes to the other target (the split changed, or sticky = "query"), the other target's statement
  is prepared once under a name of ours, its ParseComplete is swallowed, and the Bind is pointed at it. This
  is PgDog's "one upstream statement per rewrite": a statement prepared for one target is never executed
  against the other.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgcutover.core.enums import Target
from pgcutover.core.sqlstate import PROGRAM_LIMIT_EXCEEDED
from pgcutover.rewrite.decision import (
    CANCELED_SQLSTATE,
    INEXACT_SQLSTATE,
    Decision,
    Merge,
    Refuse,
    Rewrite,
    cancelled,
    decide,
)
from pgcutover.rewrite.router import plan_bytes
from pgcutover.rewrite.split import SplitSession
from pgcutover.rewrite.txcontrol import query_effects, statement_effect

from .deferred import Deferred, Outgoing
from .merged import MergedQueries, Unanswerable
from .mirror import MirrorRequest
from .protocol import codes
from .protocol import messages as msg
from .protocol.replies import BIND, CLOSE, DROP, EXECUTE, FORWARD, PARSE, QUERY

if TYPE_CHECKING:
    from pgcutover.core.config import Route
    from pgcutover.rewrite.plan import Plan

    from .view import SessionView

log = logging.getLogger("pgcutover.statements")

_names = itertools.count(1)
MAX_STATEMENT_BYTES = 64 << 20  # per session: routed statements keep their plans alive (rewrite.router.plan_bytes)


class SessionLimit(msg.ProtocolViolation):
    """A per-session bound was reached: the session gets a FATAL with `sqlstate` and is closed.

    54000 program_limit_exceeded, not 53200 out_of_memory: the proxy did not run out of memory, a limit the
    operator set (max_prepared_statements) was reached, like PostgreSQL's own 54xxx limits; PostgreSQL itself
    has no limit on prepared statements. FATAL because the session cannot be answered in place: the statement
    would be missing from every later Bind of the client's pipeline."""

    def __init__(self, text: str, sqlstate: str = PROGRAM_LIMIT_EXCEEDED) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


_RAISE_NAME = "pgcutover_raise"  # our statement that makes the server raise an error in the client's pipeline
# Statements after which the server has dropped prepared statements (ours included). A simple Query may hold
# several statements, so the text is searched (a match inside a string literal only costs a re-prepare).
_MAY_DROP = re.compile(r"(?i:deallocate|discard)")  # the cheap test, on the first 4 KB of every text
_DROPS_STATEMENTS = re.compile(r"\b(?:deallocate|discard\s+all)\b", re.IGNORECASE)


def drops_statements(sql: str) -> bool:
    return _MAY_DROP.search(sql, 0, 4096) is not None and _DROPS_STATEMENTS.search(sql, 0, 4096) is not None


def raise_sql(sqlstate: str, message: str, hint: str | None = None) -> str:
    """A statement that makes the server itself raise `sqlstate`: the error then has the server's own semantics
    (the transaction aborts, the extended protocol skips to Sync, ReadyForQuery follows). The texts are ours
    (route name, reason code, a load error), written as E'' literals: unambiguous whatever
    standard_conforming_strings says, and the dollar-quote tag cannot occur in them."""

    def literal(text: str) -> str:
        text = text.replace("\0", "").replace("$pgcutover$", "$ pgcutover $")
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    using = f"ERRCODE = '{sqlstate}', MESSAGE = {literal(message)}"
    if hint:
        using += f", HINT = {literal(hint)}"
    return f"DO $pgcutover$ BEGIN RAISE EXCEPTION USING {using}; END $pgcutover$"


_HINT = 'on_inexact = "primary_only" answers from pgvector rows only, with a notice; see README "Limits"'


# what the commonest messages owe, shared
_OWES_QUERY = ((QUERY, FORWARD),)
_OWES_BIND = ((BIND, FORWARD),)
_QUERY_AS_IS = Outgoing(None, _OWES_QUERY)
_BIND_AS_IS = Outgoing(None, _OWES_BIND)
_CLOSE_AS_IS = Outgoing(None, ((CLOSE, FORWARD),))
_PLANNED = Outgoing(b"", ())  # a deferred planning: its message is routed again, from the top


def _notice_text(decision: Refuse) -> str:
    return decision.message + "; answered from pgvector rows only"


def _hint(decision: Refuse) -> str | None:
    return _HINT if decision.sqlstate == INEXACT_SQLSTATE else None


def reason_code(reason: str) -> str:
    """The metric label of a refusal reason: "store-not-ready: <error>" -> "store-not-ready"."""
    return reason.split(":", 1)[0].strip() or "unknown"


@dataclass(slots=True)
class Execution:
    """One routed execution awaiting its ReadyForQuery: timed, judged (breaker) and perhaps mirrored."""

    route: Route
    target: str
    started: float
    plan: Plan
    sql: str
    mirror: bool  # rolled for mirroring (read-only, outside an explicit transaction)
    params: tuple[bytes | None, ...] = ()
    param_formats: tuple[int, ...] = ()
    param_oids: tuple[int, ...] = ()
    awaiting_bind: bool = False  # decided at an unnamed Parse: its values come with the next Bind
    replay: bool = False  # the failover's re-run on the primary of a statement that failed on the shadow


@dataclass(slots=True)
class RoutedStatement:
    plan: Plan
    sql: str  # the client's own text: what the primary gets when the plan keeps its bytes
    param_oids: tuple[int, ...]
    prepared_for: str  # the target whose SQL is prepared under the client's name
    others: dict[str, str] = field(default_factory=dict)  # target -> our statement name for it
    uncertain: set[str] = field(default_factory=set)  # targets whose Parse may have failed: prepare again

    def sql_for(self, target: str) -> str:
        return self.plan.sql_for(target) or self.sql


def parse_search_path(value: str, user: str) -> tuple[str, ...]:
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry == '"$user"' or entry == "$user":
            entry = user
        if entry:
            entries.append(entry)
    return tuple(entries)


class StatementRouting:
    """One session's routed statements and split rolls. Called by the session with whole messages."""

    def __init__(self, session: SessionView) -> None:
        self.session = session
        self.rt = session.rt
        self.router = session.rt.router
        self.split = SplitSession(application_name=session.application_name or None)
        self.statements: dict[str, RoutedStatement] = {}
        self._injected: list[tuple[RoutedStatement, str]] = []  # other-target Parses since the last Sync
        self._search_path_raw = ""
        self._search_path: tuple[str, ...] = ("public",)
        self._executions: list[Execution] = []  # routed executions awaiting their ReadyForQuery
        self._sqlstate: str | None = None  # first error since the last ReadyForQuery
        self._failed = False
        self.force_target: str | None = None  # set while a failed shadow cycle is replayed on the primary
        # a failed shadow execution of a guarded cycle, judged by the breaker once the failover's re-run on the
        # primary has answered: (execution, seconds, sqlstate)
        self._awaiting_primary: tuple[Execution, float, str | None] | None = None
        self.merged = MergedQueries(self.rt.fallback) if self.rt.fallback is not None else None
        self.unnamed: RoutedStatement | None = None  # the unnamed statement, when it is merged on Bind
        self._planned: tuple[str, tuple[str, ...], Plan] | None = None  # planned off the loop, for the replay
        self._statement_bytes = 0  # plan_bytes of self.statements
        self._tx_statements: dict[str, int] = {}  # named statements that are BEGIN/COMMIT/...: their effect
        self._cancel: asyncio.Event | None = None  # set while a query waits for a fallback store
        # routed named statements (or an unnamed one merged or mirrored at its Bind) exist: the session must
        # hand Bind and Close here too (it reads this after each message)
        self.holds_statement_messages = False

    # -- context ----------------------------------------------------------------------------------------------
    @property
    def search_path(self) -> tuple[str, ...]:
        raw = self.session.server_params.get("search_path", '"$user", public')
        if raw != self._search_path_raw:
            self._search_path_raw = raw
            self._search_path = parse_search_path(raw, self.session.user)
        return self._search_path

    def _live_route(self, plan: Plan) -> Route:
        """Split and sticky as in force now (a cached plan may predate the last `route set`)."""
        assert plan.route is not None
        return self.rt.routing.route(plan.route.table) or plan.route

    def _target(self, plan: Plan, sql: str = "", execution: bool = True) -> str:
        """Roll for one query. `execution` is False for the Parse of a named statement: its Binds count."""
        route = self._live_route(plan)
        split = self.split
        split.application_name = self.session.application_name or None
        if execution:
            split.implicit()
        # an unplanned similarity query on a fallback route (a passthrough plan naming it) is refused on the primary
        target = Target.PRIMARY if plan.passthrough else self.force_target or split.target_for(route)
        if execution:
            self.rt.count_routed(route.table, target)
            outside = not split.explicit and self.session.tx_status == codes.TX_IDLE
            mirror = (route.mirror > 0 and outside and self.rt.mirror is not None and not plan.passthrough
                      and self.split.rng.random() * 100 < route.mirror and self.rt.mirror.admit(route))
            self._executions.append(Execution(route, target, time.perf_counter(), plan, sql, mirror,
                                              replay=self.force_target is not None))
        return target

    def _attach_values(self, execution: Execution, payload: bytes, param_oids: tuple[int, ...]) -> None:
        """A mirrored execution needs its Bind values (only then is the whole Bind decoded)."""
        bind = msg.parse_bind(payload)
        execution.params, execution.param_formats = bind.params, bind.param_formats
        execution.param_oids = param_oids
        execution.awaiting_bind = False

    def _lookup(self, sql: str) -> Plan | None:
        """The plan if it is known without planning (rewrite/router.py); None: plan it off the loop first."""
        planned, self._planned = self._planned, None
        if planned is not None and planned[0] == sql and planned[1] == self.search_path:
            return planned[2]
        return self.router.lookup(sql, self.search_path)

    def _plan_first(self, sql: str, original: bytes, kind: int) -> Deferred:
        """Hold this client's messages while the planner thread plans `sql`, then route `original` again."""
        search_path = self.search_path

        async def planned() -> Outgoing:
            try:
                plan = await self.router.plan_async(sql, search_path)
            except RuntimeError:  # the planner is shut down (the proxy is stopping): plan here
                plan = self.router.plan(sql, search_path)
            self._planned = (sql, search_path, plan)
            return _PLANNED

        return Deferred(planned(), original, kind, replay=True)

    def _keep(self, name: str, statement: RoutedStatement) -> None:
        limit = self.rt.config.proxy.max_prepared_statements
        size = plan_bytes(statement.sql, statement.plan)
        if len(self.statements) >= limit or self._statement_bytes + size > MAX_STATEMENT_BYTES:
            raise SessionLimit(f"too many prepared statements in this session (max_prepared_statements = {limit}, "
                               f"{MAX_STATEMENT_BYTES >> 20} MB of routed statements); close the ones no longer "
                               "used")
        if not self.router.hold(statement.plan, statement.sql):
            raise SessionLimit("the prepared statements of all sessions hold plan_cache_bytes of plans; close "
                               "the ones no longer used")
        self.statements[name] = statement
        self._statement_bytes += size

    def _forget(self, name: str) -> RoutedStatement | None:
        statement = self.statements.pop(name, None)
        if statement is not None:
            self._statement_bytes -= plan_bytes(statement.sql, statement.plan)
            self.router.release(statement.plan)
        return statement

    def release(self) -> None:
        """The session ended: its statements no longer hold their plans."""
        for name in list(self.statements):
            self._forget(name)

    def _guard(self, plan: Plan, target: str, cycle_start: bool) -> str | None:
        """A cycle sent to the shadow outside a transaction may fail over to the primary (proxy/failover.py):
        the route table to guard it for (Outgoing.guard), else None."""
        if (target == Target.SHADOW and cycle_start and self.session.tx_status == codes.TX_IDLE
                and not self.split.explicit):
            assert plan.route is not None
            return plan.route.table
        return None

    # -- messages ---------------------------------------------------------------------------------------------
    def on_query(self, payload: bytes) -> Outgoing | Deferred:
        """A simple Query is one implicit transaction unless it opens an explicit one; its transaction-control
        statements take effect in order around its (single) routing decision."""
        sql = msg.parse_query(payload)
        plan = self._lookup(sql)
        if plan is None:  # planned off the loop, then this message is routed again: effects apply then, once
            return self._plan_first(sql, msg.message(b"Q", payload), codes.F_QUERY)
        if drops_statements(sql):
            self.statements_dropped()
        effects = query_effects(sql)
        split = self.split
        split.implicit()
        lead = 0
        while lead < len(effects) and effects[lead]:  # BEGIN; SELECT ...: the SELECT is in the transaction
            split.effect(effects[lead])
            lead += 1
        try:
            return self._route_query(payload, sql, plan)
        finally:
            for effect in effects[lead:]:
                if effect:
                    split.effect(effect)
            split.sync()

    def _route_query(self, payload: bytes, sql: str, plan: Plan) -> Outgoing | Deferred:
        cycle_start = self.session.replies_idle
        if plan.passthrough and not self._unplanned(plan):
            return _QUERY_AS_IS
        target = self._target(plan, sql)
        decision = self._decide(plan, target)
        if isinstance(decision, Refuse):
            return self.refuse_query(plan, sql, decision)
        if isinstance(decision, Merge):
            merged = self.merged
            assert merged is not None
            return Deferred(self._merge(plan, sql, lambda: merged.query(plan, sql),
                                        lambda refusal: self.refuse_query(plan, sql, refusal)),
                            msg.message(b"Q", payload), codes.F_QUERY)
        guard = self._guard(plan, target, cycle_start)
        rewritten = decision.sql if isinstance(decision, Rewrite) else None
        if rewritten is None:
            return _QUERY_AS_IS if guard is None else Outgoing(None, _OWES_QUERY, guard=guard)
        return Outgoing(msg.query(rewritten), _OWES_QUERY, guard=guard)

    def on_parse(self, payload: bytes) -> Outgoing | Deferred:
        parse = msg.parse_parse(payload)
        plan = self._lookup(parse.sql)
        if plan is None:
            return self._plan_first(parse.sql, msg.message(b"P", payload), codes.F_PARSE)
        if parse.name and not plan.passthrough:
            self._forget(parse.name)  # re-used name: its old plan goes (as below), then the limit is checked
            self._keep(parse.name, RoutedStatement(plan, parse.sql, parse.param_oids, ""))  # target set below
        cycle_start = self.session.replies_idle
        out = b""
        owed: list[tuple[int, int]] = []
        if self.force_target and parse.name:
            # a replay: the failed cycle may have prepared this name on the shadow before failing later
            out = msg.close("S", parse.name)
            owed.append((CLOSE, DROP))
        owed.append((PARSE, FORWARD))
        if drops_statements(parse.sql):
            self.statements_dropped()
        if plan.passthrough or not parse.name:
            self._forget(parse.name)  # a re-used unnamed (or closed-then-reused) name starts afresh
        effect = statement_effect(parse.sql)
        if parse.name:
            if effect:  # it takes effect at each of its Binds
                self._tx_statements[parse.name] = effect
                self.holds_statement_messages = True
            elif self._tx_statements:
                self._tx_statements.pop(parse.name, None)
        elif effect:  # the unnamed statement runs at the Bind/Execute that come with it
            self.split.effect(effect)
        if not parse.name:
            self.unnamed = None
        if plan.passthrough:
            if self._unplanned(plan):  # forwarded as is, and refused at its Binds (primary-only answers)
                self._target(plan, parse.sql, execution=not parse.name)
                statement = RoutedStatement(plan, parse.sql, parse.param_oids, Target.PRIMARY)
                if parse.name:
                    self._keep(parse.name, statement)
                else:
                    self.unnamed = statement
                self.holds_statement_messages = True
            return Outgoing(out + msg.message(b"P", payload) if out else None, tuple(owed))
        target = self._target(plan, parse.sql, execution=not parse.name)
        guard = self._guard(plan, target, cycle_start)
        if parse.name:
            self.statements[parse.name].prepared_for = target
            self.holds_statement_messages = True
        elif isinstance(self._decide(plan, target), Merge):
            self.unnamed = RoutedStatement(plan, parse.sql, parse.param_oids, target)  # merged at its Bind
            self.holds_statement_messages = True
        elif self._executions[-1].mirror:
            self._executions[-1].awaiting_bind = True  # its values come with the Bind of the unnamed statement
            self._executions[-1].param_oids = parse.param_oids
            self.holds_statement_messages = True
        sql = plan.sql_for(target)
        if sql is None:
            return Outgoing(out + msg.message(b"P", payload) if out else None, tuple(owed), guard=guard)
        return Outgoing(out + msg.parse_message(parse.name, sql, parse.param_oids), tuple(owed), guard=guard)

    def on_bind(self, payload: bytes) -> Outgoing | Deferred:
        session = self.session
        portal, pos = msg.read_cstr(payload, 0)
        name, rest = msg.read_cstr(payload, pos)
        if name and name in self._tx_statements:
            self.split.effect(self._tx_statements[name])
            return _BIND_AS_IS
        statement = self.statements.get(name) if name else self.unnamed
        if statement is None:
            if not name and self._executions and self._executions[-1].awaiting_bind:
                execution = self._executions[-1]
                self._attach_values(execution, payload, execution.param_oids)
            return _BIND_AS_IS
        cycle_start = session.replies_idle
        if not name:  # the unnamed statement was rolled at its Parse: that decision holds for this Bind
            target = statement.prepared_for
        else:
            target = self._target(statement.plan, statement.sql)
            if self._executions[-1].mirror:
                self._attach_values(self._executions[-1], payload, statement.param_oids)
        decision = self._decide(statement.plan, target)
        if isinstance(decision, Refuse):
            return self.refuse_bind(statement, payload, decision)
        if isinstance(decision, Merge):
            merged = self.merged
            assert merged is not None
            return Deferred(self._merge(statement.plan, statement.sql, lambda: merged.bind(statement, payload),
                                        lambda refusal: self.refuse_bind(statement, payload, refusal)),
                            msg.message(b"B", payload), codes.F_BIND)
        guard = self._guard(statement.plan, target, cycle_start)
        if target == statement.prepared_for:
            return _BIND_AS_IS if guard is None else Outgoing(None, _OWES_BIND, guard=guard)
        out = b""
        owed: list[tuple[int, int]] = []
        other = statement.others.get(target)
        if other is None or target in statement.uncertain:
            other = other or f"pgcutover_{next(_names)}"
            if target in statement.uncertain:
                out += msg.close("S", other)  # closing a statement that does not exist is not an error
                owed.append((CLOSE, DROP))
                statement.uncertain.discard(target)
            out += msg.parse_message(other, statement.sql_for(target), statement.param_oids)
            owed.append((PARSE, DROP))
            statement.others[target] = other
            self._injected.append((statement, target))
            if session.replies_skipping:  # an error already came back: the server discards this Parse until the Sync
                statement.uncertain.add(target)
        owed.append((BIND, FORWARD))
        return Outgoing(out + msg.message(b"B", msg.cstr(portal) + msg.cstr(other) + payload[rest:]), tuple(owed),
                        guard=guard)

    def on_close(self, payload: bytes) -> Outgoing:
        if payload[:1] != b"S":
            return _CLOSE_AS_IS
        name, _ = msg.read_cstr(payload, 1)
        self._tx_statements.pop(name, None)
        statement = self._forget(name)
        if statement is None or not statement.others:
            return _CLOSE_AS_IS
        out = msg.message(b"C", payload)
        owed = [(CLOSE, FORWARD)]
        for other in statement.others.values():
            out += msg.close("S", other)
            owed.append((CLOSE, DROP))
        return Outgoing(out, tuple(owed))

    # -- merged executions and their refusals ------------------------------------------------------------------
    def _unplanned(self, plan: Plan) -> bool:
        """A similarity query on a route with a fallback store that the router could not plan (the router names
        the route on such passthrough plans): the primary alone would leave the legacy rows out."""
        return self._has_store(plan)

    def _decide(self, plan: Plan, target: str) -> Decision:
        """The decision for one execution rolled for `target`, with the route as in force now."""
        return decide(plan, target, self._live_route(plan), store=self._has_store(plan))

    def _has_store(self, plan: Plan) -> bool:
        return (self.merged is not None and plan.route is not None and self.rt.fallback is not None
                and self.rt.fallback.store_for(plan.route.table) is not None)

    def decision(self, plan: Plan, unmergeable: str | None = None) -> Decision:
        """The decision for the primary of a fallback route, with the route as in force now."""
        return decide(plan, Target.PRIMARY, self._live_route(plan), store=True, unmergeable=unmergeable)

    async def _merge(self, plan: Plan, sql: str, run: Callable[[], Awaitable[Outgoing]],
                     refuse: Callable[[Refuse], Outgoing]) -> Outgoing:
        """Apply a Merge decision (rewrite/decision.py, as `explain` prints it). What only execution can tell
        (the store still loading, the shape's verdict, an unreadable vector in proxy/merged.py) may turn it into
        a Refuse: `decide()` is asked again with that reason and its answer applied. The execution is labelled
        once, with the decision applied."""
        decision = await self._merge_decision(plan, sql)
        if isinstance(decision, Merge):
            try:
                out = await run()
            except Unanswerable as exc:
                decision = self.decision(plan, str(exc))
            except Exception:
                log.exception("%s: merged execution failed", plan.route.table if plan.route else "?")
                decision = self.decision(plan, "internal-error")
            else:
                if self.session.replies_skipping and self.merged is not None:
                    # an error came back while the merge was computed: the server discards the statement of
                    # ours this Bind prepares (until the client's Sync), so it must be prepared again next time
                    self.merged.on_error()
                self._label(plan, decision)
                return out
        assert isinstance(decision, Refuse)
        return refuse(decision)

    async def _merge_decision(self, plan: Plan, sql: str) -> Decision:
        """The decision once the route's store is loaded and the merge's verdict on the shape is known."""
        waited = await self._wait_for_store(plan)
        if waited == CANCELED_SQLSTATE:
            return cancelled(self._live_route(plan))
        unmergeable = f"store-not-ready: {waited}" if waited is not None else None
        if unmergeable is None:
            assert self.rt.fallback is not None
            try:
                await self.rt.fallback.merges.get(plan, sql)  # the shape's verdict, cached per SQL text
            except Unanswerable as exc:
                unmergeable = str(exc)
            except Exception:  # a bug must not turn into a quiet pgvector-rows-only answer
                log.exception("%s: merge planning failed", plan.route.table if plan.route else "?")
                unmergeable = "internal-error"
        return self.decision(plan, unmergeable)

    def _label(self, plan: Plan, decision: Decision) -> None:
        """The execution's metrics label: the target of the decision applied (set once)."""
        if self._executions and self._executions[-1].plan is plan and decision.target is not None:
            self._executions[-1].target = decision.target

    async def _wait_for_store(self, plan: Plan) -> str | None:
        """None once the route's store is loaded; else, after at most fallback_wait_ms, why it is not (or
        CANCELED_SQLSTATE when the client's CancelRequest came first)."""
        service = self.rt.fallback
        assert service is not None and plan.route is not None
        table = plan.route.table
        store = service.store_for(table)
        if store is None or store.loaded:
            return None
        route = self._live_route(plan)
        self._cancel = asyncio.Event()
        waits = [asyncio.ensure_future(store.wait_ready()), asyncio.ensure_future(self._cancel.wait())]
        try:
            await asyncio.wait(waits, timeout=route.fallback_wait_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            cancelled, self._cancel = self._cancel.is_set(), None
        if store.loaded:
            return None
        if cancelled:
            return CANCELED_SQLSTATE
        return service.failed.get(table) or f"still loading after {route.fallback_wait_ms} ms"

    def cancel_wait(self) -> bool:
        """A CancelRequest for this session: ends a wait for a store (the query then gets 57014)."""
        if self._cancel is None:
            return False
        self._cancel.set()
        return True

    def _refusal(self, plan: Plan, decision: Refuse) -> None:
        """Apply a refusal's side effects, once: its execution's label, the count (not for a cancel), the log."""
        self._label(plan, decision)
        if decision.sqlstate == CANCELED_SQLSTATE:
            return
        if self.rt.fallback is not None:
            self.rt.fallback.count_unmerged(decision.route, reason_code(decision.reason))
        log.info("%s", decision.describe())

    def refuse_query(self, plan: Plan, sql: str, decision: Refuse) -> Outgoing:
        """The replacement of a simple Query the merge cannot answer exactly (route's on_inexact applies)."""
        self._refusal(plan, decision)
        if decision.sqlstate is None:
            return Outgoing(msg.query(plan.sql_for(Target.PRIMARY) or sql), _OWES_QUERY, notice=_notice_text(decision))
        return Outgoing(msg.query(raise_sql(decision.sqlstate, decision.message, _hint(decision))), _OWES_QUERY)

    def refuse_bind(self, statement: RoutedStatement, payload: bytes, decision: Refuse) -> Outgoing:
        """The replacement of a Bind the merge cannot answer exactly. For "error", the Bind becomes our own
        statement that raises: the client sees the ErrorResponse where its BindComplete was due, and the server
        skips the client's Describe/Execute up to its Sync, as after any failed Bind."""
        self._refusal(statement.plan, decision)
        if decision.sqlstate is None:
            return Outgoing(msg.message(b"B", payload), _OWES_BIND, notice=_notice_text(decision))
        portal, _ = msg.read_cstr(payload, 0)
        out = (msg.close("S", _RAISE_NAME)  # closing a statement that does not exist is not an error
               + msg.parse_message(_RAISE_NAME, raise_sql(decision.sqlstate, decision.message, _hint(decision)))
               + msg.bind_message(msg.Bind(portal, _RAISE_NAME, (), (), ()))
               + msg.execute(portal))
        return Outgoing(out, ((CLOSE, DROP), (PARSE, DROP), (BIND, DROP), (EXECUTE, DROP)))

    def statements_dropped(self) -> None:
        """DEALLOCATE ALL / DISCARD ALL is on its way to the server: every statement of ours is prepared again
        (after a Close, in case the command failed) before its next use."""
        for statement in self.statements.values():
            statement.uncertain.update(statement.others)
        if self.unnamed is not None:
            self.unnamed.uncertain.update(self.unnamed.others)
        if self.merged is not None:
            self.merged.prepared.clear()

    # -- replies ----------------------------------------------------------------------------------------------
    def on_error(self, payload: bytes) -> None:
        """An error skips the rest of the pipeline: a Parse of ours in it may not exist."""
        self._failed = True
        if self.merged is not None:
            self.merged.on_error()
        if self._sqlstate is None and self._executions:
            self._sqlstate = msg.parse_error_fields(payload).get("C")
        for statement, target in self._injected:
            statement.uncertain.add(target)

    def on_sync(self) -> None:
        """The client's Sync (as it passes, before any reply): an implicit transaction ends there."""
        self.split.sync()

    def on_ready(self) -> None:
        if self.session.replies_idle:  # nothing else in flight: the server's status is the session's state
            self.split.ready(self.session.tx_status)
        prepared = bool(self._injected)
        self._injected.clear()
        if self.merged is not None:
            self.merged.on_ready()
        if self._executions or self._awaiting_primary is not None:
            self._finish_executions(prepared)
        self._failed = False
        self._sqlstate = None

    def _finish_executions(self, prepared: bool = False) -> None:
        now = time.perf_counter()
        rt, ok = self.rt, not self._failed
        breaker = rt.breaker
        # a latency is the execution's own only when it was alone in its cycle and nothing was prepared first
        clean = len(self._executions) == 1 and not prepared
        awaiting, self._awaiting_primary = self._awaiting_primary, None
        if awaiting is not None and breaker is not None:
            shadow, seconds, sqlstate = awaiting
            replayed = any(execution.replay for execution in self._executions)
            primary = ("" if ok else self._sqlstate or "unknown") if replayed else None  # "": it answered
            breaker.record(shadow.route.table, shadow.target, seconds, False, sqlstate, primary=primary, clean=False)
        for execution in self._executions:
            seconds = now - execution.started
            table = execution.route.table
            if rt.query_metrics is not None:
                rt.query_metrics.observe(table, execution.target, seconds, ok)
            if breaker is not None:
                if not ok and execution.target == Target.SHADOW and self.session.guarded_cycle:
                    # the failover re-runs it on the primary: whose fault it is shows there
                    self._awaiting_primary = (execution, seconds, self._sqlstate)
                else:
                    breaker.record(table, execution.target, seconds, ok, None if ok else self._sqlstate,
                                   clean=clean and not execution.replay)
            if execution.mirror and not execution.awaiting_bind:
                rt.mirror.submit(MirrorRequest(
                    route=execution.route, plan=execution.plan, sql=execution.sql, params=execution.params,
                    param_formats=execution.param_formats, param_oids=execution.param_oids,
                    client_target=execution.target, client_latency=seconds, client_ok=ok,
                    user=self.session.user, database=self.session.database,
                    search_path=self.session.server_params.get("search_path", "")))
        self._executions.clear()
