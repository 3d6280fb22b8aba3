"""Cancel keys: each client gets a BackendKeyData of the proxy's own, mapped to its upstream backend.

Clients cancel by opening a new connection and sending CancelRequest(pid, secret). The proxy must not
hand out the server's real key (a client could then cancel through any path, and keys would collide
across upstreams), so it issues its own and forwards a matching cancel to the right backend.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class UpstreamKey:
    pid: int
    secret: bytes


@dataclass(slots=True)
class IssuedKey:
    pid: int
    secret: bytes
    upstream: UpstreamKey
    session: Any  # the Session that owns it; used to find its upstream address


class CancelRegistry:
    def __init__(self) -> None:
        self._keys: dict[int, IssuedKey] = {}

    def issue(self, session: Any, upstream: UpstreamKey) -> IssuedKey:
        # Same secret length as the server's, so a 3.0 client sees 4 bytes and a 3.2 client what it negotiated.
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self._keys:
                break
        key = IssuedKey(pid, secrets.token_bytes(len(upstream.secret)), upstream, session)
        self._keys[pid] = key
        return key

    def lookup(self, pid: int, secret: bytes) -> IssuedKey | None:
        key = self._keys.get(pid)
        if key is None or not hmac.compare_digest(key.secret, secret):
            return None
        return key

    def release(self, key: IssuedKey | None) -> None:
        if key is not None and self._keys.get(key.pid) is key:
            del self._keys[key.pid]

    def __len__(self) -> int:
        return len(self._keys)
