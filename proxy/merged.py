"""Merged queries: a similarity query on a route with legacy rows, answered exactly over the whole table.

For the primary target of such a route, the session hands the statement here instead of forwarding it:
1. the merge plan (fallback/merge.py) is built once per SQL text, in a worker thread (it parses SQL);
2. the query vector is read from the literal or the Bind parameter (text or binary pgvector format), and the
   numpy search (fallback/knn.py, batched across sessions, off the event loop) returns candidate keys;
3. what goes upstream is the merged query with those candidates: a simple Query with them as literals, or
   in the extended protocol a statement of ours (prepared once per session and SQL text, its ParseComplete
   swallowed) bound with the client's own values plus two more (candidate keys, distance bound).
It runs on the client's own connection, so privileges and row-level security apply to legacy rows exactly as
to migrated ones. When the vector cannot be known before execution (a subquery, an unreadable value) or the
shape is not one the merge answers exactly, the statement goes to the primary as planned: pgvector rows only,
counted by reason and logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from pgvector import Vector

from fallback.merge import MergePlan, build_merge, guard_bound
from rewrite.analyze import Passthrough
from rewrite.cache import ByteLRU

from .protocol import messages as msg
from .protocol.replies import BIND, CLOSE, DROP, PARSE, QUERY

if TYPE_CHECKING:
    from rewrite.plan import Plan

    from .legacy import FallbackService
    from .session import Session
    from .statements import RoutedStatement

log = logging.getLogger("pgcutover.merged")

MAX_CANDIDATES = 10_000  # a search capped here stays exact: the merged query's guard covers the rest
MAX_STATEMENTS = 64  # merged statements kept prepared per session (least recently used are closed)
_names = itertools.count(1)


class Unanswerable(Exception):
    """This execution cannot be merged: the reason is counted and the primary's own query runs."""


class MergeCache:
    """Merge plans by (route table, SQL text), shared by all sessions, bounded."""

    def __init__(self, service: FallbackService, size: int = 1024) -> None:
        self.service = service
        self.size = size
        # bounded in bytes as well (rewrite/cache.py): a merge plan holds its SQL texts, vector literal included
        self._plans: ByteLRU[tuple[str, str], MergePlan | str] = ByteLRU(
            size, service.rt.config.proxy.plan_cache_bytes)
        self.unmerged: Counter[str] = Counter()  # reason -> executions answered from pgvector rows only

    async def get(self, plan: Plan, sql: str) -> MergePlan:
        assert plan.route is not None and plan.query is not None
        key = (plan.route.table, sql)
        found = self._plans.get(key)
        if found is None:
            catalog = self.service.rt.router.catalog if self.service.rt.router is not None else None
            try:
                found = await asyncio.to_thread(build_merge, plan.query, catalog,
                                                server_decoder=self.service.server_decoder)
            except Passthrough as exc:
                found = exc.reason
            self._plans.put(key, found, _merge_bytes(sql, found))
        if isinstance(found, str):
            raise Unanswerable(found)
        return found


def _merge_bytes(sql: str, found: MergePlan | str) -> int:
    """Estimated memory of a merge-cache entry: the key text, and the merged SQL in its three forms."""
    if isinstance(found, str):
        return 2 * len(sql) + 200
    return 4_000 + 2 * len(sql) + len(found.sql_with_param) + sum(map(len, found.parts)) \
        + len(found.vector_literal or "")


def read_vector(value: bytes | None, binary: bool) -> np.ndarray:
    if value is None:
        raise Unanswerable("vector-null")
    try:
        vector = Vector.from_binary(value) if binary else Vector.from_text(value.decode())
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise Unanswerable("vector-unreadable") from exc
    return vector.to_numpy()


def read_int(value: bytes | None, binary: bool) -> int | None:
    if value is None:
        return None
    try:
        return int.from_bytes(value, "big", signed=True) if binary else int(value.decode())
    except ValueError as exc:
        raise Unanswerable("limit-unreadable") from exc


def keys_text(plan: MergePlan, keys: list) -> bytes:
    """The candidate keys as a text-format array parameter."""
    if plan.key_type in ("bigint", "integer", "smallint", "int8", "int4", "int2"):
        return ("{" + ",".join(str(int(k)) for k in keys) + "}").encode()
    quoted = ('"' + str(k).replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys)
    return ("{" + ",".join(quoted) + "}").encode()


def bound_text(bound: float | None) -> bytes | None:
    if bound is None:
        return None
    if bound == float("inf"):
        return b"Infinity"
    return repr(float(bound)).encode()


class MergedQueries:
    """One session's merged executions."""

    def __init__(self, session: Session, service: FallbackService) -> None:
        self.session = session
        self.service = service
        self.prepared: OrderedDict[tuple[str, tuple[int, ...]], str] = OrderedDict()  # (sql, oids) -> our name
        self._injected: list[tuple[str, tuple[int, ...]]] = []  # our Parses since the last ReadyForQuery

    def wants(self, plan: Plan, target: str) -> bool:
        return target == "primary" and plan.route is not None and self.service.store_for(plan.route.table) is not None

    async def _candidates(self, merge: MergePlan, vector: np.ndarray, limit: int | None,
                          offset: int | None) -> tuple[list, float | None]:
        store = self.service.store_for(merge.route.table)
        assert store is not None
        await store.wait_ready()
        asked = merge.search_k(limit, offset)
        if asked is None:
            return [], None  # no LIMIT: every row is wanted, the guard reads every legacy row
        asked = min(asked, MAX_CANDIDATES)
        if vector.shape[0] != merge.dims:
            raise Unanswerable("vector-dims")
        result = await self.service.searcher.search(store, vector, asked, merge.metric)
        keys, bound = merge.extra_params(list(result.keys), guard_bound(result.distances, asked))
        return keys, bound

    # -- simple Query -------------------------------------------------------------------------------------------
    async def query(self, plan: Plan, sql: str) -> bytes:
        """The replacement of a Query message (its reply cycle is queued just before it is returned)."""
        try:
            merge = await self.service.merges.get(plan, sql)
            if merge.vector_literal is None:
                raise Unanswerable("vector-not-literal")
            vector = read_vector(merge.vector_literal.strip("'").encode(), binary=False)
            keys, bound = await self._candidates(merge, vector, merge.limit_value, merge.offset_value)
            out = msg.query(merge.sql_with_literal(keys, bound))
        except Unanswerable as exc:
            self._unmerged(plan, str(exc))
            out = msg.query(plan.sql_for("primary") or sql)
        self.session.tracker.expect(QUERY)
        return out

    # -- extended protocol ----------------------------------------------------------------------------------------
    async def bind(self, statement: RoutedStatement, payload: bytes) -> bytes:
        """The replacement of a Bind of `statement` (prepared under the client's name for the primary)."""
        tracker = self.session.tracker
        bind = msg.parse_bind(payload)
        try:
            merge = await self.service.merges.get(statement.plan, statement.sql)
            if merge.vector_param_index is None:
                raise Unanswerable("vector-not-parameter")
            vector = self._param_vector(bind, merge.vector_param_index)
            limit = self._param_int(bind, merge.limit_param, merge.limit_value)
            offset = self._param_int(bind, merge.offset_param, merge.offset_value)
            keys, bound = await self._candidates(merge, vector, limit, offset)
        except Unanswerable as exc:
            self._unmerged(statement.plan, str(exc))
            tracker.expect(BIND)
            return msg.message(b"B", payload)
        out, name = self._prepare(merge, statement.param_oids)
        nparams = len(bind.params)
        formats = bind.param_formats
        if len(formats) == 1:
            formats = formats * nparams
        if formats:
            formats = (*formats, 0, 0)  # our two values are text
        merged_bind = msg.Bind(bind.portal, name, formats,
                               (*bind.params, keys_text(merge, keys), bound_text(bound)), bind.result_formats)
        tracker.expect(BIND)
        return out + msg.bind_message(merged_bind)

    def _prepare(self, merge: MergePlan, oids: tuple[int, ...]) -> tuple[bytes, str]:
        """Our statement for this merge (and the client's declared types), prepared once per session."""
        tracker = self.session.tracker
        first = max(len(oids), merge.param_count) + 1
        sql = merge.sql_with_param if first == merge.param_count + 1 else merge.sql_with_params_from(first)
        key = (sql, oids)
        name = self.prepared.get(key)
        if name is not None:
            self.prepared.move_to_end(key)
            return b"", name
        out = b""
        if len(self.prepared) >= MAX_STATEMENTS:
            _, old = self.prepared.popitem(last=False)
            out += msg.close("S", old)
            tracker.expect(CLOSE, DROP)
        name = f"pgcutover_merged_{next(_names)}"
        declared = (*oids, *([0] * (first - 1 - len(oids))), 0, 0)
        out += msg.parse_message(name, sql, declared)
        tracker.expect(PARSE, DROP)
        self.prepared[key] = name
        self._injected.append(key)
        return out, name

    def on_error(self) -> None:
        """An error may have skipped our Parses since the last ReadyForQuery: prepare afresh next time."""
        for key in self._injected:
            self.prepared.pop(key, None)
        self._injected.clear()

    def on_ready(self) -> None:
        self._injected.clear()

    @staticmethod
    def _param_vector(bind: msg.Bind, index: int) -> np.ndarray:
        if index > len(bind.params):
            raise Unanswerable("vector-parameter-missing")
        return read_vector(bind.params[index - 1], bind.param_format(index - 1) == 1)

    @staticmethod
    def _param_int(bind: msg.Bind, index: int | None, value: int | None) -> int | None:
        if index is None:
            return value
        if index > len(bind.params):
            raise Unanswerable("limit-parameter-missing")
        return read_int(bind.params[index - 1], bind.param_format(index - 1) == 1)

    def _unmerged(self, plan: Plan, reason: str) -> None:
        self.service.merges.unmerged[reason] += 1
        log.info("%s: answered from pgvector rows only (%s)", plan.route.table if plan.route else "?", reason)
