"""SCRAM-SHA-256 verifiers in PostgreSQL's format, parsed: what `[admin] verifiers` holds (core/config.py checks
them) and what the console's SCRAM exchange (proxy/scram.py) authenticates against.

`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64), as in pg_authid.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
_NOT_A_VERIFIER = "not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iter>:<salt>$<key>:<key>)"


@dataclass(frozen=True, slots=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def parse_verifier(text: str) -> Verifier:
    """Raises ValueError (with no part of the verifier in its message) when `text` is not a SCRAM verifier.

    >>> parse_verifier("SCRAM-SHA-256$4096:c2FsdA==$x:y")
    Traceback (most recent call last):
    ...
    ValueError: not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iter>:<salt>$<key>:<key>)
    """
    try:
        mechanism, params, keys = text.split("$")
        iterations, salt = params.split(":")
        stored, server = keys.split(":")
        verifier = Verifier(int(iterations), base64.b64decode(salt, validate=True),
                            base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(_NOT_A_VERIFIER) from exc
    if mechanism != MECHANISM or verifier.iterations < 1 or len(verifier.stored_key) != 32 \
            or len(verifier.server_key) != 32:
        raise ValueError(_NOT_A_VERIFIER)
    return verifier
