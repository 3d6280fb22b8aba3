"""The split decision: percentages, sticky modes, transactions, stable hashing."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from pgcutover.core.config import Route
from pgcutover.rewrite.split import SplitSession, choose_target, stable_point
from pgcutover.rewrite.txcontrol import BEGIN, END

ROUTE = Route(table="public.items", column="embedding", shadow_table="ruvector_new.items")


def route(split: float, sticky: str = "session") -> Route:
    return ROUTE.with_split(split, sticky)


def shares(split: float, sticky: str, n: int = 4000) -> float:
    rng = random.Random(1)
    shadow = sum(
        choose_target(route(split, sticky), sticky_key_session=i, application_name=f"app{i}", rng=rng) == "shadow"
        for i in range(n))
    return shadow / n


def test_zero_and_hundred_are_absolute() -> None:
    rng = random.Random(0)
    for sticky in ("query", "session", "application_name"):
        for key in range(200):
            assert choose_target(route(0, sticky), sticky_key_session=key, application_name="a", rng=rng) == "primary"
            assert choose_target(route(100, sticky), sticky_key_session=key, application_name="a", rng=rng) == "shadow"


def test_route_without_shadow_is_always_primary() -> None:
    bare = Route(table="t", column="c")
    assert choose_target(bare, sticky_key_session=1, application_name=None, rng=random.Random()) == "primary"


def test_split_percentages_hold_with_decimals() -> None:
    for sticky in ("query", "session", "application_name"):
        for split in (2.5, 25.0, 50.0, 90.0):
            assert abs(shares(split, sticky) - split / 100) < 0.035, (sticky, split)


def test_session_stickiness_and_monotonic_moves() -> None:
    rng = random.Random(3)
    for key in range(300):
        first = choose_target(route(30), sticky_key_session=key, application_name=None, rng=rng)
        assert all(choose_target(route(30), sticky_key_session=key, application_name=None, rng=rng) == first
                   for _ in range(5))
        # raising the split only ever moves sessions to the shadow
        if first == "shadow":
            assert choose_target(route(60), sticky_key_session=key, application_name=None, rng=rng) == "shadow"


def test_application_name_is_stable_and_ignores_the_session() -> None:
    rng = random.Random(4)
    for app in ("billing", "search-api", "", "ETL job"):
        targets = {choose_target(route(50, "application_name"), sticky_key_session=k, application_name=app, rng=rng)
                   for k in range(50)}
        assert len(targets) == 1


def test_query_sticky_rolls_each_time() -> None:
    rng = random.Random(5)
    targets = {choose_target(route(50, "query"), sticky_key_session=1, application_name="a", rng=rng)
               for _ in range(100)}
    assert targets == {"primary", "shadow"}


def test_points_are_stable_across_processes() -> None:
    # blake2b, not the salted builtin hash(): another interpreter computes the same point
    code = ("from pgcutover.core.config import Route; from pgcutover.rewrite.split import stable_point; "
            "print(repr(stable_point(Route(table='public.items', column='e'), 'app:billing')))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": "",  # this checkout's code (root conftest.py)
                                "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert float(other.stdout) == stable_point(ROUTE, "app:billing")
    assert stable_point(ROUTE, 7) != stable_point(Route(table="public.docs", column="e"), 7)


def test_transaction_keeps_its_target() -> None:
    session = SplitSession(session_key=1, rng=random.Random(6))
    query_route = route(50, "query")
    session.effect(BEGIN)
    inside = {session.target_for(query_route) for _ in range(50)}
    assert len(inside) == 1
    session.effect(END)
    outside = {session.target_for(query_route) for _ in range(100)}
    assert outside == {"primary", "shadow"}
    # a new transaction rolls again, then holds
    targets = set()
    for _ in range(30):
        session.effect(BEGIN)
        first = session.target_for(query_route)
        assert session.target_for(query_route) == first
        session.effect(END)
        targets.add(first)
    assert targets == {"primary", "shadow"}


def test_a_split_change_reaches_the_next_transaction() -> None:
    session = SplitSession(session_key=2)
    session.effect(BEGIN)
    before = session.target_for(route(0))
    assert session.target_for(route(100)) == before == "primary"  # the open transaction keeps its target
    session.effect(END)
    session.effect(BEGIN)
    assert session.target_for(route(100)) == "shadow"  # the next one follows the split
