"""Issue 12 item 3 (the proxy's part after authentication): per-session prepared statements are capped with
a clean 54000, and statements planned off the event loop (every cache miss) keep their order and answers,
pipelined or not. RSS and latency under floods are measured by bench/security.py, not asserted here."""

from __future__ import annotations

import time

import psycopg

from pgcutover.proxy.protocol import messages as msg
from tests.integration.wire import Closed, RawClient, data_rows, errors, sqlstates

from .conftest import DATABASE

ROUTE = """
[[route]]
table = "public.docs"
column = "embedding"
key = "id"
shadow_table = "shadow.docs"
"""
SYNC = msg.message(b"S")


def nearest(i: int) -> str:
    return f"SELECT id FROM docs ORDER BY embedding <-> '[{i},{i % 7},{i % 3}]' LIMIT 1"


def parse(name: str, sql: str) -> bytes:
    return msg.parse_message(name, sql)


def test_prepared_statements_per_session_are_capped(sec_proxy) -> None:
    proxy = sec_proxy("max_prepared_statements = 5", ROUTE)
    with RawClient(proxy.port) as client:
        client.startup("sec_app", DATABASE)
        # statements the proxy keeps nothing for (not similarity queries) do not count
        client.send(b"".join(parse(f"plain{i}", f"SELECT {i}") for i in range(20)) + SYNC)
        assert sqlstates(client.until_ready()) == []
        client.send(b"".join(parse(f"s{i}", nearest(i)) for i in range(5)) + SYNC)
        assert sqlstates(client.until_ready()) == []
        client.send(msg.close("S", "s0") + parse("s0", nearest(40)) + SYNC)  # re-used after Close: one slot
        assert sqlstates(client.until_ready()) == []
        client.send(msg.close("S", "s1") + SYNC)  # Close frees a slot
        assert sqlstates(client.until_ready()) == []
        client.send(parse("s5", nearest(5)) + SYNC)
        assert sqlstates(client.until_ready()) == []
        client.send(parse("s6", nearest(6)) + SYNC)  # the sixth
        reply = client.until_closed()
        assert sqlstates(reply) == ["54000"]
        (error,) = errors(reply)
        assert error["S"] == "FATAL" and "max_prepared_statements = 5" in error["M"]
    with psycopg.connect(proxy.dsn("sec_app", DATABASE)) as conn:  # the proxy serves everyone else
        assert conn.execute(nearest(3)).fetchone() == (3,)


def test_statements_planned_off_the_loop_keep_order(sec_proxy) -> None:
    proxy = sec_proxy("", ROUTE)
    with RawClient(proxy.port) as client:
        client.startup("sec_app", DATABASE)
        # 30 distinct similarity queries (every one a cache miss) pipelined with plain ones in one write
        client.send(b"".join(msg.query(nearest(i)) + msg.query(f"SELECT -{i}") for i in range(1, 31)))
        answers = [data_rows(client.until_ready()) for _ in range(60)]
        assert answers == [[[str(x).encode()]] for i in range(1, 31) for x in (i, -i)]
        # the same through the extended protocol: named and unnamed, each planned while later messages wait
        batch = b""
        for i in range(1, 21):
            name = f"n{i}" if i % 2 else ""
            batch += parse(name, nearest(i)) + msg.message(b"B", msg.cstr("") + msg.cstr(name) + b"\0\0\0\0\0\0")
            batch += msg.execute() + SYNC
        client.send(batch)
        rows = [data_rows(client.until_ready()) for _ in range(20)]
        assert rows == [[[str(i).encode()]] for i in range(1, 21)]


def test_prepared_plans_of_all_sessions_are_bounded(sec_proxy) -> None:
    """Plans held by prepared statements are bounded across sessions too (by plan_cache_bytes), and a session
    that ends gives its share back."""
    proxy = sec_proxy(f"plan_cache_bytes = {1 << 20}", ROUTE)  # ~20 plans of these statements
    with RawClient(proxy.port) as first:
        first.startup("sec_app", DATABASE)
        first.send(b"".join(parse(f"a{i}", nearest(i)) for i in range(1, 16)) + SYNC)
        assert sqlstates(first.until_ready()) == []
        with RawClient(proxy.port) as second:
            second.startup("sec_app", DATABASE)
            second.send(b"".join(parse(f"a{i}", nearest(i)) for i in range(1, 16)) + SYNC)  # the same plans
            assert sqlstates(second.until_ready()) == []
            second.send(b"".join(parse(f"b{i}", nearest(i) + " OFFSET 0") for i in range(1, 16)) + SYNC)
            reply = second.until_closed()
            assert sqlstates(reply) == ["54000"] and "all sessions" in errors(reply)[0]["M"]
    # the first two sessions ended: once the proxy has seen them go, their plans are released
    for _ in range(100):
        if prepares_all(proxy.port, [(f"c{i}", nearest(i) + " OFFSET 1") for i in range(1, 16)]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the plans of ended sessions were never released")


def prepares_all(port: int, statements: list[tuple[str, str]]) -> bool:
    """A new session Parses all `statements`: True when none failed, False when the proxy ended it."""
    with RawClient(port) as client:
        client.startup("sec_app", DATABASE)
        client.send(b"".join(parse(name, sql) for name, sql in statements) + SYNC)
        try:
            return sqlstates(client.until_ready()) == []
        except Closed:
            return False
