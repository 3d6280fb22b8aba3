"""Merged queries: a similarity query on a route with legacy rows, answered exactly over the whole table.

For the primary target of such a route, the session hands the statement here instead of forwarding it:
1. the merge plan (fallback/merge.py) is built once per SQL text, in a worker thread (it parses SQL);
2. the query vector is read from the literal or the Bind parameter (text or binary pgvector format), or, for
   `(SELECT embedding FROM <route table> WHERE key = X)`, from the store's copy of row X (its pgvector value
   when it is migrated); the numpy search (fallback/knn.py, batched across sessions, off the event loop; the
   exact scan of fallback/scan.py for l1 and farthest-first) returns candidate keys and a bound. For the
   universal merge (shapes without a top-k bound) the scan ships every legacy row's distance instead;
3. what goes upstream is the merged query with those values as parameters (candidate keys, distance bound,
   and the searched vector for a row subquery; or keys, distances and row versions), never as literals: for a
   simple Query, an unnamed extended-protocol statement of ours (Parse, Bind, Describe, Execute, Sync, whose
   ParseComplete and BindComplete are swallowed, so the client sees exactly a Query's replies), so that a
   row-level-security tenant's `current_query()` and pg_stat_activity never show other tenants' keys; in the
   extended protocol a statement of ours (prepared once per session and SQL text, its ParseComplete swallowed)
   bound with the client's own values plus ours.
It runs on the client's own connection, so privileges and row-level security apply to legacy rows exactly as
to migrated ones. What cannot be merged exactly (the reason: fallback/merge.py's Passthrough at build time,
`Unanswerable` raised here at execution) becomes the routing's Refuse decision (`on_inexact`: an error or a
notice), never a silent answer from pgvector rows only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from pgcutover.core.lru import ByteLRU
from pgcutover.core.quoting import quote_ident, quote_table
from pgcutover.fallback.merge import KNN_METRICS, MergePlan, build_merge, guard_bound
from pgcutover.fallback.scan import candidates as scan_candidates
from pgcutover.fallback.scan import scan
from pgcutover.rewrite.analyze import Passthrough

from .deferred import Outgoing
from .protocol import messages as msg
from .protocol.replies import BIND, CLOSE, DESCRIBE_PORTAL, DROP, EXECUTE, FORWARD, PARSE, SYNC
from .vectors import Vector

if TYPE_CHECKING:
    from pgcutover.rewrite.plan import Plan

    from .legacy import FallbackService
    from .statements import RoutedStatement

log = logging.getLogger("pgcutover.merged")

_INT_TYPES = frozenset({"bigint", "integer", "smallint", "int8", "int4", "int2"})
ROW_READS = 4  # concurrent reads of a migrated query row's vector on connections of the proxy's own
MAX_CANDIDATES = 10_000  # a search capped here stays exact: the merged query's guard covers the rest
MAX_STATEMENTS = 64  # merged statements kept prepared per session (least recently used are closed)
_names = itertools.count(1)
# a simple Query answered by a statement of ours: ParseComplete and BindComplete dropped, the rest a Query's
_OWES_AS_QUERY = ((PARSE, DROP), (BIND, DROP), (DESCRIBE_PORTAL, FORWARD), (EXECUTE, FORWARD), (SYNC, FORWARD))


class Unanswerable(Exception):
    """This execution cannot be merged: the reason is counted and the primary's own query runs."""


def _needs_rows(store, path: str) -> None:
    """The exact scans (fallback/scan.py) read the stored rows themselves: an int8 store keeps only screening
    codes, so those shapes are refused there (loudly, on_inexact) rather than ranked from codes."""
    if store.dtype == np.int8:
        raise Unanswerable(f'fallback-storage-int8: {path} need fallback_storage = "float32" or "float16"')


class MergeCache:
    """Merge plans by (route table, SQL text), shared by all sessions, bounded."""

    def __init__(self, service: FallbackService, size: int = 1024) -> None:
        self.service = service
        self.size = size
        # bounded in bytes as well (core/lru.py): a merge plan holds its SQL texts, vector literal included
        self._plans: ByteLRU[tuple[str, str], MergePlan | str] = ByteLRU(
            size, service.rt.config.proxy.plan_cache_bytes)
        self.row_reads = asyncio.Semaphore(ROW_READS)  # the proxy's own connections reading a query row

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


def _shipped_arrays(merge: MergePlan, store, keys: np.ndarray, distances: np.ndarray) -> tuple[bytes, ...]:
    """Text-format arrays of keys, distances (NaN/Infinity spelled as float8in reads them) and xmins (-1: unknown,
    the server then computes that row's distance itself)."""
    values = distances * merge.value_sign
    text = ",".join("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else repr(v)
                    for v in values.tolist())
    xmins = []
    for key in keys.tolist():
        xmin = store.xmin(key)
        xmins.append(str(xmin) if xmin else "-1")
    return keys_text(merge, list(keys)), ("{" + text + "}").encode(), ("{" + ",".join(xmins) + "}").encode()


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

    def __init__(self, service: FallbackService) -> None:
        self.service = service
        self.prepared: OrderedDict[tuple[str, tuple[int, ...]], str] = OrderedDict()  # (sql, oids) -> our name
        self._injected: list[tuple[str, tuple[int, ...]]] = []  # our Parses since the last ReadyForQuery

    async def _candidates(self, merge: MergePlan, vector: np.ndarray, limit: int | None,
                          offset: int | None) -> tuple[list, float | None]:
        store = self.service.store_for(merge.route.table)
        assert store is not None
        await store.wait_ready()
        asked = merge.search_k(limit, offset)
        if asked is None:
            return [], None  # no LIMIT: every row is wanted, the guard reads every legacy row
        if vector.shape[0] != merge.dims:
            raise Unanswerable("vector-dims")
        if merge.metric in KNN_METRICS and not merge.farthest:
            asked = min(asked, MAX_CANDIDATES)
            result = await self.service.searcher.search(store, vector, asked, merge.metric)
            return merge.extra_params(list(result.keys), guard_bound(result.distances, asked))
        _needs_rows(store, "l1 and farthest-first searches")
        found, bound = await asyncio.to_thread(scan_candidates, store.snapshot(), vector, asked, merge.metric,
                                               farthest=merge.farthest, cap=MAX_CANDIDATES)
        return merge.extra_params(list(found), bound)

    @staticmethod
    def _literal_vector(merge: MergePlan) -> np.ndarray:
        assert merge.vector_literal is not None
        return read_vector(merge.vector_literal.encode(), binary=False)

    async def _extras(self, merge: MergePlan, bind: msg.Bind | None) -> tuple[bytes | None, ...]:
        """The values of the merged query's extra parameters for one execution (`bind` None: a simple Query)."""
        if merge.vector_from_row:
            vector = await self._row_vector(merge, bind)
        elif merge.vector_param_index is not None:
            if bind is None:
                raise Unanswerable("vector-not-literal")
            vector = self._param_vector(bind, merge.vector_param_index)
        else:  # a literal vector, in a simple Query or a prepared statement
            vector = self._literal_vector(merge)
        if merge.universal:
            if merge.vector_from_row:  # distances to the row the proxy read; the server checks it is the same
                shipped = await self._shipped(merge, vector) if vector is not None else (b"{}", b"{}", b"{}")
                return (*shipped, None if vector is None else Vector(vector).to_text().encode())
            for param, literal in merge.other_vectors:  # one shipped array serves one query vector
                other = self._param_vector(bind, param) if param is not None and bind is not None else \
                    read_vector(literal.encode(), binary=False) if literal is not None else None
                if other is None or not np.array_equal(other, vector):
                    raise Unanswerable("universal-distances")
            return await self._shipped(merge, vector)
        if bind is None:
            limit, offset = merge.limit_value, merge.offset_value
        else:
            limit = self._param_int(bind, merge.limit_param, merge.limit_value)
            offset = self._param_int(bind, merge.offset_param, merge.offset_value)
        keys, bound = await self._candidates(merge, vector, limit, offset) if vector is not None else ([], None)
        extras: tuple[bytes | None, ...] = (keys_text(merge, keys), bound_text(bound))
        if merge.vector_from_row:
            extras += (None if vector is None else Vector(vector).to_text().encode(),)
        return extras

    async def _shipped(self, merge: MergePlan, vector: np.ndarray | None) -> tuple[bytes | None, ...]:
        """The universal merge's three arrays: every legacy row's key, distance (in the SQL value's units) and
        row version, bounded by the route's `max_shipped_rows`."""
        store = self.service.store_for(merge.route.table)
        assert store is not None and vector is not None
        await store.wait_ready()
        if vector.shape[0] != merge.dims:
            raise Unanswerable("vector-dims")
        _needs_rows(store, "shipping every legacy distance")
        snap = store.snapshot()
        limit = merge.route.max_shipped_rows
        if snap.rows > limit:
            raise Unanswerable(f"too-many-legacy-rows: {snap.rows} legacy rows, max_shipped_rows = {limit}")
        result = await asyncio.to_thread(scan, snap, vector, merge.metric)
        return await asyncio.to_thread(_shipped_arrays, merge, store, result.keys, result.distances)

    async def _row_vector(self, merge: MergePlan, bind: msg.Bind | None) -> np.ndarray | None:
        """The vector of the row the client's `(SELECT embedding FROM t WHERE key = X)` names, to search with:
        the store's copy of a legacy row, else the row's pgvector value. Read by the proxy only to pick
        candidates: the merged query trusts them only when the server's own value of the row (under the
        client's privileges) is the same vector, and reads every legacy row otherwise. None: unknown."""
        if merge.vector_key_param is not None:
            if bind is None or merge.vector_key_param > len(bind.params):
                raise Unanswerable("vector-key-missing")
            raw = bind.params[merge.vector_key_param - 1]
            if raw is None:
                return None
            if bind.param_format(merge.vector_key_param - 1) == 1:
                if merge.key_type not in _INT_TYPES:
                    return None  # a binary key of another type: no search, the guard reads every legacy row
                text = str(int.from_bytes(raw, "big", signed=True))
            else:
                text = raw.decode(errors="replace")
        else:
            text = merge.vector_key_literal or ""
        key: object = text
        if merge.key_type in _INT_TYPES:
            try:
                key = int(text)
            except ValueError:
                return None
        store = self.service.store_for(merge.route.table)
        # an int8 store keeps screening codes, not vectors: read the row from the table as for a migrated row
        found = store.get(key) if store is not None and store.dtype != np.int8 else None
        if found is not None:
            return found
        route = merge.route
        async with self.service.merges.row_reads:
            try:
                conn = await self.service._connect()
            except Exception:  # an unknown vector only costs speed: the guard then reads every legacy row
                return None
            try:
                value = await conn.fetchval(
                    f"SELECT {quote_ident(route.pg_vector_column)}::text FROM {quote_table(route.table)} "
                    f"WHERE {quote_ident(route.key)} = $1::text::{merge.key_type}", text)
            except Exception:  # as above
                return None
            finally:
                await conn.close()
        return None if value is None else Vector.from_text(value).to_numpy()

    # -- simple Query -------------------------------------------------------------------------------------------
    async def query(self, plan: Plan, sql: str) -> Outgoing:
        """The replacement of a Query message and the replies it owes. Raises Unanswerable when this execution
        cannot be merged exactly."""
        merge = await self.service.merges.get(plan, sql)
        extras = await self._extras(merge, None)
        return self._as_query(merge, extras)

    def _as_query(self, merge: MergePlan, extras: tuple[bytes | None, ...]) -> Outgoing:
        """The merged query in place of a simple Query, its candidates and bound bound as parameters: an unnamed
        statement and portal of ours (a Query would have replaced the unnamed statement too). The client sees a
        Query's replies: ParseComplete and BindComplete are dropped; RowDescription (from the Describe),
        DataRows, CommandComplete, ErrorResponse and ReadyForQuery are forwarded."""
        out = (msg.parse_message("", merge.sql_with_param, (0,) * (merge.param_count + merge.extra_count))
               + msg.bind_message(msg.Bind("", "", (), extras, ()))
               + msg.describe("P", "") + msg.execute("", 0) + msg.message(b"S"))
        return Outgoing(out, _OWES_AS_QUERY)

    # -- extended protocol ----------------------------------------------------------------------------------------
    async def bind(self, statement: RoutedStatement, payload: bytes) -> Outgoing:
        """The replacement of a Bind of `statement` (prepared under the client's name for the primary) and the
        replies it owes. Raises Unanswerable when this execution cannot be merged exactly."""
        bind = msg.parse_bind(payload)
        merge = await self.service.merges.get(statement.plan, statement.sql)
        extras = await self._extras(merge, bind)
        out, name, owed = self._prepare(merge, statement.param_oids)
        nparams = len(bind.params)
        formats = bind.param_formats
        if len(formats) == 1:
            formats = formats * nparams
        if formats:
            formats = (*formats, *(0,) * len(extras))  # our values are text
        merged_bind = msg.Bind(bind.portal, name, formats, (*bind.params, *extras), bind.result_formats)
        return Outgoing(out + msg.bind_message(merged_bind), (*owed, (BIND, FORWARD)))

    def _prepare(self, merge: MergePlan, oids: tuple[int, ...]) -> tuple[bytes, str, tuple[tuple[int, int], ...]]:
        """Our statement for this merge (and the client's declared types), prepared once per session: the
        messages that prepare it (if any), its name, and the replies they owe (dropped: ours)."""
        first = max(len(oids), merge.param_count) + 1
        sql = merge.sql_with_param if first == merge.param_count + 1 else merge.sql_with_params_from(first)
        key = (sql, oids)
        name = self.prepared.get(key)
        if name is not None:
            self.prepared.move_to_end(key)
            return b"", name, ()
        out = b""
        owed: list[tuple[int, int]] = []
        if len(self.prepared) >= MAX_STATEMENTS:
            _, old = self.prepared.popitem(last=False)
            out += msg.close("S", old)
            owed.append((CLOSE, DROP))
        name = f"pgcutover_merged_{next(_names)}"
        declared = (*oids, *([0] * (first - 1 - len(oids))), *(0,) * merge.extra_count)
        out += msg.parse_message(name, sql, declared)
        owed.append((PARSE, DROP))
        self.prepared[key] = name
        self._injected.append(key)
        return out, name, tuple(owed)

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

