"""Change notices on the `pgcutover_changes` channel, as the deploy triggers send them.

Payload (fixed contract with deploy/): `{"table": "<schema>.<table>", "kind": "upsert"|"delete"|"migrated"|"resync",
"keys": [k1, k2, ...]}`, batched per statement. A statement touching more keys than fit in one NOTIFY (payloads must
be shorter than 8000 bytes) sends several notices, or one `{"table": ..., "kind": "resync"}`: reconcile now.

Notices are hints, never the truth: the store re-reads the named keys (or the whole key set on resync), so the
only thing parsing must get right is which table and which keys.

Anyone who can connect may NOTIFY on the channel, so nothing in a payload is trusted: integer keys are range-checked
(a key outside bigint can name no row, and once crashed the follower), the follower keeps a bounded backlog that
collapses into one resync when full, resyncs asked for by notices are spaced out, and warnings about bad notices
are rate-limited (`WarningLimiter`). The channel is `[proxy] notify_channel` (default `pgcutover_changes`); the
deploy triggers must send on the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

CHANNEL = "pgcutover_changes"  # the default of [proxy] notify_channel
MAX_PAYLOAD_BYTES = 7999  # PostgreSQL: "payload string too long" at 8000 bytes and above
KINDS = ("upsert", "delete", "migrated", "resync")
INT8_MIN, INT8_MAX = -(2 ** 63), 2 ** 63 - 1  # no integer key of any PostgreSQL integer type lies outside

Key = int | str


class NoticeError(ValueError):
    """A payload that does not follow the contract; the follower logs it and reconciles instead."""


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    table: str  # "<schema>.<table>", unquoted names
    kind: str
    keys: tuple[Key, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise NoticeError(f"unknown kind {self.kind!r}")
        schema, dot, name = self.table.partition(".")
        if not dot or not schema or not name:
            raise NoticeError(f"table {self.table!r} is not '<schema>.<table>'")

    @property
    def is_resync(self) -> bool:
        return self.kind == "resync"


def _key(value: object) -> Key:
    # bool is an int subclass; a JSON true/false is never a key.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise NoticeError(f"key {value!r:.40} is neither a number nor a string")
    if isinstance(value, int) and not INT8_MIN <= value <= INT8_MAX:
        raise NoticeError(f"key {str(value)[:40]} is outside bigint")
    return value


def valid_channel(name: object) -> bool:
    """A LISTEN channel name: an identifier of 1 to 63 bytes without NUL (asyncpg quotes it)."""
    return isinstance(name, str) and 0 < len(name.encode()) <= 63 and "\x00" not in name


class WarningLimiter:
    """At most one warning per `interval` seconds for each kind; the next one says how many were suppressed.

    Kinds are a fixed, small set named by the caller (never taken from a payload), so the state stays bounded."""

    def __init__(self, log: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log unless `kind` was logged less than `interval` ago; True if logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d similar warnings suppressed in the last %.0fs)"
            args = (*args, suppressed, self.interval)
        self.log.warning(message, *args)
        return True


def parse_notice(payload: str | bytes) -> ChangeNotice:
    """Parse one payload; raises NoticeError on anything outside the contract."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise NoticeError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NoticeError("payload is not a JSON object")
    table, kind, keys = data.get("table"), data.get("kind"), data.get("keys", [])
    if not isinstance(table, str) or not isinstance(kind, str):
        raise NoticeError("payload needs string 'table' and 'kind'")
    if not isinstance(keys, list):
        raise NoticeError("'keys' must be a list")
    if kind != "resync" and not keys:
        raise NoticeError(f"{kind} notice without keys")
    return ChangeNotice(table, kind, tuple(_key(k) for k in keys))


def _encode(table: str, kind: str, keys: Sequence[Key]) -> bytes:
    body: dict[str, object] = {"table": table, "kind": kind}
    if kind != "resync":
        body["keys"] = list(keys)
    return orjson.dumps(body)


def build_notices(table: str, kind: str, keys: Iterable[Key], *, limit: int = MAX_PAYLOAD_BYTES,
                  max_notices: int | None = None) -> list[str]:
    """Payloads for a change to `keys`, each under `limit` bytes, as the triggers send them.

    When more than `max_notices` payloads would be needed, a single resync notice is returned instead.
    """
    ChangeNotice(table, kind)  # validates table and kind
    if kind == "resync":
        return [_encode(table, kind, ()).decode()]
    keys = list(keys)
    overhead = len(_encode(table, kind, []))
    payloads: list[str] = []
    batch: list[Key] = []
    size = overhead
    for key in keys:
        item = len(orjson.dumps(key)) + (1 if batch else 0)  # the comma
        if overhead + item > limit:
            raise NoticeError(f"key {key!r} alone does not fit in a notice")
        if size + item > limit:
            payloads.append(_encode(table, kind, batch).decode())
            batch, size = [], overhead
            item = len(orjson.dumps(key))
        batch.append(key)
        size += item
    if batch:
        payloads.append(_encode(table, kind, batch).decode())
    if max_notices is not None and len(payloads) > max_notices:
        return [_encode(table, "resync", ()).decode()]
    return payloads
