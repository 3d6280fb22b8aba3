"""The notice payload contract shared with the deploy triggers."""

from __future__ import annotations

import pytest

from fallback.notices import MAX_PAYLOAD_BYTES, ChangeNotice, NoticeError, build_notices, parse_notice


def test_parse() -> None:
    notice = parse_notice('{"table": "public.items", "kind": "upsert", "keys": [1, "two", 3]}')
    assert notice == ChangeNotice("public.items", "upsert", (1, "two", 3))
    assert parse_notice(b'{"table": "s.t", "kind": "resync"}').is_resync
    assert parse_notice('{"table": "s.t", "kind": "migrated", "keys": [5]}').keys == (5,)


@pytest.mark.parametrize("payload", [
    "not json", "[1, 2]", '{"kind": "upsert", "keys": [1]}', '{"table": "s.t", "kind": "merge", "keys": [1]}',
    '{"table": "items", "kind": "upsert", "keys": [1]}', '{"table": "s.t", "kind": "upsert", "keys": 1}',
    '{"table": "s.t", "kind": "delete", "keys": [true]}', '{"table": "s.t", "kind": "delete", "keys": [[1]]}',
    '{"table": "s.t", "kind": "delete", "keys": []}', '{"table": "s.t", "kind": "upsert"}',
])
def test_parse_rejects(payload: str) -> None:
    with pytest.raises(NoticeError):
        parse_notice(payload)


def test_build_splits_under_the_limit() -> None:
    keys = [*range(10_000_000, 10_004_000), "a-string-key", 'quote"d']
    payloads = build_notices("public.items", "upsert", keys)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    parsed = [parse_notice(p) for p in payloads]
    assert [k for n in parsed for k in n.keys] == keys
    assert {n.kind for n in parsed} == {"upsert"}


def test_build_falls_back_to_resync() -> None:
    payloads = build_notices("public.items", "delete", range(5000), max_notices=2)
    assert [parse_notice(p) for p in payloads] == [ChangeNotice("public.items", "resync")]
    assert parse_notice(build_notices("s.t", "resync", [])[0]).is_resync
    with pytest.raises(NoticeError):
        build_notices("s.t", "upsert", ["x" * 9000])
