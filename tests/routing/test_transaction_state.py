"""The sans-IO parts of issue 11, items 1 and 2: the transaction-control classifier, the session's transaction
state as the client's stream drives it, and sticky points that move only with the split."""

from __future__ import annotations

import random

import pytest

from pgcutover.core.config import Route
from pgcutover.rewrite.split import EXPLICIT, IDLE, IMPLICIT, SplitSession
from pgcutover.rewrite.txcontrol import BEGIN, CHAIN, END, NONE, query_effects, statement_effect


def route(split: float, sticky: str = "query") -> Route:
    return Route(table="public.items", column="embedding", shadow_table="s.items", split=split, sticky=sticky)


@pytest.mark.parametrize(("sql", "effect"), [
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", BEGIN), ("begin work", BEGIN), ("  \n\tStart Transaction", BEGIN),
    ("START", NONE), ("/* a /* nested */ comment */ BEGIN", BEGIN), ("-- c\nCOMMIT WORK", END),
    ("END TRANSACTION", END), ("ABORT", END), ("ROLLBACK TRANSACTION", END), ("ROLLBACK TO sp", NONE),
    ("ROLLBACK TRANSACTION TO SAVEPOINT sp", NONE), ("ROLLBACK PREPARED 'g'", NONE), ("commit prepared 'g'", NONE),
    ("prepare transaction 'g'", END), ("PREPARE begin AS SELECT 1", NONE), ("RELEASE SAVEPOINT sp", NONE),
    ("COMMIT AND CHAIN", CHAIN), ("END AND CHAIN", CHAIN), ("ABORT AND NO CHAIN", END),
    ("SET TRANSACTION READ ONLY", NONE), ("DO $$BEGIN PERFORM 1; END$$", NONE), ("SELECT 'BEGIN'", NONE),
    ("beginning", NONE), ("/* unterminated", NONE),
])
def test_statement_effect(sql: str, effect: int) -> None:
    assert statement_effect(sql) == effect


@pytest.mark.parametrize(("sql", "effects"), [
    ("BEGIN; SELECT 1; COMMIT", [BEGIN, NONE, END]),
    ("select 'a;b'; select \"x;\"\"y\"; commit", [NONE, NONE, END]),
    ("select E'it\\'s;'; begin", [NONE, BEGIN]),
    ("select $q$ ; commit; $q$; rollback", [NONE, END]),
    ("select $1; begin", [NONE, BEGIN]),  # a parameter, not a dollar quote
    ("SELECT 1 -- ; commit\n; abort", [NONE, END]),
    ("SELECT 1;;; ", [NONE]),
])
def test_query_effects(sql: str, effects: list[int]) -> None:
    assert query_effects(sql) == effects


def test_pipelined_begin_commit_is_one_transaction_then_the_next_chooses_again() -> None:
    session = SplitSession(rng=random.Random(1))
    for _ in range(50):
        session.effect(BEGIN)  # Parse/Bind/Execute BEGIN: no ReadyForQuery yet
        session.implicit()
        first = session.target_for(route(50))
        session.implicit()
        assert all(session.target_for(route(50)) == first for _ in range(10))
        session.effect(END)
        session.sync()
        assert session.state == IDLE
    # an open transaction keeps its target through a rollback; the next one follows it
    session.effect(BEGIN)
    pinned = session.target_for(route(100))
    assert session.target_for(route(0)) == pinned == "shadow"
    session.effect(END)
    session.effect(BEGIN)
    assert session.target_for(route(0)) == "primary"


def test_implicit_transaction_of_a_pipeline_ends_at_sync() -> None:
    session = SplitSession(rng=random.Random(2))
    session.implicit()
    first = session.target_for(route(50))
    assert session.state == IMPLICIT and session.target_for(route(50)) == first
    session.sync()
    assert session.state == IDLE
    assert {session.target_for(route(50)) for _ in range(50)} == {"primary", "shadow"}  # outside: each chooses


def test_savepoints_and_failed_transactions_keep_the_pin() -> None:
    session = SplitSession()
    session.effect(BEGIN)
    assert session.target_for(route(100)) == "shadow"
    session.effect(statement_effect("ROLLBACK TO SAVEPOINT a"))
    session.ready(ord("E"))  # the transaction failed: the pin holds until the client ends it
    session.sync()  # a Sync does not end an explicit transaction
    assert session.explicit and session.target_for(route(0)) == "shadow"
    session.effect(statement_effect("ROLLBACK"))
    assert session.target_for(route(0)) == "primary"


def test_ready_for_query_settles_what_the_server_did() -> None:
    session = SplitSession()
    session.effect(BEGIN)
    session.target_for(route(100))
    session.ready(ord("I"))  # e.g. the BEGIN itself failed: no transaction is open
    assert session.state == IDLE
    session.ready(ord("T"))  # a transaction we did not see open (a procedure, say)
    assert session.state == EXPLICIT
    session.effect(CHAIN)  # COMMIT AND CHAIN: a new transaction, a new choice
    assert session.state == EXPLICIT and session.target_for(route(0)) == "primary"


@pytest.mark.parametrize("sticky", ["session", "application_name"])
def test_sticky_points_move_only_with_the_split(sticky: str) -> None:
    sessions = [SplitSession(session_key=i, application_name=f"app{i % 13}") for i in range(300)]
    at = {s.session_key: s.target_for(route(60, sticky)) for s in sessions}
    for s in sessions:
        s.application_name = "renamed"  # a later SET application_name does not move the session
    lower = {s.session_key: s.target_for(route(30, sticky)) for s in sessions}
    higher = {s.session_key: s.target_for(route(80, sticky)) for s in sessions}
    assert all(lower[k] == "primary" for k, t in at.items() if t == "primary")  # lowering never moves to shadow
    assert all(higher[k] == "shadow" for k, t in lower.items() if t == "shadow")  # raising never moves back
    assert {"primary", "shadow"} == set(lower.values())
    assert all(s.target_for(route(0, sticky)) == "primary" for s in sessions)  # a rollback wins over any point
