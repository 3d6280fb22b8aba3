"""The readiness page (`pgcutover report --html FILE`, GET /report) loaded in a real headless Chromium: it renders
charts (non-empty SVG paths), shows the verdict with its reasons, and needs nothing from the network."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from pgcutover.proxy import control, report
from pgcutover.proxy.embedded import EmbeddedPostgres
from tests.deploy_artifacts.artifacts import wait_for_http
from tests.operator.cli import pgcutover

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ROUTES = """
[admin]
users = ["postgres"]
token = "page-token"

[[route]]
table = "rp.items"
column = "embedding"
shadow_table = "rp.shadow"
mirror = 10
min_samples = 50

[[route]]
table = "rp.docs"
column = "embedding"
vector_column = "embedding_vector"
legacy_column = "embedding"
dims = 3
"""


def chromium() -> str:
    """The system Chromium (Debian package `chromium`; `make test` installs it). Missing means failing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: apt-get install -y chromium (the Makefile's test target does it)"
    return found


def browse(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120, cwd=tmp)


def _load(pg: EmbeddedPostgres) -> None:
    pg.psql("DROP SCHEMA IF EXISTS rp CASCADE; CREATE SCHEMA rp;"
            "CREATE TABLE rp.items (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE rp.shadow (id bigint PRIMARY KEY, embedding vector(3));"
            "CREATE TABLE rp.docs (id bigint PRIMARY KEY, embedding text, embedding_vector vector(3));"
            "INSERT INTO rp.docs SELECT i, '[1,2,3]', CASE WHEN i % 4 = 0 THEN '[1,2,3]'::vector END "
            "FROM generate_series(1, 200) i")

    def sample(i: int) -> report.Sample:
        return report.Sample(route="rp.items", replica="a:1", query_id="q", client_target="primary",
                             client_ok=True, client_ms=1.0, primary_ok=True, shadow_ok=i % 50 != 0,
                             shadow_fault=i % 50 == 0, primary_ms=2.0 + i % 5, shadow_ms=2.5 + i % 7 + (i > 150),
                             primary_sqlstate=None, shadow_sqlstate=None, shadow_error=None, k=10,
                             recall=0.6 + 0.3 * (i % 3) / 2, rank_agreement=0.9, distance_mean_abs=0.0,
                             distance_max_abs=0.0)

    async def go() -> None:
        conn = await asyncpg.connect(pg.dsn())
        try:
            await report.ensure_schema(conn)
            await control.init_schema(conn)
            await conn.execute("DELETE FROM pgcutover.mirror_samples WHERE route = 'rp.items'")
            await conn.execute("DELETE FROM pgcutover.routing WHERE table_name = 'rp.items'")
            await report.insert_samples(conn, [sample(i) for i in range(240)])
            # spread over the last hour, oldest first
            await conn.execute("UPDATE pgcutover.mirror_samples SET sampled_at = now() - make_interval(secs => "
                               "3500 - (id % 240) * 14) WHERE route = 'rp.items'")
            # negative generations: never the next one `route set` picks (other tests share this database)
            await conn.execute("DELETE FROM pgcutover.routing_history WHERE table_name = 'rp.items'")
            generation = -1000
            await conn.executemany(
                "INSERT INTO pgcutover.routing_history (generation, table_name, split, previous_split, changed_by, "
                "changed_at, reason) VALUES ($1, 'rp.items', $2, $3, $4, now() - make_interval(secs => $5), $6)",
                [(generation + 1, 10.0, 0.0, "alice@ops via route set", 2400.0, "try 10%"),
                 (generation + 2, 0.0, 10.0, "circuit breaker @ host:6432", 1200.0, "latency: p95 ratio 2.1")])
        finally:
            await conn.close()

    asyncio.run(go())


def _check_dom(dom: str) -> None:
    paths = re.findall(r'<path class="series" d="(M[^"]+)"', dom)
    assert len(paths) >= 8, f"{len(paths)} series paths"
    assert all(len(d) > 10 for d in paths)
    assert "not ready" in dom and "recall vs primary" in dom and "&lt; min_recall 0.95" in dom
    assert dom.count('<line class="event"') == 8  # 2 events on each of the 4 charts of the shadow route
    assert "breaker trip" in dom and "migrated to pgvector: 25.0%" in dom
    assert "http://" not in dom.split("<body", 1)[1].replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_report_html_in_chromium(pg: EmbeddedPostgres, start_proxy, tmp_path: Path) -> None:
    _load(pg)
    proxy = start_proxy(ROUTES)
    page = tmp_path / "readiness.html"
    run = pgcutover("report", "--html", str(page), "--since", "2h", "--config", str(proxy.config_path))
    assert run.returncode == 0, run.stderr
    assert "verdict          not ready" in run.stdout
    dom = browse(page.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    _check_dom(dom.stdout)
    shot = tmp_path / "readiness.png"
    done = browse(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2200",
                  "--hide-scrollbars")
    assert done.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, done.stderr
    shutil.copy(shot, Path("/tmp") / "pgcutover-readiness.png")  # for a human look after the run


def test_get_report_on_the_metrics_port(pg: EmbeddedPostgres, start_proxy, tmp_path: Path) -> None:
    _load(pg)
    proxy = start_proxy(ROUTES)
    url = f"http://127.0.0.1:{proxy.metrics_port}/report"
    wait_for_http(proxy.metrics_port)
    try:
        urllib.request.urlopen(url, timeout=30)
        raise AssertionError("GET /report without the token must be refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    request = urllib.request.Request(url, headers={"Authorization": "Bearer page-token"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        body = response.read().decode()
    assert "<svg" in body and "route rp.items" in body
    page = tmp_path / "served.html"
    page.write_text(body)
    dom = browse(page.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    assert len(re.findall(r'<path class="series" d="M', dom.stdout)) >= 8
