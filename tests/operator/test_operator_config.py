"""Config validation: a schema with types, ranges and values, every problem at once with file:line, and
`pgcutover check-config [--live]` for CI pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcutover.core.config import ConfigError, load_config
from pgcutover.proxy.embedded import EmbeddedPostgres
from tests.operator.cli import config_text, one_line_failure, pgcutover

BROKEN = """\
[proxy]
listen = 60001
upstream = 5
metrcs = "127.0.0.1:9"

[admin]
users = "postgres"

[[route]]
table = "items"
column = "embedding"
dims = "64"
fallback = "no"
splitt = 3
sticky = "sesion"

[[route]]
table = "b"
column = "e"
split = 150
min_recall = 2
"""


def test_every_problem_at_once_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    expected = [
        (2, "listen = 60001"), (3, "upstream = 5"), (4, "unknown key 'metrcs' (did you mean 'metrics'?)"),
        (7, 'users = "postgres": expected a list of strings'), (12, 'dims = "64": expected an integer'),
        (13, 'fallback = "no": expected true or false'), (14, "unknown key 'splitt' (did you mean 'split'?)"),
        (15, "did you mean 'session'?"), (20, "split = 150: expected between 0 and 100"),
        (21, "min_recall = 2: expected between 0 and 1"),
    ]
    assert len(lines) == len(expected), lines
    for line, (number, text) in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}:{number}: ") and text in line, line


def test_cli_reports_all_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    for argv in (["serve"], ["check-config"], ["route", "list"], ["status"], ["explain", "SELECT 1"]):
        run = pgcutover(*argv, "--config", str(path))
        one_line_failure(run, code=2)
        assert run.stderr.count(str(path) + ":") == 10, run.stderr


@pytest.mark.parametrize("section,key,value,expected", [
    ("proxy", "listen", "60001", 'a string "host:port"'),
    ("proxy", "listen", '"localhost:99999"', "port from 0 to 65535"),
    ("proxy", "max_message_size", "10", "at least 1024"),
    ("proxy", "connect_timeout", "0", "greater than 0"),
    ("proxy", "upstream", '"mysql://x"', "postgresql://"),
    ("admin", "users", '"postgres"', "list of strings"),
    ("admin", "token", "5", "a string"),
    ("route", "fallback", '"no"', "true or false"),
    ("route", "dims", '"64"', "an integer"),
    ("route", "dims", "0", "between 1 and 16000"),
    ("route", "metric", '"cosin"', "did you mean 'cosine'?"),
    ("route", "mirror", "-1", "between 0 and 100"),
    ("route", "max_error_rate", "true", "a number"),
])
def test_types_ranges_and_values(tmp_path: Path, section: str, key: str, value: str, expected: str) -> None:
    proxy = {"listen": '"127.0.0.1:0"', "upstream": '"postgresql://u@h/db"'}
    route = {"table": '"t"', "column": '"c"'}
    admin: dict[str, str] = {}
    {"proxy": proxy, "admin": admin, "route": route}[section][key] = value
    text = "[proxy]\n" + "".join(f"{k} = {v}\n" for k, v in proxy.items())
    text += "[admin]\n" + "".join(f"{k} = {v}\n" for k, v in admin.items())
    text += "[[route]]\n" + "".join(f"{k} = {v}\n" for k, v in route.items())
    path = tmp_path / "one.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and expected in message and f"{key} = " in message, message
    line = text.splitlines().index(f"{key} = {value}") + 1
    assert message.startswith(f"{path}:{line}: "), message


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('[proxy]\nupstream = "mysql://u:hunter2@h/db"\n[admin]\ntoken = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hunter2" not in str(caught.value)


def test_unknown_section(tmp_path: Path) -> None:
    path = tmp_path / "section.toml"
    path.write_text('[proxy]\nupstream = "postgresql://u@h/db"\n[[routes]]\ntable = "t"\n')
    with pytest.raises(ConfigError, match=r"section.toml:3: unknown section \[routes\] \(did you mean 'route'\?\)"):
        load_config(path)


def test_check_config_static(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(config_text("postgresql://postgres@127.0.0.1:1/postgres"))
    run = pgcutover("check-config", "--config", str(path))
    assert run.returncode == 0 and "valid" in run.stdout, run.stderr
    run = pgcutover("check-config", env={"PGCUTOVER_CONFIG": str(path)})
    assert run.returncode == 0, run.stderr


def test_check_config_live(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    pg.psql("DROP SCHEMA IF EXISTS cc CASCADE; CREATE SCHEMA cc;"
            "CREATE TABLE cc.good (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE INDEX ON cc.good USING hnsw (embedding vector_cosine_ops);"
            "CREATE TABLE cc.good_shadow (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE INDEX ON cc.good_shadow USING hnsw (embedding vector_cosine_ops);"
            "CREATE TABLE cc.bad (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE cc.bad_shadow (id bigint PRIMARY KEY, embedding vector(4));"
            "ALTER TABLE cc.bad ENABLE ROW LEVEL SECURITY;")
    upstream = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable"
    good = tmp_path / "good.toml"
    good.write_text(config_text(upstream, routes='[[route]]\ntable = "cc.good"\ncolumn = "embedding"\n'
                                                 'shadow_table = "cc.good_shadow"\n'))
    run = pgcutover("check-config", "--live", "--config", str(good))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 error(s), 0 warning(s)" in run.stdout, run.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(config_text(upstream, routes=(
        '[[route]]\ntable = "cc.bad"\ncolumn = "embedding"\nshadow_table = "cc.bad_shadow"\n\n'
        '[[route]]\ntable = "cc.nothing"\ncolumn = "embedding"\n\n'
        '[[route]]\ntable = "cc.good"\ncolumn = "embeding"\nshadow_table = "cc.gone"\n')))
    run = pgcutover("check-config", "--live", "--config", str(bad))
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "vector(4) but cc.bad.embedding is vector(3)" in out
    assert "row-level security is on on cc.bad but off on shadow cc.bad_shadow" in out
    assert "no valid HNSW/IVFFlat index on embedding" in out
    assert "table cc.nothing does not exist" in out
    assert "column = 'embeding': no such column in cc.good" in out
    assert "shadow_table cc.gone does not exist" in out
    assert "5 error(s)" in out or "6 error(s)" in out, out
