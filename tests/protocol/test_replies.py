"""The reply queue, one test per protocol flow (as in PgDog's backend/protocol/state.rs)."""

from __future__ import annotations

from pgcutover.proxy.protocol.replies import (
    BIND,
    DROP,
    FORWARD,
    PARSE,
    SYNC,
    ReplyTracker,
)


def feed(tracker: ReplyTracker, client: str, server: str) -> list[int]:
    for kind in client:
        # 'd' here means Describe(portal), 'D' Describe(statement), 'y' CopyData (never answered)
        first = 0x50 if kind == "d" else 0x53
        tracker.expect_client(ord("D") if kind in "dD" else ord(kind), first)
    return [tracker.on_server(ord(kind)) for kind in server]


def test_simple_query_cycle() -> None:
    tracker = ReplyTracker()
    assert feed(tracker, "Q", "TDDCZ") == [FORWARD] * 5
    assert tracker.idle


def test_simple_query_with_error_still_ends_at_ready() -> None:
    tracker = ReplyTracker()
    feed(tracker, "Q", "TDCE")
    assert not tracker.idle
    feed(tracker, "", "Z")
    assert tracker.idle


def test_extended_cycle() -> None:
    tracker = ReplyTracker()
    assert feed(tracker, "PBDES", "12TDCZ") == [FORWARD] * 6
    assert tracker.idle


def test_describe_statement_has_parameter_description() -> None:
    tracker = ReplyTracker()
    feed(tracker, "PDS", "1tTZ")
    assert tracker.idle


def test_error_in_pipeline_skips_to_sync() -> None:
    tracker = ReplyTracker()
    # two pipelined cycles; the first Bind fails, so its Execute is never answered
    feed(tracker, "PBESPBES", "1E")
    assert tracker.kinds() == ["SYNC", "PARSE", "BIND", "EXECUTE", "SYNC"]
    feed(tracker, "", "Z12CZ")
    assert tracker.idle


def test_error_before_sync_was_sent_discards_later_messages() -> None:
    tracker = ReplyTracker()
    feed(tracker, "PB", "1E")  # client has not sent Sync yet
    feed(tracker, "ES", "")  # the server discards this Execute; only Sync counts
    assert tracker.kinds() == ["SYNC"]
    feed(tracker, "", "Z")
    assert tracker.idle


def test_error_at_sync_keeps_sync() -> None:
    tracker = ReplyTracker()
    feed(tracker, "PBES", "12C")
    feed(tracker, "", "E")  # e.g. a deferred constraint failing at the implicit COMMIT
    assert tracker.kinds() == ["SYNC"]
    feed(tracker, "", "Z")
    assert tracker.idle


def test_portal_suspended_completes_execute() -> None:
    tracker = ReplyTracker()
    feed(tracker, "BdEEH", "2TDDsDC")
    assert tracker.idle


def test_copy_in_extended_ignores_sync_sent_during_copy() -> None:
    tracker = ReplyTracker()
    # libpq: Parse/Bind/Execute/Sync at once, then CopyData, CopyDone, and a second Sync
    feed(tracker, "PBES", "12G")
    feed(tracker, "yycS", "CZ")
    assert tracker.idle


def test_copy_in_extended_when_copy_data_was_already_sent() -> None:
    tracker = ReplyTracker()
    feed(tracker, "PBESyycS", "12GCZ")
    assert tracker.idle


def test_copy_in_simple_query() -> None:
    tracker = ReplyTracker()
    feed(tracker, "Qyyc", "GCZ")
    assert tracker.idle


def test_copy_fail_in_extended_skips_to_sync() -> None:
    tracker = ReplyTracker()
    feed(tracker, "PBES", "12G")
    feed(tracker, "yfS", "EZ")
    assert tracker.idle


def test_injected_parse_reply_is_dropped_and_only_it() -> None:
    tracker = ReplyTracker()
    feed(tracker, "P", "")
    tracker.expect(PARSE, DROP)  # the proxy's own Parse of a per-target statement
    tracker.expect(BIND)
    tracker.expect(SYNC)
    assert tracker.special == 1
    assert [tracker.on_server(ord(k)) for k in "112Z"] == [FORWARD, DROP, FORWARD, FORWARD]
    assert tracker.special == 0


def test_injected_entry_skipped_by_error_is_forgotten() -> None:
    tracker = ReplyTracker()
    feed(tracker, "P", "")
    tracker.expect(PARSE, DROP)
    tracker.expect(SYNC)
    tracker.on_server(ord("E"))  # the client's Parse failed: ours is skipped by the server
    assert tracker.special == 0
    tracker.on_server(ord("Z"))
    assert tracker.idle


def test_asynchronous_messages_pass_when_idle() -> None:
    tracker = ReplyTracker()
    assert feed(tracker, "", "NAS") == [FORWARD] * 3
