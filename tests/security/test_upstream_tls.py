"""Issue 12 item 6: when the proxy terminates TLS, the upstream leg is encrypted too, unless the operator set
`upstream_sslmode = "disable"` (then the start warns).

pgserver's PostgreSQL is built without SSL ("SSL is not supported by this build"), so the upstream that offers
TLS is a TLS front (tls_relay.py) relaying to the real server and turning plaintext clients away; the plain
server itself shows the refusal: with TLS at the proxy, an upstream without TLS is an error, never a silent
plaintext fallback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgcutover.core.config import ConfigError, parse_config

from .tls_relay import TlsRelay


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("sectls")
    cert, key = where / "server.crt", where / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_upstream(sec_db, tls_pair) -> Iterator[TlsRelay]:
    """pgserver's PostgreSQL is built without SSL: the upstream is a TLS front relaying to it (tls_relay.py)."""
    relay = TlsRelay(sec_db.port, *tls_pair)
    yield relay
    relay.close()


def config(upstream: str, cert: Path, key: Path, extra: str = "") -> dict:
    proxy = {"listen": "127.0.0.1:6999", "metrics": "", "upstream": upstream, "tls_cert": str(cert),
             "tls_key": str(key)}
    if extra:
        proxy["upstream_sslmode"] = extra
    return {"proxy": proxy}


def test_policy(tls_pair) -> None:
    cert, key = tls_pair
    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    assert parse_config(config(url, cert, key)).proxy.upstream.sslmode == "require"  # 'prefer' falls back
    assert parse_config(config(url + "?sslmode=verify-full", cert, key)).proxy.upstream.sslmode == "verify-full"
    for mode in ("disable", "allow"):
        with pytest.raises(ConfigError, match='upstream_sslmode = "disable"'):
            parse_config(config(f"{url}?sslmode={mode}", cert, key))
    assert parse_config(config(f"{url}?sslmode=disable", cert, key, "disable")).proxy.upstream.sslmode == "disable"
    unix = "postgresql://postgres@/postgres?host=/run/postgresql"  # no TLS on unix sockets: left alone
    assert parse_config(config(unix, cert, key)).proxy.upstream.sslmode == "disable"
    with pytest.raises(ConfigError, match="upstream_sslmode"):
        parse_config(config(url, cert, key, "sometimes"))
    # without TLS at the proxy nothing changes
    assert parse_config({"proxy": {"upstream": url, "metrics": ""}}).proxy.upstream.sslmode == "prefer"


def test_tls_at_the_proxy_means_tls_upstream(tls_upstream, tls_pair, sec_proxy) -> None:
    cert, key = tls_pair
    proxy = sec_proxy(f'tls_cert = "{cert}"\ntls_key = "{key}"\n',
                      upstream=f"postgresql://postgres@127.0.0.1:{tls_upstream.port}/postgres")
    assert "may be plaintext" not in proxy.log()
    before = tls_upstream.tls_sessions
    with psycopg.connect(proxy.dsn(), sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use  # client -> proxy
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert tls_upstream.tls_sessions > before and tls_upstream.plaintext_refused == 0  # proxy -> server


def test_upstream_without_tls_is_an_error_not_a_fallback(sec_db, tls_pair, sec_proxy) -> None:
    cert, key = tls_pair
    proxy = sec_proxy(f'tls_cert = "{cert}"\ntls_key = "{key}"\n',  # the plain server answers SSLRequest 'N'
                      upstream=f"postgresql://postgres@127.0.0.1:{sec_db.port}/postgres")
    with pytest.raises(psycopg.OperationalError, match="does not offer TLS"):
        psycopg.connect(proxy.dsn(), sslmode="require").close()


def test_plaintext_upstream_only_when_asked_and_warned(tls_upstream, tls_pair, sec_proxy) -> None:
    cert, key = tls_pair
    keys = f'tls_cert = "{cert}"\ntls_key = "{key}"\nupstream_sslmode = "disable"\n'
    proxy = sec_proxy(keys, upstream=f"postgresql://postgres@127.0.0.1:{tls_upstream.port}/postgres")
    assert "upstream connection may be plaintext (upstream_sslmode = 'disable')" in proxy.log()
    refused = tls_upstream.plaintext_refused
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), sslmode="require").close()
    # it went plaintext, as the operator asked (>=: the relay counts in its own threads, so a connection of an
    # earlier test on a loaded machine may be counted after `refused` was read)
    assert tls_upstream.plaintext_refused >= refused + 1
