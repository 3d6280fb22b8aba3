"""Backfill progress an operator can trust: the achieved rate over a sliding window (under --max-rate too), an ETA
from it, Ctrl-C saying where it stopped and how to resume, `status` telling running from interrupted, one pass
numbering everywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgcutover.proxy.embedded import EmbeddedPostgres
from tests.operator.cli import CHILD_PATH, ROOT, config_text, pgcutover

DIMS = 4
# In-process code runs in a child with the worktree first on sys.path: under pytest, `deploy` is tests/deploy.
PRELUDE = """
import asyncio, io, json, sys
from pgcutover.deploy.backfill import BackfillOptions, Progress, RateWindow, _duration, backfill
from pgcutover.core.config import load_config

class Terminal(io.StringIO):
    def isatty(self):
        return True
"""


def python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": CHILD_PATH})
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_rate_window_counts_the_sleeps() -> None:
    out = python("""
window = RateWindow(seconds=10)
for second in range(30):  # 400 rows arrive in one fast batch each second, then the throttle sleeps
    window.add(400 * second, now=float(second))
    window.add(400 * second, now=second + 0.9)
print(window.rate())
""")
    assert float(out) == pytest.approx(400, rel=0.1)


def test_eta_follows_the_throttle() -> None:
    out = python("""
stream = Terminal()
progress = Progress("t pass 1", 10_000, stream, max_rate=400)
progress.update(2_000, 2_748.0, final=True)  # a burst after a stall: what remains still goes at 400/s
progress.update(2_000, None, final=True)  # nothing measured yet
print(stream.getvalue())
""")
    assert out.count("400 rows/s ETA 20s") == 2, out


@pytest.fixture
def table(pg: EmbeddedPostgres, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    name = f"bf_{request.node.name.split('[')[0][-20:]}"
    pg.psql(f"DROP TABLE IF EXISTS public.{name}; DELETE FROM pgcutover.backfill_checkpoint WHERE table_name = "
            f"'public.{name}'" if _has_schema(pg) else f"DROP TABLE IF EXISTS public.{name}")
    pg.psql(f"CREATE TABLE public.{name} (id int PRIMARY KEY, emb text, emb_vector vector({DIMS}));"
            f"INSERT INTO public.{name} SELECT i, '[' || array_to_string(array_fill(i::float8, ARRAY[{DIMS}]), ',') "
            f"|| ']' FROM generate_series(1, 3000) i")
    config = tmp_path / "bf.toml"
    config.write_text(config_text(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable",
                                  routes=f'[[route]]\ntable = "public.{name}"\ncolumn = "emb"\n'
                                         f'vector_column = "emb_vector"\nlegacy_column = "emb"\ndims = {DIMS}\n'))
    return f"public.{name}", config


def _has_schema(pg: EmbeddedPostgres) -> bool:
    return pg.psql("SELECT to_regclass('pgcutover.backfill_checkpoint') IS NOT NULL").strip() == "t"


LINE = re.compile(r"([\d,]+)/([\d,]+) rows \(\s*[\d.]+%\) ([\d,]+) rows/s ETA (\d+h\d+m\d+s|\d+m\d+s|\d+s|\?)")


def test_progress_under_max_rate(table: tuple[str, Path]) -> None:
    name, config = table
    out = python(f"""
stream = Terminal()
[result] = asyncio.run(backfill(load_config({str(config)!r}), {name!r},
                                BackfillOptions(batch=100, max_rate=1500, workers=2), stream))
lines = stream.getvalue().replace("\\r", "\\n")
print(json.dumps({{"text": lines, "passes": result.pass_numbers, "rate": result.rate,
                  "etas": [_duration(n) for n in range(0, 4000)]}}))
""")
    data = json.loads(out)
    lines = LINE.findall(data["text"])
    assert len(lines) >= 3, data["text"]
    for done, total, rate, eta in lines:
        done, total, rate = (int(x.replace(",", "")) for x in (done, total, rate))
        assert 0 < rate <= 1500, lines
        if total > done:  # the ETA is what remains at the rate shown (rounded as shown)
            assert eta in {data["etas"][int((total - done) / r)] for r in (rate - 0.5, rate, rate + 0.5)}, (eta, rate)
        else:
            assert eta == "0s"
    assert data["passes"] == [1] and "pass 1" in data["text"]
    assert 0 < data["rate"] <= 1500


def _status(config: Path, name: str) -> dict:
    run = pgcutover("status", "--json", "--no-diff", "--config", str(config))
    assert run.returncode == 0, run.stderr
    return next(s for s in json.loads(run.stdout)["routes"] if s["table"] == name)["backfill"]


def test_ctrl_c_says_where_and_how_to_resume(pg: EmbeddedPostgres, table: tuple[str, Path]) -> None:
    name, config = table
    argv = ["backfill", "--config", str(config), "--batch", "50", "--max-rate", "300", "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "pgcutover.proxy.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": CHILD_PATH})
    try:
        deadline = time.monotonic() + 60
        while pg.psql("SELECT coalesce(sum(rows_done), 0) FROM pgcutover.backfill_checkpoint WHERE table_name = "
                      f"'{name}'" if _has_schema(pg) else "SELECT 0").strip() in ("", "0"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        assert _status(config, name)["state"] == "running"  # its connections are there, its rows move
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("pgcutover backfill: interrupted"))
    match = re.search(rf"{re.escape(name)} pass 1 stopped at ([\d,]+)/3,000 rows .*resume with: (pgcutover .*)$",
                      line)
    assert match, line
    assert "backfill --config" in match.group(2) and "--max-rate 300" in match.group(2)
    assert _status(config, name)["state"] == "interrupted"
    resumed = pgcutover("backfill", "--config", str(config), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "pass 1," in resumed.stdout  # the same pass, resumed: one numbering
    status = _status(config, name)
    assert status["state"] == "finished" and status["pass"] == 1


def test_status_tells_a_stuck_backfill(pg: EmbeddedPostgres, table: tuple[str, Path]) -> None:
    """Connections there but nothing moving (a stopped or hung worker): `stale`, not `running`."""
    name, config = table
    argv = ["backfill", "--config", str(config), "--batch", "50", "--max-rate", "300", "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "pgcutover.proxy.cli", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": CHILD_PATH})
    try:
        deadline = time.monotonic() + 60
        while _status(config, name) is None or _status(config, name)["state"] != "running":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)  # hung: its connections stay open, no batch commits
        time.sleep(0.5)  # a batch in flight commits or waits
        pg.psql(f"UPDATE pgcutover.backfill_checkpoint SET updated_at = now() - interval '10 minutes' "
                f"WHERE table_name = '{name}'")
        assert _status(config, name)["state"] == "stale"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(30)
