"""Bind values as PostgreSQL itself encodes them (its *send functions for binary, ::text for text) decode into
values that asyncpg sends back equal to the original."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace

import asyncpg
import pytest

from pgcutover.proxy.wire_params import UnsupportedParam, decode_params, decode_value, formats_for

from .conftest import DATABASE

CASES = [
    ("int2", "-7"), ("int4", "2147483647"), ("int8", "1099511627776"),
    ("float4", "0.5"), ("float8", "-1.25e-300"),
    ("numeric", "-12345.6789"), ("numeric", "0.000001"), ("numeric", "1e30"), ("numeric", "NaN"), ("numeric", "0"),
    ("text", "héllo, wörld"), ("varchar", "abc"), ("bpchar", "xy"),
    ("bool", "true"), ("bool", "false"),
    ("vector", "[1,2.5,-3]"), ("halfvec", "[1,0.5,-2]"), ("sparsevec", "{1:1.5,3:-2}/5"),
]


@pytest.mark.parametrize(("type_name", "literal"), CASES, ids=[f"{t}:{v}" for t, v in CASES])
def test_text_and_binary_values_round_trip(evidence_db, type_name: str, literal: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(evidence_db.dsn(database=DATABASE))
        try:
            send = {"int2": "int2send", "int4": "int4send", "int8": "int8send", "float4": "float4send",
                    "float8": "float8send", "numeric": "numeric_send", "text": "textsend", "varchar": "varcharsend",
                    "bpchar": "bpcharsend", "bool": "boolsend", "vector": "vector_send",
                    "halfvec": "halfvec_send", "sparsevec": "sparsevec_send"}[type_name]
            binary, text = await conn.fetchrow(
                f"SELECT {send}($1::text::{type_name}), $1::text::{type_name}::text", literal)
            statement = await conn.prepare(f"SELECT $1 IS NOT DISTINCT FROM $2::text::{type_name}")
            types = statement.get_parameters()
            for raw, fmt in ((binary, 1), (text.encode(), 0)):
                value = decode_value(raw, fmt, types[0].name)
                assert await statement.fetchval(value, literal), (fmt, value)
        finally:
            await conn.close()

    asyncio.run(main())


def _type(oid: int, name: str) -> SimpleNamespace:
    return SimpleNamespace(oid=oid, name=name)


def test_formats_and_declared_types() -> None:
    assert formats_for(3, ()) == [0, 0, 0]
    assert formats_for(2, (1,)) == [1, 1]
    with pytest.raises(UnsupportedParam):
        formats_for(3, (0, 1))
    int8 = _type(20, "int8")
    # the client declared int4 and sent 4 binary bytes; the mirror's statement types it int8: still 7
    assert decode_params((struct.pack(">i", 7),), (1,), (23,), [int8]) == [7]
    assert decode_params((None, b"5"), (), (), [int8, int8]) == [None, 5]
    # only as many values as the mirror's statement uses
    assert decode_params((b"1", b"2"), (), (), [int8]) == [1]
    with pytest.raises(UnsupportedParam):
        decode_params((b"1",), (), (), [int8, int8])


@pytest.mark.parametrize(("raw", "fmt", "type_name"), [
    (b"00000000-0000-0000-0000-000000000000", 0, "uuid"),
    (b"\x00\x01", 1, "int4"),
    (b"[1,2", 0, "vector"),
    (b"maybe", 0, "bool"),
    (b"1", 2, "int4"),
    (b"\xff\xfe", 0, "text"),
])
def test_what_cannot_be_decoded_is_refused(raw: bytes, fmt: int, type_name: str) -> None:
    with pytest.raises(UnsupportedParam):
        decode_value(raw, fmt, type_name)


def test_declared_unknown_type_is_refused() -> None:
    with pytest.raises(UnsupportedParam):
        decode_params((b"x",), (), (2950,), [_type(25, "text")])  # declared uuid, inferred text
