"""SCRAM-SHA-256 (RFC 5802 / 7677), server side, sans-IO: for the admin console's local authentication.

Verifiers use PostgreSQL's own format, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64),
so a verifier can also be copied from pg_authid. The proxy stores no password, only the verifier: a leaked
config file does not give the password away (but, as with pg_authid, lets one impersonate the server side).

No channel binding: the console advertises SCRAM-SHA-256 only, so a client sending "p=" is refused.
Passwords are normalized with NFKC, the core of SASLprep that libpq applies; ASCII passwords are unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from pgcutover.core.verifier import MECHANISM, Verifier, parse_verifier

DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default


class ScramError(Exception):
    """The exchange failed: malformed messages, or the proof does not match (wrong password)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ScramError("invalid base64") from exc


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _normalize(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode()


def make_verifier(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = _hmac(salted, b"Server Key")
    return f"{MECHANISM}${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def mock_verifier() -> Verifier:
    """For a user with no verifier: the exchange runs as usual and fails at the proof, as PostgreSQL's mock
    authentication does, so the console does not tell which admin names exist."""
    return parse_verifier(make_verifier(secrets.token_hex(16), iterations=DEFAULT_ITERATIONS))


def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}")
        out.append((part[0], part[2:]))
    return out


class ScramServer:
    """One exchange: client-first -> server-first, client-final -> server-final (or ScramError)."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""

    def client_first(self, data: bytes) -> bytes:
        text = _decode(data)
        flag, sep, rest = text.partition(",")
        if not sep or flag not in ("n", "y"):  # "p=" asks for channel binding, which is not offered
            raise ScramError("channel binding is not supported by the admin console")
        authzid, sep, bare = rest.partition(",")
        if not sep or authzid:
            raise ScramError("authorization identities are not supported")
        self._gs2_header = f"{flag},{authzid},"
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramError("malformed SCRAM client-first-message")
        self._client_first_bare = bare
        self._nonce = attrs[1][1] + _b64(secrets.token_bytes(18))
        self._server_first = f"r={self._nonce},s={_b64(self.verifier.salt)},i={self.verifier.iterations}"
        return self._server_first.encode()

    def client_final(self, data: bytes) -> bytes:
        text = _decode(data)
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM client-final-message")
        attrs = dict(_attributes(without_proof))
        if _unb64(attrs.get("c", "")) != self._gs2_header.encode() or attrs.get("r") != self._nonce:
            raise ScramError("SCRAM channel binding or nonce does not match")
        proof = _unb64(proof_part)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("malformed SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramError("password authentication failed")
        return f"v={_b64(_hmac(self.verifier.server_key, auth_message))}".encode()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramError("SCRAM message is not UTF-8") from exc


class ScramClient:
    """The client side, for tests and for checking a verifier: the exact inverse of ScramServer."""

    def __init__(self, user: str, password: str) -> None:
        self.password = password
        self.nonce = _b64(secrets.token_bytes(18))
        self.first_bare = f"n={user},r={self.nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(_attributes(server_first.decode()))
        nonce, salt, iterations = attrs["r"], _unb64(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise ScramError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", _normalize(self.password), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> bool:
        return hmac.compare_digest(server_final, b"v=" + _b64(self._server_signature).encode())
