"""Issue 10 items 1, 4, 6 and 8 through the real proxy: never silent, no hang, statements that survive
DEALLOCATE ALL / DISCARD ALL.

- A similarity query the fallback cannot answer exactly gets SQLSTATE 0A000 naming the route and the reason
  (on_inexact = "error", the default), in the simple and the extended protocol, and the session stays usable;
  or, with on_inexact = "primary_only", the pgvector rows' answer and a NOTICE. Both are counted by reason.
- A route whose store cannot load (a wrong vector_column / legacy_column) answers within fallback_wait_ms with
  reason store-not-ready and the load error; a CancelRequest ends the wait; /readyz says which store and why.
- Merged statements prepared by the proxy survive the client's DEALLOCATE ALL and DISCARD ALL.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import psycopg
import pytest
from psycopg import errors as pgerrors

from pgcutover.proxy.embedded import pg_binary
from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg
from pgcutover.rewrite.decision import decide
from tests.integration.wire import RawClient, data_rows, errors
from tests.routing import conftest as routing
from tests.routing.test_operate import scrape

DIMS = 8
ROWS = 400
MIGRATED = 150  # rows 1..MIGRATED have their pgvector value; the rest are legacy-only (JSON text)
TABLES = ("ix_items", "ix_bad_vec", "ix_not_ready", "ix_bad_legacy", "ix_slow")


def route(table: str, extra: str = "", vector_column: str = "embedding_vector",
          legacy_column: str = "embedding") -> str:
    return f"""
[[route]]
table = "public.{table}"
column = "embedding"
key = "id"
vector_column = "{vector_column}"
legacy_column = "{legacy_column}"
legacy_format = "json"
dims = {DIMS}
{extra}
"""


ROUTES = (
    '[admin]\nusers = ["postgres"]\n'
    + route("ix_items")
    + route("ix_bad_vec", 'fallback_wait_ms = 300', vector_column="no_such_column")
    + route("ix_not_ready", 'fallback_wait_ms = 300', legacy_column="no_such_legacy")
    + route("ix_bad_legacy", 'fallback_wait_ms = 300\non_inexact = "primary_only"', legacy_column="no_such_legacy")
    + route("ix_slow", "fallback_wait_ms = 600000", legacy_column="no_such_legacy")
)


@pytest.fixture(scope="module")
def tables(pg):
    rng = np.random.default_rng(10)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    lines = "".join(f"{i}\t{json.dumps([round(float(x), 6) for x in v])}\n" for i, v in enumerate(vectors, start=1))
    for table in TABLES:
        pg.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, embedding text, "
                f"embedding_vector vector({DIMS}))")
        subprocess.run([pg_binary("psql"), "-X", "-q", "-d", pg.dsn(), "-c",
                        f"COPY {table} (id, embedding) FROM STDIN"], input=lines, text=True, check=True)
        pg.psql(f"UPDATE {table} SET embedding_vector = embedding::vector WHERE id <= {MIGRATED}")
    pg.psql("DROP TABLE IF EXISTS ix_full; CREATE TABLE ix_full AS SELECT id, embedding_vector AS embedding_text, "
            "embedding::vector AS embedding FROM ix_items")  # as if fully migrated: the oracle of exactness
    return vectors


@pytest.fixture(scope="module")
def proxy(start_proxy, tables):
    proxy = start_proxy(ROUTES)
    wait_until(lambda: (lambda status, body: status and "fallback store public.ix_items" not in body)(*readyz(proxy)))
    return proxy


def wait_until(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def readyz(proxy) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # the metrics endpoint starts just after the proxy's listener
        return 0, ""


def unmerged(proxy, table: str, reason: str) -> float:
    """pgcutover_fallback_unmerged_total{route=table, reason=reason} from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    needle = f'pgcutover_fallback_unmerged_total{{reason="{reason}",route="public.{table}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle):])
    return 0.0


def vec_text(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def brute_force(vectors: np.ndarray, q: np.ndarray, k: int, ids: range | None = None) -> list[int]:
    ids = ids or range(1, ROWS + 1)
    rows = np.asarray([vectors[i - 1] for i in ids], dtype=np.float64)
    d = np.sqrt(((rows - q.astype(np.float64)) ** 2).sum(axis=1))
    return [ids[i] for i in np.argsort(d, kind="stable")[:k]]


SIMILAR = "SELECT id FROM {table} ORDER BY embedding <-> %s LIMIT 5"


# -- item 8 and item 1 through the store-not-ready reason -------------------------------------------------------
def test_store_not_ready_is_an_error_and_the_session_goes_on(proxy, tables) -> None:
    before = unmerged(proxy, "ix_not_ready", "store-not-ready")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(pgerrors.FeatureNotSupported) as caught:
            conn.execute(SIMILAR.format(table="ix_not_ready"), [vec_text(tables[0])])
        text = str(caught.value)
        assert "public.ix_not_ready" in text and "store-not-ready" in text and "no_such_legacy" in text, text
        assert caught.value.diag.sqlstate == "0A000"
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)  # the session is usable
        conn.execute("BEGIN")  # inside a transaction it is an error like any other: the transaction aborts
        with pytest.raises(pgerrors.FeatureNotSupported):
            conn.execute(SIMILAR.format(table="ix_not_ready"), [vec_text(tables[0])])
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert unmerged(proxy, "ix_not_ready", "store-not-ready") >= before + 2


def test_refusal_in_a_pipeline_keeps_skip_to_sync(proxy, tables) -> None:
    """Extended protocol on a raw socket: a good execution, the refused one, another after it, one Sync. The
    client gets the first result, ParseComplete, the 0A000 error where the BindComplete was due, nothing for the
    skipped messages, and ReadyForQuery; then the same connection answers again (simple Query refused too)."""
    sql = "SELECT id FROM ix_not_ready ORDER BY embedding <-> $1 LIMIT 3"
    with RawClient(proxy.port) as client:
        client.startup()
        client.send(
            msg.parse_message("", "SELECT 7") + msg.bind_message(msg.Bind("", "", (), (), ())) + msg.execute()
            + msg.parse_message("", sql) + msg.bind_message(msg.Bind("", "", (), (vec_text(tables[1]).encode(),), ()))
            + msg.describe("P", "") + msg.execute()
            + msg.parse_message("", "SELECT 8") + msg.bind_message(msg.Bind("", "", (), (), ())) + msg.execute()
            + msg.SYNC)
        replies = client.until_ready()
        kinds = [kind for kind, _ in replies]
        assert kinds == [codes.B_PARSE_COMPLETE, codes.B_BIND_COMPLETE, codes.B_DATA_ROW, codes.B_COMMAND_COMPLETE,
                         codes.B_PARSE_COMPLETE, codes.B_ERROR, codes.B_READY], replies
        assert data_rows(replies) == [[b"7"]]
        assert errors(replies)[0]["C"] == "0A000"
        simple = client.query(sql.replace("$1", f"'{vec_text(tables[1])}'"))
        assert [e["C"] for e in errors(simple)] == ["0A000"] and simple[-1][0] == codes.B_READY
        assert data_rows(client.query("SELECT 9")) == [[b"9"]]


def test_primary_only_answers_from_pgvector_rows_with_a_notice(proxy, tables, pg) -> None:
    before = unmerged(proxy, "ix_bad_legacy", "store-not-ready")
    notices: list[str] = []
    q = tables[MIGRATED + 5]  # a legacy row: the exact answer would have it first
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        got = [r[0] for r in conn.execute(SIMILAR.format(table="ix_bad_legacy"), [vec_text(q)])]
    assert got == brute_force(tables, q, 5, range(1, MIGRATED + 1))  # pgvector rows only, as promised
    assert any("public.ix_bad_legacy" in n and "store-not-ready" in n and "pgvector rows only" in n
               for n in notices), notices
    assert unmerged(proxy, "ix_bad_legacy", "store-not-ready") == before + 1


def test_cancel_ends_the_wait_for_a_store(proxy, tables) -> None:
    """fallback_wait_ms is ten minutes here: only the CancelRequest can end the wait (57014)."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        done = threading.Event()

        def cancel_until_done() -> None:
            while not done.wait(0.2):  # repeated: a cancel that arrives before the query is waiting is a no-op
                conn.cancel_safe()

        canceller = threading.Thread(target=cancel_until_done)
        canceller.start()
        try:
            with pytest.raises(pgerrors.QueryCanceled):
                conn.execute(SIMILAR.format(table="ix_slow"), [vec_text(tables[0])])
        finally:
            done.set()
            canceller.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_wrong_vector_column_answers_at_once(proxy, tables) -> None:
    """seen by a user: a route with a wrong vector_column made every similarity query on it hang. Now the
    extended protocol gets the server's own error for the missing column (at Parse), the simple protocol 0A000."""
    sql = SIMILAR.format(table="ix_bad_vec")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(pgerrors.UndefinedColumn):
            conn.execute(sql, [vec_text(tables[0])])
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with RawClient(proxy.port) as client:
        client.startup()
        replies = client.query(sql.replace("%s", f"'{vec_text(tables[0])}'"))
        assert [e["C"] for e in errors(replies)] == ["0A000"] and "no_such_column" in errors(replies)[0]["M"]


def test_readyz_says_which_store_and_why(proxy) -> None:
    status, body = readyz(proxy)
    assert status == 503
    assert "fallback store public.ix_bad_vec: load failed:" in body and "no_such_column" in body, body
    assert "fallback store public.ix_slow: load failed:" in body and "no_such_legacy" in body, body
    assert "public.ix_items" not in body  # loaded


def test_show_fallback_and_stats_list_refusals(proxy, tables) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, pytest.raises(pgerrors.FeatureNotSupported):
        conn.execute(SIMILAR.format(table="ix_not_ready"), [vec_text(tables[0])])
    admin = subprocess.run([pg_binary("psql"), "-X", "-A", "-t", "-d", proxy.dsn(database="pgcutover"),
                            "-c", "SHOW FALLBACK", "-c", "SHOW STATS"], capture_output=True, text=True)
    assert admin.returncode == 0, admin.stderr
    fallback = [line for line in admin.stdout.splitlines() if line.startswith("public.ix_not_ready|")]
    assert fallback and "|error|store-not-ready=" in fallback[0], admin.stdout
    assert "unmerged:public.ix_not_ready:store-not-ready|" in admin.stdout


# -- item 4: statement lifecycle ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["DEALLOCATE ALL", "DISCARD ALL", "DISCARD PLANS", "RESET ALL"])
def test_merged_statements_survive_deallocate_all(proxy, tables, command) -> None:
    """psycopg prepares from the first execution (prepare_threshold=0): the proxy's merged statement for it is
    prepared once; after the client's DEALLOCATE ALL / DISCARD ALL it is prepared again, not missing."""
    q = tables[MIGRATED + 20]
    expected = brute_force(tables, q, 5)
    with psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=0) as conn:
        for round_ in range(3):
            for _ in range(2):
                got = [r[0] for r in conn.execute(SIMILAR.format(table="ix_items"), [vec_text(q)])]
                assert got == expected, round_
            conn.execute(command)
        unprepared = [r[0] for r in conn.execute(SIMILAR.format(table="ix_items"), [vec_text(q)], prepare=False)]
        assert unprepared == expected
        conn.execute(command, prepare=False)
        assert [r[0] for r in conn.execute(SIMILAR.format(table="ix_items"), [vec_text(q)])] == expected


def test_merged_statements_survive_an_error_that_skips_their_parse(proxy, tables) -> None:
    """In a pipeline, an error before our Parse makes the server skip it: it is prepared again next time."""
    q = tables[MIGRATED + 21]
    expected = brute_force(tables, q, 5)
    with psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=0) as conn:
        for _ in range(3):
            with pytest.raises(pgerrors.DivisionByZero), conn.pipeline():
                conn.execute("SELECT 1/0")
                conn.execute(SIMILAR.format(table="ix_items"), [vec_text(q)])
            got = [r[0] for r in conn.execute(SIMILAR.format(table="ix_items"), [vec_text(q)])]
            assert got == expected


def test_merged_executions_are_labelled_merged(proxy, tables) -> None:
    before = scrape(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(SIMILAR.format(table="ix_items"), [vec_text(tables[3])]).fetchall()
        with pytest.raises(pgerrors.FeatureNotSupported):
            conn.execute(SIMILAR.format(table="ix_not_ready"), [vec_text(tables[3])])
    after = scrape(proxy)
    assert after["pgcutover_queries_total"] >= before.get("pgcutover_queries_total", 0) + 2
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'pgcutover_queries_total{outcome="ok",route="public.ix_items",target="fallback_merged"}' in text
    # every series is exported from the start (zero), so "never labelled merged" reads: still zero
    refused_route = 'route="public.ix_not_ready",target="fallback_merged"'
    for line in text.splitlines():
        if line.startswith("pgcutover_queries_total{") and refused_route in line:
            assert float(line.rsplit(" ", 1)[1]) == 0.0, line
    assert 'pgcutover_queries_total{outcome="error",route="public.ix_not_ready",target="fallback_refused"}' in text


# -- item 7: one decision ----------------------------------------------------------------------------------------
SHAPES = (
    "SELECT id FROM ix_items ORDER BY embedding <-> $1 LIMIT 5",
    "SELECT id FROM ix_items ORDER BY embedding <=> $1 DESC LIMIT 4",
    "SELECT id FROM ix_items ORDER BY embedding <+> $1 LIMIT 5",
    "SELECT id, row_number() OVER (ORDER BY embedding <-> $1) FROM ix_items ORDER BY embedding <-> $1 LIMIT 5",
    "SELECT id FROM ix_items WHERE mod(id, 3) = 0 ORDER BY l2_distance(embedding, $1) LIMIT 5",
)


@pytest.mark.parametrize("sql", SHAPES)
def test_explain_predicts_what_the_proxy_does(proxy, tables, pg, sql) -> None:
    """`explain --live` and the proxy take one decision: "merge" answers as if the table were fully migrated (the
    same SQL on a fully migrated copy), "refuse" gets 0A000 (on_inexact = "error")."""
    import argparse
    import io

    from pgcutover.rewrite.cli import cmd_explain, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = io.StringIO()
    cmd_explain(parser.parse_args(["explain", "--config", str(proxy.config_path), "--live", sql]), out)
    text = out.getvalue()
    decision = next(line.split()[1] for line in text.splitlines() if line.startswith("decision:"))
    assert decision in ("merge", "refuse"), text
    q = vec_text(tables[MIGRATED + 33])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        if decision == "refuse":
            with pytest.raises(pgerrors.FeatureNotSupported):
                conn.execute(sql.replace("$1", "%s"), [q] * sql.count("$1"))
            return
        got = conn.execute(sql.replace("$1", "%s"), [q] * sql.count("$1")).fetchall()
    with psycopg.connect(pg.dsn(), autocommit=True) as direct:
        want = direct.execute(sql.replace("$1", "%s::vector").replace("ix_items", "ix_full"),
                              [q] * sql.count("$1")).fetchall()
    assert got == want, text


def test_decision_values() -> None:
    """The function both call: forward / rewrite / merge / refuse, with the route's on_inexact."""
    from dataclasses import replace

    from pgcutover.core.config import Route
    from pgcutover.rewrite.plan import passthrough

    route = Route(table="public.t", column="embedding", vector_column="v", legacy_column="embedding")
    plan = replace(passthrough("similarity", route), query=object())  # a plan that rewrites
    assert decide(passthrough("not-similarity"), None).action == "forward"
    assert decide(plan, "shadow", route, store=True).action == "rewrite"
    assert decide(plan, "primary", route, store=False).action == "rewrite"
    merged = decide(plan, "primary", route, store=True)
    assert (merged.action, merged.target) == ("merge", "fallback_merged")
    refused = decide(plan, "primary", route, store=True, unmergeable="fallback-window")
    assert (refused.action, refused.target, refused.error) == ("refuse", "fallback_refused", True)
    assert "0A000" in refused.describe() and "fallback-window" in refused.describe()
    lenient = decide(plan, "primary", replace(route, on_inexact="primary_only"), store=True, unmergeable="x")
    assert (lenient.action, lenient.target, lenient.error) == ("refuse", "primary", False)


# -- item 4 for the other target's statements (a split route, sticky = "query") ----------------------------------
routed_tables = routing.routed_tables  # the routed table and its shadow (a fixture of tests/routing)


@pytest.fixture(scope="module")
def split_proxy(start_proxy, routed_tables):
    """Split 50 in the TOML and in the shared routing table, which wins over the TOML: tests/routing may have left
    a split or a rollback there for this table."""
    proxy = start_proxy(routing.ROUTE_TOML.format(sticky="query").replace("split = 0", "split = 50"))
    routing.set_split(proxy, 50)
    deadline = time.monotonic() + 30  # the proxy applies the table's NOTIFY within a second or so
    with psycopg.connect(proxy.dsn(database="pgcutover"), autocommit=True) as console:
        while time.monotonic() < deadline:
            rows = console.execute("SHOW ROUTES").fetchall()
            if next(float(r[5]) for r in rows if r[0] == "public.rt_items") == 50:
                break
            time.sleep(0.1)
    return proxy


def test_other_target_statements_survive_skipped_parses_and_deallocate(split_proxy) -> None:
    """A prepared statement executed on both targets: the other target's statement of ours is prepared again
    after an error made the server skip its Parse, and after DEALLOCATE ALL."""
    sql = "SELECT id, content FROM rt_items ORDER BY embedding <-> %s LIMIT 3"
    vector = "[" + ",".join(["0.5"] * 8) + "]"
    with psycopg.connect(split_proxy.dsn(), autocommit=True, prepare_threshold=0) as conn:
        seen = set()
        for round_ in range(12):
            if round_ % 3 == 0:
                with pytest.raises(pgerrors.DivisionByZero), conn.pipeline():
                    conn.execute("SELECT 1/0")
                    conn.execute(sql, [vector])
            if round_ % 4 == 3:
                conn.execute("DEALLOCATE ALL")
            for _ in range(4):
                rows = conn.execute(sql, [vector]).fetchall()
                assert [r[0] for r in rows] and len({r[1] for r in rows}) == 1
                seen.add(rows[0][1])
        assert seen == {"primary", "shadow"}  # both targets answered the same prepared statement
