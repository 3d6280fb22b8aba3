"""Encryption negotiation: SSLRequest and GSSENCRequest are answered 'N' (as the embedded server does), the
startup then proceeds on the same socket; with `[proxy] tls_cert`/`tls_key` the proxy answers 'S' and
terminates TLS for libpq and asyncpg clients."""

from __future__ import annotations

import asyncio
import struct

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgcutover.proxy.protocol import codes

from .conftest import when_active
from .wire import RawClient, data_rows

SSL_REQUEST = struct.pack("!ii", 8, codes.SSL_REQUEST)
GSSENC_REQUEST = struct.pack("!ii", 8, codes.GSSENC_REQUEST)


@pytest.mark.parametrize("requests", [[SSL_REQUEST], [GSSENC_REQUEST], [GSSENC_REQUEST, SSL_REQUEST]],
                         ids=["ssl", "gssenc", "gssenc-then-ssl"])
def test_encryption_requests_declined_then_startup(pg, proxy, requests: list[bytes]):
    answers = {}
    for name, port in (("direct", pg.port), ("proxy", proxy.port)):
        with RawClient(port) as client:
            got = []
            for request in requests:
                client.send(request)
                got.append(client.recv_byte())
            client.startup()
            got.append(data_rows(client.query("SELECT 'plain after N'"))[0][0])
            answers[name] = got
    assert answers["proxy"] == answers["direct"] == [b"N"] * len(requests) + [b"plain after N"]


def test_libpq_prefer_modes_fall_back_to_plain(proxy):
    with psycopg.connect(proxy.dsn(), sslmode="prefer", gssencmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tls_proxy_answers_s_and_speaks_tls(tls_proxy):
    with RawClient(tls_proxy.port) as client:
        client.send(SSL_REQUEST)
        assert client.recv_byte() == b"S"
        client.start_tls()
        client.startup()
        assert data_rows(client.query("SELECT 'over tls'")) == [[b"over tls"]]


def test_tls_proxy_declines_gssenc_then_accepts_ssl(tls_proxy):
    with RawClient(tls_proxy.port) as client:
        client.send(GSSENC_REQUEST)
        assert client.recv_byte() == b"N"
        client.send(SSL_REQUEST)
        assert client.recv_byte() == b"S"
        client.start_tls()
        client.startup()
        assert data_rows(client.query("SELECT 2")) == [[b"2"]]


def test_psycopg_sslmode_require(tls_proxy):
    with psycopg.connect(tls_proxy.dsn(), sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        rows = conn.execute("SELECT g FROM generate_series(1, 50000) g").fetchall()
        assert len(rows) == 50000
    with psycopg.connect(tls_proxy.dsn(), sslmode="disable") as conn:  # TLS stays optional
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_verify_full_with_the_proxy_certificate(tls_proxy, tls_files):
    cert, _ = tls_files
    dsn = f"host=localhost hostaddr=127.0.0.1 port={tls_proxy.port} user=postgres dbname=postgres " \
          f"sslmode=verify-full sslrootcert={cert}"
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'verified'").fetchone() == ("verified",)


def test_psycopg_cancel_over_tls(pg, tls_proxy):
    with psycopg.connect(tls_proxy.dsn(), sslmode="require", autocommit=True, application_name="tls-cancel") as conn:
        timer = when_active(pg, "tls-cancel", conn.cancel_safe)
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        timer.join()
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_asyncpg_ssl_require(tls_proxy):
    async def scenario() -> None:
        conn = await asyncpg.connect(tls_proxy.dsn(), ssl="require")
        try:
            assert conn._transport.get_extra_info("ssl_object") is not None
            assert await conn.fetchval("SELECT $1::text", "asyncpg over tls") == "asyncpg over tls"
            records = [(i, "x" * 100) for i in range(5000)]
            await conn.execute("CREATE TEMP TABLE tls_copy (id int, v text)")
            await conn.copy_records_to_table("tls_copy", records=records)
            assert await conn.fetchval("SELECT count(*) FROM tls_copy") == 5000
        finally:
            await conn.close()

    asyncio.run(scenario())
