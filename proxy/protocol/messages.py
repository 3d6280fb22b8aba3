"""Building and parsing the messages the proxy itself reads or writes. Pure functions over bytes.

Pass-through traffic never comes here: only the few messages the proxy must understand (startup, cancel,
BackendKeyData, ParameterStatus, Query/Parse/Bind for the router) or must synthesize (errors, admin rows).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pgcutover.core.sqlstate import SUCCESSFUL_COMPLETION

from . import codes

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!ci")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the Postgres protocol; the session answers 08P01 and closes."""


class StartupRefused(ProtocolViolation):
    """A first packet the server only logs (COMMERROR) before closing: the client gets no message at all."""


class StartupFatal(ProtocolViolation):
    """A first packet the server answers with a FATAL of its own before closing; the same one is sent."""

    def __init__(self, sqlstate: str, text: str, detail: str | None = None) -> None:
        super().__init__(text)
        self.sqlstate, self.text, self.detail = sqlstate, text, detail


def message(type_byte: bytes, payload: bytes = b"") -> bytes:
    return _HDR.pack(type_byte, len(payload) + 4) + payload


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def read_cstr(payload: bytes | memoryview, pos: int) -> tuple[str, int]:
    end = bytes(payload).index(b"\0", pos) if isinstance(payload, memoryview) else payload.index(b"\0", pos)
    return bytes(payload[pos:end]).decode("utf-8", "replace"), end + 1


# -- untyped first packets -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Startup:
    version: int
    params: dict[str, str]
    raw: bytes  # the packet exactly as the client sent it, forwarded upstream untouched
    valid: bool = True  # False: a packet the server will refuse (bad version or layout); relayed for its answer

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSEncRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes
    raw: bytes = b""  # the packet as received, relayed to the server unchanged


FirstPacket = Startup | SSLRequest | GSSEncRequest | CancelRequest


def parse_first_packet(packet: bytes) -> FirstPacket:
    """`packet` includes its Int32 length (already checked by the reader). As PostgreSQL's ProcessStartupPacket:
    the request code alone decides SSL/GSS (extra bytes are ignored), a cancel with a bad key length is refused
    silently, and any other packet is a startup packet for the server to judge."""
    if len(packet) < 8:
        raise StartupRefused("invalid length of startup packet")
    code = _I32.unpack_from(packet, 4)[0]
    if code == codes.CANCEL_REQUEST:
        if len(packet) < 12:
            raise StartupRefused("invalid length of cancel request packet")
        if not 13 <= len(packet) <= 12 + codes.MAX_CANCEL_KEY:
            raise StartupRefused("invalid length of cancel key in cancel request packet")
        return CancelRequest(pid=_I32.unpack_from(packet, 8)[0], secret=bytes(packet[12:]), raw=bytes(packet))
    if code == codes.SSL_REQUEST:
        return SSLRequest()
    if code == codes.GSSENC_REQUEST:
        return GSSEncRequest()
    if code >> 16 != 3:
        return Startup(version=code, params={}, raw=bytes(packet), valid=False)
    try:
        params = _parse_startup_params(packet)
    except ProtocolViolation:
        return Startup(version=code, params={}, raw=bytes(packet), valid=False)
    return Startup(version=code, params=params, raw=bytes(packet))


def _parse_startup_params(packet: bytes) -> dict[str, str]:
    body = packet[8:]
    if not body.endswith(b"\0"):
        raise ProtocolViolation("startup packet is not terminated")
    parts = body[:-1].split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter without a value")
    try:
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    if "user" not in params:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return params


def startup_packet(params: dict[str, str], version: int = codes.PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: bytes) -> bytes:
    return _I32.pack(12 + len(secret)) + _I32.pack(codes.CANCEL_REQUEST) + _I32.pack(pid) + secret


SSL_REQUEST_PACKET = _I32.pack(8) + _I32.pack(codes.SSL_REQUEST)


# -- backend messages the proxy writes or reads --------------------------------------------------------------
def error_response(sqlstate: str, text: str, severity: str = "ERROR", detail: str | None = None) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate), b"M" + cstr(text)]
    if detail:
        fields.append(b"D" + cstr(detail))
    return message(b"E", b"".join(fields) + b"\0")


def notice_response(text: str, sqlstate: str = SUCCESSFUL_COMPLETION, severity: str = "NOTICE") -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate), b"M" + cstr(text)]
    return message(b"N", b"".join(fields) + b"\0")


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse payload -> {field code: value}, e.g. {'C': '57014', 'M': '...'}."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        code = chr(payload[pos])
        end = payload.index(b"\0", pos + 1)
        fields[code] = payload[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def ready_for_query(status: int = codes.TX_IDLE) -> bytes:
    return message(b"Z", bytes((status,)))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(b"K", _I32.pack(pid) + secret)


def parse_backend_key_data(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 8:
        raise ProtocolViolation("BackendKeyData too short")
    return _I32.unpack_from(payload, 0)[0], bytes(payload[4:])


def parse_parameter_status(payload: bytes) -> tuple[str, str]:
    name, pos = read_cstr(payload, 0)
    value, _ = read_cstr(payload, pos)
    return name, value


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    """Columns as (name, type oid); text format. Used by the admin console."""
    body = _I16.pack(len(columns))
    for name, oid in columns:
        body += cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0)
    return message(b"T", body)


def data_row(values: Iterable[str | bytes | None]) -> bytes:
    parts = []
    count = 0
    for value in values:
        count += 1
        if value is None:
            parts.append(_I32.pack(-1))
        else:
            data = value.encode() if isinstance(value, str) else value
            parts.append(_I32.pack(len(data)) + data)
    return message(b"D", _I16.pack(count) + b"".join(parts))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


# -- frontend messages the router reads or the session writes ------------------------------------------------
def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def parse_query(payload: bytes) -> str:
    if not payload.endswith(b"\0"):
        raise ProtocolViolation("Query message is not terminated")
    return payload[:-1].decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


def parse_parse(payload: bytes) -> Parse:
    try:
        name, pos = read_cstr(payload, 0)
        end = payload.index(b"\0", pos)
        sql = payload[pos:end].decode("utf-8", "surrogateescape")
        pos = end + 1
        (count,) = _I16.unpack_from(payload, pos)
        oids = struct.unpack_from(f"!{count}I", payload, pos + 2) if count > 0 else ()
    except (ValueError, struct.error) as exc:
        raise ProtocolViolation("malformed Parse message") from exc
    return Parse(name=name, sql=sql, param_oids=tuple(oids))


def parse_message(name: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    body = cstr(name) + sql.encode("utf-8", "surrogateescape") + b"\0" + _I16.pack(len(param_oids))
    body += struct.pack(f"!{len(param_oids)}I", *param_oids)
    return message(b"P", body)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def param_format(self, index: int) -> int:
        if not self.param_formats:
            return 0
        return self.param_formats[0] if len(self.param_formats) == 1 else self.param_formats[index]


def parse_bind(payload: bytes) -> Bind:
    try:
        portal, pos = read_cstr(payload, 0)
        statement, pos = read_cstr(payload, pos)
        (nfmt,) = _I16.unpack_from(payload, pos)
        formats = struct.unpack_from(f"!{nfmt}h", payload, pos + 2)
        pos += 2 + 2 * nfmt
        (nparams,) = _I16.unpack_from(payload, pos)
        pos += 2
        params: list[bytes | None] = []
        for _ in range(nparams):
            (size,) = _I32.unpack_from(payload, pos)
            pos += 4
            if size < 0:
                params.append(None)
            else:
                params.append(bytes(payload[pos : pos + size]))
                pos += size
        (nres,) = _I16.unpack_from(payload, pos)
        result_formats = struct.unpack_from(f"!{nres}h", payload, pos + 2)
    except (ValueError, struct.error) as exc:
        raise ProtocolViolation("malformed Bind message") from exc
    return Bind(portal, statement, tuple(formats), tuple(params), tuple(result_formats))


def bind_message(bind: Bind) -> bytes:
    body = cstr(bind.portal) + cstr(bind.statement)
    body += _I16.pack(len(bind.param_formats)) + struct.pack(f"!{len(bind.param_formats)}h", *bind.param_formats)
    body += _I16.pack(len(bind.params))
    for value in bind.params:
        body += _I32.pack(-1) if value is None else _I32.pack(len(value)) + value
    body += _I16.pack(len(bind.result_formats)) + struct.pack(f"!{len(bind.result_formats)}h",
                                                              *bind.result_formats)
    return message(b"B", body)


def describe(kind: str, name: str) -> bytes:
    return message(b"D", kind.encode() + cstr(name))


def close(kind: str, name: str) -> bytes:
    return message(b"C", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + _I32.pack(max_rows))


SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")
