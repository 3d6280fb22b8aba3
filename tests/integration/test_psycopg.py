"""psycopg 3 (libpq) through the proxy: text and binary results, server-side prepared statements, pipeline
mode with an error in the middle, COPY in both directions and formats, notices and notifications. Each
scenario runs directly and through the proxy and the two outcomes must be equal."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb


def differential(pg, proxy, scenario: Callable[[psycopg.Connection, str], Any], **kwargs: Any) -> Any:
    outcomes = []
    for dsn, suffix in ((pg.dsn(), "direct"), (proxy.dsn(), "proxy")):
        with psycopg.connect(dsn, **kwargs) as conn:
            outcomes.append(scenario(conn, suffix))
    assert outcomes[1] == outcomes[0]
    return outcomes[1]


VALUES_SQL = (
    "SELECT %(i)s::int, %(b)s::bigint, %(f)s::float8, %(n)s::numeric, %(t)s::text, %(by)s::bytea, "
    "%(j)s::jsonb, %(a)s::int[], %(ts)s::timestamptz, %(u)s::uuid, %(d)s::date, %(nul)s::text, "
    "'[1,2,3]'::vector::text"
)
VALUES = {
    "i": 42, "b": 2**40, "f": 0.1, "n": decimal.Decimal("-1.000000000000000000001"), "t": "héllo\tworld",
    "by": b"\x00\x01\xff" * 50, "j": Jsonb({"x": [1, None, "y"]}), "a": [3, None, 5],
    "ts": dt.datetime(2001, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC), "u": uuid.UUID(int=7),
    "d": dt.date(1970, 1, 1), "nul": None,
}


def test_text_and_binary_results(pg, proxy):
    def scenario(conn: psycopg.Connection, _: str) -> list[Any]:
        text_row = conn.cursor().execute(VALUES_SQL, VALUES).fetchone()
        binary_row = conn.cursor(binary=True).execute(VALUES_SQL, VALUES).fetchone()
        assert text_row == binary_row
        # binary parameters too (%b), and many rows in binary
        cur = conn.cursor(binary=True)
        rows = cur.execute("SELECT g, md5(g::text), %b::bytea FROM generate_series(1, 2000) g",
                           (b"\x00\xfe",)).fetchall()
        return [text_row, len(rows), rows[-1], cur.description[1].name]

    result = differential(pg, proxy, scenario)
    assert result[0][0] == 42 and result[0][5] == VALUES["by"]


def test_server_side_prepared_statements(pg, proxy):
    def scenario(conn: psycopg.Connection, _: str) -> list[Any]:
        out = []
        for i in range(10):
            out.append(conn.execute("SELECT %s::int * 2, %s::text", (i, f"p{i}"), prepare=True).fetchone())
        prepared = conn.execute("SELECT statement FROM pg_prepared_statements WHERE name LIKE '_pg3_%%' "
                                "ORDER BY statement").fetchall()
        out.append(prepared)
        # the automatic threshold (prepare_threshold=5) takes the same path
        for _ in range(7):
            out.append(conn.execute("SELECT count(*) FROM pg_class WHERE relkind = %s", ("r",)).fetchone() > (0,))
        conn.execute("DEALLOCATE ALL")
        out.append(conn.execute("SELECT 'after deallocate'").fetchone())
        return out

    result = differential(pg, proxy, scenario, autocommit=True)
    assert result[9] == (18, "p9")
    assert result[10] == [("SELECT $1::int * 2, $2::text",)]


def test_pipeline_with_error_in_the_middle(pg, proxy):
    """An error in a pipeline makes the server skip to Sync: later statements report PipelineAborted, the
    statements after the next Sync run normally, and the connection stays usable."""

    def scenario(conn: psycopg.Connection, suffix: str) -> list[Any]:
        table = f"pq_pipe_{suffix}"
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        events: list[Any] = []
        skipped = None  # psycopg may surface the error at a later execute(), before this one is queued
        try:
            with conn.pipeline() as pipe:
                first = conn.execute(f"INSERT INTO {table} VALUES (1) RETURNING id")
                pipe.sync()
                conn.execute(f"INSERT INTO {table} VALUES (2)")
                conn.execute(f"INSERT INTO {table} VALUES (2)")  # unique violation
                skipped = conn.execute(f"INSERT INTO {table} VALUES (3) RETURNING id")
                conn.execute("SELECT 1/0")
                pipe.sync()
        except errors.UniqueViolation as exc:
            events.append(("raised", exc.sqlstate))
        events.append(first.fetchone())
        try:  # never run either way: not queued, or discarded by the server after the error
            events.append(skipped.fetchone() if skipped is not None else "skipped")
        except psycopg.Error:
            events.append("skipped")
        with conn.pipeline() as pipe:
            after = [conn.execute(f"INSERT INTO {table} VALUES ({i}) RETURNING id") for i in (10, 11, 12)]
            pipe.sync()
            events.extend(cur.fetchone() for cur in after)
        events.append(conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone())
        conn.execute(f"DROP TABLE {table}")
        return events

    events = differential(pg, proxy, scenario, autocommit=True)
    assert events[0] == ("raised", "23505")
    assert events[-1] == ([1, 10, 11, 12],)


def test_copy_text_and_binary(pg, proxy):
    def scenario(conn: psycopg.Connection, suffix: str) -> list[Any]:
        table = f"pq_copy_{suffix}"
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id int, name text, data bytea, at timestamptz)")
        at = dt.datetime(2020, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
        with cur.copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, f"text\t{i}\n", bytes([i % 256, 0]), at))
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea", "timestamptz"])
            for i in range(2000, 4000):
                copy.write_row((i, f"binary {i}", b"\x00" * (i % 7), at))
        with cur.copy(f"COPY {table} FROM STDIN") as copy:  # raw blocks, split mid-line
            copy.write(b"4000\traw\t\\\\x01\t2020-01-01 00:00:00+00\n40")
            copy.write(b"01\traw\t\\\\x02\t2020-01-01 00:00:00+00\n")
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
            text_out = b"".join(bytes(block) for block in copy)
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
            binary_out = b"".join(bytes(block) for block in copy)
        with cur.copy(f"COPY (SELECT id, name FROM {table} WHERE id >= 3998 ORDER BY id) TO STDOUT "
                      "(FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            typed_rows = list(copy.rows())
        count = cur.execute(f"SELECT count(*) FROM {table}").fetchone()
        cur.execute(f"DROP TABLE {table}")
        return [count, text_out, binary_out, typed_rows]

    result = differential(pg, proxy, scenario, autocommit=True)
    assert result[0] == (4002,)
    assert result[2].startswith(b"PGCOPY\n\xff\r\n\0")
    assert result[3] == [(3998, "binary 3998"), (3999, "binary 3999"), (4000, "raw"), (4001, "raw")]


def test_copy_error_keeps_connection_usable(pg, proxy):
    def scenario(conn: psycopg.Connection, suffix: str) -> list[Any]:
        table = f"pq_copy_err_{suffix}"
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        events: list[Any] = []
        try:
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                copy.write(b"1\n2\nnot a number\n3\n")
        except errors.InvalidTextRepresentation as exc:
            events.append(exc.sqlstate)
        try:
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                copy.write(b"5\n")
                raise RuntimeError("client gives up")  # psycopg sends CopyFail
        except RuntimeError:
            events.append("copy failed by client")
        events.append(conn.execute(f"SELECT count(*) FROM {table}").fetchone())
        conn.execute(f"DROP TABLE {table}")
        return events

    assert differential(pg, proxy, scenario, autocommit=True) == ["22P02", "copy failed by client", (0,)]


def test_notices_handler(pg, proxy):
    def scenario(conn: psycopg.Connection, _: str) -> list[Any]:
        seen: list[tuple[str | None, str | None, str | None]] = []
        conn.add_notice_handler(lambda diag: seen.append((diag.severity, diag.sqlstate, diag.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'first %', 1; RAISE WARNING 'second'; "
                     "RAISE NOTICE USING MESSAGE = 'custom', ERRCODE = 'P0042'; END $$")
        conn.execute("DROP TABLE IF EXISTS pq_surely_missing_table")  # the server's own NOTICE
        return seen

    assert differential(pg, proxy, scenario, autocommit=True) == [
        ("NOTICE", "00000", "first 1"), ("WARNING", "01000", "second"), ("NOTICE", "P0042", "custom"),
        ("NOTICE", "00000", 'table "pq_surely_missing_table" does not exist, skipping')]


def test_notifies_generator(pg, proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as listener:
        listener.execute("LISTEN pq_chan")
        listener.execute("LISTEN pq_other")

        def send() -> None:
            with psycopg.connect(pg.dsn(), autocommit=True) as direct, \
                    psycopg.connect(proxy.dsn(), autocommit=True) as sender:
                direct.execute("NOTIFY pq_chan, 'one'")
                sender.execute("SELECT pg_notify('pq_other', 'two')")
                sender.execute("NOTIFY pq_chan")

        thread = threading.Thread(target=send)
        thread.start()
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=3)]
        thread.join()
        assert got == [("pq_chan", "one"), ("pq_other", "two"), ("pq_chan", "")]
        assert listener.execute("SELECT 'still in sync'").fetchone() == ("still in sync",)


def test_parameter_status(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="pq-initial") as conn:
        assert conn.info.parameter_status("application_name") == "pq-initial"
        assert conn.info.parameter_status("server_version").startswith("18")
        conn.execute("SET application_name = 'pq-changed'")
        conn.execute("SET DateStyle = 'German, DMY'")
        assert conn.info.parameter_status("application_name") == "pq-changed"
        assert conn.info.parameter_status("DateStyle") == "German, DMY"
        assert conn.execute("SELECT '2024-03-01'::date::text").fetchone() == ("01.03.2024",)
