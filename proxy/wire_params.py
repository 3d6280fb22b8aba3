"""Bind parameter values as they crossed the wire, turned into Python values that asyncpg can send again.

The mirror re-runs a client's statement on its own connections, so the client's Bind values (bytes, in text or
binary format per the Bind's format codes) must become arguments for asyncpg. The type of each parameter is
the one the client declared in its Parse when it declared one, else the one the server infers for the mirror's
own statement (`PreparedStatement.get_parameters()`). Supported: pgvector's vector, halfvec and sparsevec (any
schema), int2/int4/int8, float4/float8, numeric, text/varchar/bpchar/name, bool. Anything else raises
UnsupportedParam: the sample is dropped and counted, never guessed.

Vector values are handed to asyncpg as their text form: asyncpg has no codec for extension types unless one
is registered, and then it sends text, which every vector type (pgvector's or a shadow extension's) reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from .vectors import HalfVector, SparseVector, Vector

TEXT, BINARY = 0, 1

# Builtin type OIDs a client may declare in Parse.
BUILTIN_OIDS: dict[int, str] = {
    16: "bool", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text", 700: "float4", 701: "float8",
    1042: "bpchar", 1043: "varchar", 1700: "numeric",
}
VECTOR_TYPES = ("vector", "halfvec", "sparsevec")


class UnsupportedParam(Exception):
    """A value the mirror cannot re-send faithfully; the sample is dropped as "unsupported-param"."""


def formats_for(count: int, formats: Sequence[int]) -> list[int]:
    """Per-parameter format codes from a Bind's list (none: all text; one: applies to all)."""
    if not formats:
        return [TEXT] * count
    if len(formats) == 1:
        return [formats[0]] * count
    if len(formats) != count:
        raise UnsupportedParam(f"{len(formats)} format codes for {count} parameters")
    return list(formats)


def decode_params(values: Sequence[bytes | None], formats: Sequence[int], param_oids: Sequence[int],
                  types: Sequence[Any]) -> list[object]:
    """Python values for the first len(types) parameters. `types` are asyncpg `Type`s (with .oid and .name)."""
    if len(values) < len(types):
        raise UnsupportedParam(f"the statement needs {len(types)} parameters, the Bind had {len(values)}")
    codes = formats_for(len(values), formats)
    out = []
    for i, type_ in enumerate(types):
        declared = param_oids[i] if i < len(param_oids) else 0
        out.append(decode_value(values[i], codes[i], _type_name(declared, type_)))
    return out


def _type_name(declared: int, prepared: Any) -> str:
    """The type whose wire format the value is in: the client's declaration, else the server's inference."""
    if declared in (0, prepared.oid):
        return prepared.name
    name = BUILTIN_OIDS.get(declared)
    if name is None:
        raise UnsupportedParam(f"declared type oid {declared} differs from the inferred {prepared.name}")
    return name


def decode_value(raw: bytes | None, fmt: int, type_name: str) -> object:
    """One parameter value. Raises UnsupportedParam for an unknown type or malformed bytes."""
    if raw is None:
        return None
    decoder = _DECODERS.get(type_name)
    if decoder is None:
        raise UnsupportedParam(f"parameter type {type_name}")
    if fmt not in (TEXT, BINARY):
        raise UnsupportedParam(f"format code {fmt}")
    try:
        return decoder(bytes(raw), fmt == BINARY)
    except (ValueError, struct.error, UnicodeDecodeError, ArithmeticError) as exc:
        raise UnsupportedParam(f"malformed {type_name} value: {exc}") from exc


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _int(size: int) -> Callable[[bytes, bool], int]:
    fmt = {2: ">h", 4: ">i", 8: ">q"}[size]

    def decode(raw: bytes, binary: bool) -> int:
        if binary:
            if len(raw) != size:
                raise ValueError(f"{len(raw)} bytes for an int{size}")
            return struct.unpack(fmt, raw)[0]
        return int(_text(raw).strip())

    return decode


def _float(size: int) -> Callable[[bytes, bool], float]:
    fmt = {4: ">f", 8: ">d"}[size]

    def decode(raw: bytes, binary: bool) -> float:
        if binary:
            if len(raw) != size:
                raise ValueError(f"{len(raw)} bytes for a float{size}")
            return struct.unpack(fmt, raw)[0]
        return float(_text(raw).strip())

    return decode


def _bool(raw: bytes, binary: bool) -> bool:
    if binary:
        if len(raw) != 1:
            raise ValueError("bool is one byte")
        return raw != b"\x00"
    text = _text(raw).strip().lower()
    if text in ("t", "true", "y", "yes", "on", "1"):
        return True
    if text in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _string(raw: bytes, _: bool) -> str:
    return _text(raw)  # text, varchar, bpchar and name have the same text and binary form


_NUMERIC_SIGNS = {0x0000: "", 0x4000: "-"}
_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def numeric_from_binary(raw: bytes) -> Decimal:
    """PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.

    >>> numeric_from_binary(bytes.fromhex("0002 0000 4000 0004 000c 0d80".replace(" ", "")))
    Decimal('-12.3456')
    """
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHH", raw)
    if sign in _NUMERIC_SPECIAL:
        return Decimal(_NUMERIC_SPECIAL[sign])
    if sign not in _NUMERIC_SIGNS or ndigits < 0 or len(raw) != 8 + 2 * ndigits:
        raise ValueError("malformed numeric")
    digits = struct.unpack_from(f">{ndigits}h", raw, 8)
    if any(not 0 <= d < 10000 for d in digits):
        raise ValueError("malformed numeric digit")
    value = sum(Decimal(d) * Decimal(10000) ** (weight - i) for i, d in enumerate(digits)) if digits else Decimal(0)
    value = value.quantize(Decimal(1).scaleb(-dscale)) if dscale else value.to_integral_value()
    return -value if _NUMERIC_SIGNS[sign] else value


def _numeric(raw: bytes, binary: bool) -> Decimal:
    return numeric_from_binary(raw) if binary else Decimal(_text(raw).strip())


def _vector(kind: type) -> Callable[[bytes, bool], str]:
    def decode(raw: bytes, binary: bool) -> str:
        if binary:
            return kind.from_binary(raw).to_text()
        text = _text(raw)
        kind.from_text(text)  # validate here: a malformed vector is the client's error, not the shadow's
        return text

    return decode


_DECODERS: dict[str, Callable[[bytes, bool], object]] = {
    "int2": _int(2), "int4": _int(4), "int8": _int(8),
    "float4": _float(4), "float8": _float(8),
    "numeric": _numeric, "bool": _bool,
    "text": _string, "varchar": _string, "bpchar": _string, "name": _string,
    "vector": _vector(Vector), "halfvec": _vector(HalfVector), "sparsevec": _vector(SparseVector),
}
