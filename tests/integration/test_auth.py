"""Authentication passes through untouched: trust, md5 and SCRAM-SHA-256 succeed through the proxy, and a
wrong password is refused with exactly the SQLSTATE and message the server gives without the proxy."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from tests.conftest import AUTH_USERS

USERS = [("postgres", None), ("md5user", AUTH_USERS["md5user"]), ("scramuser", AUTH_USERS["scramuser"])]


@pytest.mark.parametrize(("user", "password"), USERS, ids=[u for u, _ in USERS])
def test_psycopg_login(proxy, user: str, password: str | None):
    with psycopg.connect(proxy.dsn(user, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)


@pytest.mark.parametrize(("user", "password"), USERS, ids=[u for u, _ in USERS])
def test_asyncpg_login(proxy, user: str, password: str | None):
    async def scenario() -> str:
        conn = await asyncpg.connect(proxy.dsn(user, password=password))
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == user


def test_auth_methods_are_the_servers(proxy):
    """The method really used is the server's: the proxy does not terminate authentication itself."""
    with psycopg.connect(proxy.dsn("scramuser", password=AUTH_USERS["scramuser"])) as conn:
        assert conn.execute("SELECT system_user").fetchone() == ("scram-sha-256:scramuser",)
    with psycopg.connect(proxy.dsn("md5user", password=AUTH_USERS["md5user"])) as conn:
        assert conn.execute("SELECT system_user").fetchone() == ("md5:md5user",)


def _asyncpg_failure(dsn: str) -> tuple[str, str | None, str]:
    async def attempt() -> tuple[str, str | None, str]:
        try:
            conn = await asyncpg.connect(dsn)
        except asyncpg.PostgresError as exc:
            return type(exc).__name__, exc.sqlstate, str(exc)
        await conn.close()
        raise AssertionError("a wrong password was accepted")

    return asyncio.run(attempt())


def _psycopg_failure(dsn: str, port: int) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn)
    return str(caught.value).replace(f"port {port}", "port <port>")


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_wrong_password_rejected_like_the_server(pg, proxy, user: str):
    direct = _asyncpg_failure(pg.dsn(user, password="wrong"))
    through = _asyncpg_failure(proxy.dsn(user, password="wrong"))
    assert through == direct
    assert through[:2] == ("InvalidPasswordError", "28P01")
    assert through[2] == f'password authentication failed for user "{user}"'
    assert _psycopg_failure(proxy.dsn(user, password="wrong"), proxy.port) == \
        _psycopg_failure(pg.dsn(user, password="wrong"), pg.port)


def test_unknown_role_and_database_rejected_like_the_server(pg, proxy):
    for user, database in (("no_such_role", "postgres"), ("postgres", "no_such_db")):
        direct = _asyncpg_failure(pg.dsn(user, database))
        through = _asyncpg_failure(proxy.dsn(user, database))
        assert through == direct
        assert through[1] in ("28000", "3D000")
