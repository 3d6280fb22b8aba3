"""COPY and LISTEN, differential with psycopg: each scenario runs against the server directly and through the
proxy, and what the client sees (rows, errors with SQLSTATE and message, the session afterwards) must match."""

from __future__ import annotations

import psycopg
import pytest

TARGETS = ["direct", "proxy"]


def dsn_for(target: str, pg, proxy) -> str:
    return pg.dsn() if target == "direct" else proxy.dsn()


def copy_scenarios(dsn: str, table: str) -> list[object]:
    seen: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text, emb vector(3))")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                for i in range(2000):
                    copy.write_row((i, f"row {i}", f"[{i},{i + 1},{i + 2}]"))
            seen.append(cur.rowcount)
            rows = []
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
                rows.extend(bytes(block) for block in copy)
            seen.append(b"".join(rows))
            for bad in (f"COPY {table} FROM STDIN", f"COPY {table} (id) FROM STDIN"):
                try:
                    with cur.copy(bad) as copy:
                        copy.write(b"1\tduplicate\t[1,2,3]\n" if "(id)" not in bad else b"not-a-number\n")
                except psycopg.Error as exc:
                    seen.append((exc.sqlstate, exc.diag.message_primary))
            try:  # the client aborts its own COPY: CopyFail
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    copy.write_row((90000, "x", "[1,1,1]"))
                    raise RuntimeError("client gives up")
            except psycopg.Error as exc:
                seen.append((exc.sqlstate, "copy failed"))
            except RuntimeError:
                seen.append("client error propagated")
            seen.append(conn.execute(f"SELECT count(*) FROM {table}").fetchone())
        conn.execute(f"DROP TABLE {table}")
    return seen


def test_copy_same_as_direct(pg, proxy):
    direct = copy_scenarios(pg.dsn(), "copy_diff")  # one after the other: same table name, same messages
    assert copy_scenarios(proxy.dsn(), "copy_diff") == direct


@pytest.mark.parametrize("target", TARGETS)
def test_listen_unlisten_and_notify_in_transaction(pg, proxy, target: str):
    """Notifications sent in a transaction arrive at commit, none after UNLISTEN; pids are the real ones."""
    with psycopg.connect(dsn_for(target, pg, proxy), autocommit=True) as listener, \
            psycopg.connect(dsn_for(target, pg, proxy)) as sender:
        listener.execute("LISTEN diff_channel")
        sender.execute("NOTIFY diff_channel, 'one'")
        sender.execute("SELECT pg_notify('diff_channel', 'two')")
        sender.commit()
        got = [(n.channel, n.payload, n.pid) for n in listener.notifies(timeout=10, stop_after=2)]
        assert got == [("diff_channel", "one", sender.info.backend_pid),
                       ("diff_channel", "two", sender.info.backend_pid)]
        listener.execute("UNLISTEN diff_channel")
        sender.execute("NOTIFY diff_channel, 'three'")
        sender.commit()
        listener.execute("SELECT 1")  # a round trip: a notification would have arrived with it
        assert list(listener.notifies(timeout=0.5)) == []
