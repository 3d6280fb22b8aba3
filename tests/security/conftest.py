"""A database of its own for the security tests, with the roles SECURITY.md describes, none of them superuser:

- sec_proxy: the proxy's own role (the upstream URL's user): routing and sample storage only;
- sec_mirror: `[proxy] mirror_user`, LOGIN NOINHERIT, no privileges of its own, member of the application roles;
- sec_app: an application role: reads docs (and its shadow), not salaries;
- sec_other: another application role, reads docs but not the shadow;
- sec_outsider: a role with no grants at all;
- sec_loner: reads docs and the shadow, but the mirror role was not made a member of it.

Proxies are real child processes (tests/conftest.py's ProxyProcess) whose upstream is this database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pgcutover.proxy.embedded import free_port
from tests.conftest import ProxyProcess

DATABASE = "security"
ROLES = ("sec_proxy", "sec_mirror", "sec_app", "sec_other", "sec_outsider", "sec_loner")


@pytest.fixture(scope="session")
def sec_db(pg) -> Iterator[object]:
    pg.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg.psql(f"CREATE DATABASE {DATABASE}")
    creates = " ".join(f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN CREATE ROLE {r} LOGIN; "
                       "END IF;" for r in ROLES)
    pg.psql(f"DO $$ BEGIN {creates} END $$; ALTER ROLE sec_mirror NOINHERIT;"
            "GRANT sec_app, sec_other, sec_outsider TO sec_mirror;")
    pg.psql(
        "CREATE EXTENSION IF NOT EXISTS vector;"
        f"GRANT CREATE ON DATABASE {DATABASE} TO sec_proxy;"
        "CREATE TABLE docs (id bigint PRIMARY KEY, content text, embedding vector(3));"
        "INSERT INTO docs SELECT i, 'doc ' || i, ARRAY[i, i % 7, i % 3]::real[]::vector FROM generate_series(1, 50) i;"
        "CREATE SCHEMA shadow; CREATE TABLE shadow.docs (LIKE docs INCLUDING ALL);"
        "INSERT INTO shadow.docs SELECT * FROM docs;"
        "CREATE TABLE salaries (name text, amount int); INSERT INTO salaries VALUES ('alice', 123456);"
        "GRANT SELECT ON docs TO sec_app, sec_other; GRANT USAGE ON SCHEMA shadow TO sec_app, sec_other;"
        "GRANT SELECT ON shadow.docs TO sec_app; GRANT USAGE ON SCHEMA shadow TO sec_proxy;"
        "GRANT SELECT ON docs, shadow.docs TO sec_loner; GRANT USAGE ON SCHEMA shadow TO sec_loner;"
        "GRANT SELECT ON docs, shadow.docs TO sec_proxy;",  # catalog, migration status, fallback loads
        database=DATABASE)
    yield pg


@pytest.fixture(scope="session")
def sec_proxy(sec_db, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: sec_proxy(proxy_keys="", routes=..., user="sec_proxy") -> a running proxy on the security db."""
    workdir = tmp_path_factory.mktemp("secproxy")
    started: list[ProxyProcess] = []

    def start(proxy_keys: str = "", routes: str = "", upstream: str | None = None) -> ProxyProcess:
        port, metrics_port = free_port(), free_port()
        upstream = upstream or f"postgresql://sec_proxy@127.0.0.1:{sec_db.port}/{DATABASE}?sslmode=disable"
        text = (f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "{upstream}"\n'
                f'metrics = "127.0.0.1:{metrics_port}"\nshutdown_timeout = 5\n{proxy_keys}\n{routes}')
        process = ProxyProcess(text, workdir, port, metrics_port).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


MIRRORED_ROUTE = """
[[route]]
table = "public.docs"
column = "embedding"
key = "id"
shadow_table = "shadow.docs"
mirror = 100
mirror_max_per_s = 0
"""
