"""Change notices on the `pgcutover_changes` channel, as the deploy triggers send them.

Payload (fixed contract with deploy/): `{"table": "<schema>.<table>", "kind": "upsert"|"delete"|"migrated"|"resync",
"keys": [k1, k2, ...]}`, batched per statement. A statement touching more keys than fit in one NOTIFY (payloads must
be shorter than 8000 bytes) sends several notices, or one `{"table": ..., "kind": "resync"}`: reconcile now.

Notices are hints, never the truth: the store re-reads the named keys (or the whole key set on resync), so the
only thing parsing must get right is which table and which keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

CHANNEL = "pgcutover_changes"
MAX_PAYLOAD_BYTES = 7999  # PostgreSQL: "payload string too long" at 8000 bytes and above
KINDS = ("upsert", "delete", "migrated", "resync")

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
        raise NoticeError(f"key {value!r} is neither a number nor a string")
    return value


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
