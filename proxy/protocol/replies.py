"""The queue of replies a session expects from the server, and what to do with each (forward or drop).

Every frontend message that the server answers is queued as it goes upstream; every backend message is
matched against the head of the queue. That is what lets the proxy inject messages of its own (a Parse of
a per-target statement, a Close) into a client's pipeline and swallow their replies without the client
ever seeing them, including when an error makes the server skip to the next Sync.

Rules mirrored from PostgreSQL's postgres.c:
- after an ErrorResponse in the extended protocol, the server discards every message until Sync;
- a simple Query (and a FunctionCall, and the startup) ends with ReadyForQuery whatever happens inside;
- during COPY FROM STDIN the server ignores Sync and Flush until CopyDone/CopyFail.

Entries are small ints (kind | action << 4) in a deque: this runs for every message of every session.
The session's hot loops use the tables CLIENT_KIND / COMPLETES with `queue` directly while `plain` holds
(no error skip or COPY in progress) and `special` is zero, and call the methods otherwise; both paths
keep the same state.
"""

from __future__ import annotations

from collections import deque

from . import codes

# What the client (or the proxy) sent, i.e. what reply it waits for.
PARSE, BIND, CLOSE, DESCRIBE_STATEMENT, DESCRIBE_PORTAL, EXECUTE, SYNC, QUERY, FUNCTION, STARTUP, COPY_END = range(11)
KIND_NAMES = ("PARSE", "BIND", "CLOSE", "DESCRIBE_STATEMENT", "DESCRIBE_PORTAL", "EXECUTE", "SYNC", "QUERY",
              "FUNCTION", "STARTUP", "COPY_END")
_ENDS_AT_READY = frozenset((SYNC, QUERY, FUNCTION, STARTUP))
_WHOLE_CYCLE = frozenset((QUERY, FUNCTION, STARTUP))  # errors inside do not make the server skip ahead

FORWARD = 0
DROP = 1
_KIND_MASK = 0xF


class ReplyTracker:
    """Matches server messages to the requests that caused them. Pure bookkeeping, no I/O."""

    __slots__ = ("_drop_syncs", "_queue", "_skipping", "plain", "special")

    def __init__(self) -> None:
        self._queue: deque[int] = deque()
        self.special = 0  # queued entries that are not FORWARD: zero means every reply goes straight through
        self._drop_syncs = False  # inside COPY FROM STDIN (extended): the server ignores Sync
        self._skipping = False  # after an error, before its Sync was sent: the server discards all but Sync
        self.plain = True  # neither of the two above: a client message's kind can simply be appended

    @property
    def queue(self) -> deque[int]:
        return self._queue

    def _set_flags(self, *, drop_syncs: bool | None = None, skipping: bool | None = None) -> None:
        if drop_syncs is not None:
            self._drop_syncs = drop_syncs
        if skipping is not None:
            self._skipping = skipping
        self.plain = not (self._drop_syncs or self._skipping)

    def __len__(self) -> int:
        return sum(1 for entry in self._queue if entry & _KIND_MASK != COPY_END)

    def kinds(self) -> list[str]:
        return [KIND_NAMES[entry & _KIND_MASK] + ("/drop" if entry >> 4 else "") for entry in self._queue]

    @property
    def skipping(self) -> bool:
        """An error came back and its Sync is not sent yet: the server discards what is sent meanwhile."""
        return self._skipping

    @property
    def idle(self) -> bool:
        """Nothing in flight: the server owes no reply."""
        return not self._queue

    # -- requests ---------------------------------------------------------------------------------------------
    def expect(self, kind: int, action: int = FORWARD) -> None:
        if self._skipping:
            if kind != SYNC:
                return
            self._set_flags(skipping=False)
        if kind == SYNC and self._drop_syncs:
            return
        if kind == COPY_END and self._drop_syncs:
            self._set_flags(drop_syncs=False)
        if action:
            self.special += 1
        self._queue.append(kind | action << 4)

    def record(self, replies: tuple[tuple[int, int], ...]) -> None:
        """Queue (kind, action) entries in order: the replies messages of the proxy's own owe."""
        for kind, action in replies:
            self.expect(kind, action)

    def expect_client(self, msg_type: int, first_byte: int = 0) -> None:
        """Queue what a frontend message of this type makes the server send (nothing for Flush/CopyData)."""
        kind = CLIENT_KIND[msg_type]
        if kind < 0:
            return
        if kind == DESCRIBE_STATEMENT and first_byte == 0x50:  # 'P': describe a portal
            kind = DESCRIBE_PORTAL
        self.expect(kind)

    # -- replies ----------------------------------------------------------------------------------------------
    def _pop(self) -> int:
        entry = self._queue.popleft()
        if entry >> 4:
            self.special -= 1
        queue = self._queue
        while queue and queue[0] == COPY_END:  # markers only matter while a copy is starting
            queue.popleft()
        return entry >> 4

    def _head(self) -> int:
        return self._queue[0] if self._queue else -1

    def on_server(self, msg_type: int) -> int:
        """The action for one backend message (FORWARD or DROP), advancing the queue."""
        head = self._head()
        if head < 0:
            return FORWARD  # asynchronous (notice, notification, parameter status) or after the fact
        kind = head & _KIND_MASK
        handler = _SERVER_HANDLERS.get(msg_type)
        if handler is None:  # part of the current reply (DataRow, CopyData, notices, ...)
            return head >> 4
        return handler(self, kind, head >> 4)

    # one handler per backend message type that completes or reshapes an entry
    def _complete_if(self, kind: int, action: int, *expected: int) -> int:
        if kind in expected:
            return self._pop()
        return action

    def _on_parse_complete(self, kind: int, action: int) -> int:
        return self._complete_if(kind, action, PARSE)

    def _on_bind_complete(self, kind: int, action: int) -> int:
        return self._complete_if(kind, action, BIND)

    def _on_close_complete(self, kind: int, action: int) -> int:
        return self._complete_if(kind, action, CLOSE)

    def _on_description(self, kind: int, action: int) -> int:
        # RowDescription / NoData finish a Describe; inside a Query or Execute they are part of the result
        return self._complete_if(kind, action, DESCRIBE_STATEMENT, DESCRIBE_PORTAL)

    def _on_command_complete(self, kind: int, action: int) -> int:
        return self._complete_if(kind, action, EXECUTE)

    def _on_copy_in(self, kind: int, action: int) -> int:
        if kind == EXECUTE:
            self._forget_syncs_during_copy()
        return action

    def _forget_syncs_during_copy(self) -> None:
        """Syncs the client sent between this Execute and its CopyDone/CopyFail are ignored by the server."""
        queue = self._queue  # edited in place: the session's hot loop holds a reference to it
        entries = list(queue)
        queue.clear()
        queue.append(entries[0])
        for index in range(1, len(entries)):
            entry = entries[index]
            if entry == COPY_END:
                queue.extend(entries[index:])
                return
            if entry & _KIND_MASK == SYNC:
                if entry >> 4:
                    self.special -= 1
                continue
            queue.append(entry)
        self._set_flags(drop_syncs=True)

    def _on_error(self, kind: int, action: int) -> int:
        if kind in _WHOLE_CYCLE or kind == SYNC:
            return action  # the cycle still ends with ReadyForQuery
        self._pop()
        self._skip_to_sync()
        # Forwarded even when the failed message was the proxy's own: the server now skips the client's
        # messages up to Sync, and the client must learn why.
        return FORWARD

    def _skip_to_sync(self) -> None:
        queue = self._queue
        while queue and queue[0] & _KIND_MASK != SYNC:
            entry = queue.popleft()
            if entry >> 4:
                self.special -= 1
        if not queue:
            # the Sync is not even here yet: whatever arrives before it is discarded by the server too
            self._set_flags(skipping=True)

    def _on_ready(self, kind: int, action: int) -> int:
        queue = self._queue
        while queue:
            entry = queue[0]
            if entry & _KIND_MASK in _ENDS_AT_READY:
                return self._pop()
            self._pop()  # an entry the server never answered: bookkeeping must not drift
        return FORWARD


# Frontend message type -> the entry it queues (-1: none). A list, because indexing is the cheapest lookup.
CLIENT_KIND = [-1] * 256
for _type, _kind in (
    (codes.F_PARSE, PARSE),
    (codes.F_BIND, BIND),
    (codes.F_CLOSE, CLOSE),
    (codes.F_DESCRIBE, DESCRIBE_STATEMENT),  # or DESCRIBE_PORTAL, by its first payload byte
    (codes.F_EXECUTE, EXECUTE),
    (codes.F_SYNC, SYNC),
    (codes.F_QUERY, QUERY),
    (codes.F_FUNCTION_CALL, FUNCTION),
    (codes.F_COPY_DONE, COPY_END),
    (codes.F_COPY_FAIL, COPY_END),
):
    CLIENT_KIND[_type] = _kind

# Backend message type -> the (FORWARD) entries it completes; empty: it completes nothing by itself.
COMPLETES: list[frozenset[int]] = [frozenset()] * 256
COMPLETES[codes.B_PARSE_COMPLETE] = frozenset((PARSE,))
COMPLETES[codes.B_BIND_COMPLETE] = frozenset((BIND,))
COMPLETES[codes.B_CLOSE_COMPLETE] = frozenset((CLOSE,))
COMPLETES[codes.B_ROW_DESCRIPTION] = COMPLETES[codes.B_NO_DATA] = frozenset((DESCRIBE_STATEMENT, DESCRIBE_PORTAL))
COMPLETES[codes.B_COMMAND_COMPLETE] = COMPLETES[codes.B_EMPTY_QUERY] = frozenset((EXECUTE,))
COMPLETES[codes.B_PORTAL_SUSPENDED] = frozenset((EXECUTE,))
# These change more than the head of the queue: the session always hands them to on_server().
NEEDS_TRACKER = frozenset((codes.B_ERROR, codes.B_READY, codes.B_COPY_IN))

_SERVER_HANDLERS = {
    codes.B_PARSE_COMPLETE: ReplyTracker._on_parse_complete,
    codes.B_BIND_COMPLETE: ReplyTracker._on_bind_complete,
    codes.B_CLOSE_COMPLETE: ReplyTracker._on_close_complete,
    codes.B_ROW_DESCRIPTION: ReplyTracker._on_description,
    codes.B_NO_DATA: ReplyTracker._on_description,
    codes.B_COMMAND_COMPLETE: ReplyTracker._on_command_complete,
    codes.B_EMPTY_QUERY: ReplyTracker._on_command_complete,
    codes.B_PORTAL_SUSPENDED: ReplyTracker._on_command_complete,
    codes.B_COPY_IN: ReplyTracker._on_copy_in,
    codes.B_ERROR: ReplyTracker._on_error,
    codes.B_READY: ReplyTracker._on_ready,
}
