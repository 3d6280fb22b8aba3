"""The one way pgcutover's own code opens a database connection (asyncpg): the control table, the fallback stores'
loads, `explain --live`, the deploy commands. Client sessions never use it: their upstream leg is the raw wire
protocol (proxy/upstream.py), with the same TLS policy (tls_context).

Every connection gets the config's connect_timeout (an unreachable server is an error after that, never a hang),
an application_name saying which part of pgcutover it is (pg_stat_activity), and the upstream's TLS policy: the
URL's sslmode, as upstream_tls_policy() settled it, with its sslrootcert.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from .config import Config, UpstreamDsn


def tls_context(dsn: UpstreamDsn) -> ssl.SSLContext:
    """libpq semantics: require = encrypt without verifying; verify-ca / verify-full check the chain (and name)
    against sslrootcert (the default trust store when it is unset)."""
    if dsn.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=dsn.sslrootcert)
        ctx.check_hostname = dsn.sslmode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def asyncpg_ssl(dsn: UpstreamDsn) -> bool | str | ssl.SSLContext:
    """asyncpg's `ssl` argument for the upstream: no TLS for disable/allow; the sslmode's name otherwise (asyncpg
    reads ~/.postgresql/root.crt as libpq does), or a context when sslrootcert names the CA to verify against."""
    if dsn.sslmode in ("disable", "allow"):
        return False
    if dsn.sslmode in ("verify-ca", "verify-full") and dsn.sslrootcert:
        return tls_context(dsn)
    return dsn.sslmode


async def connect(config: Config, application_name: str, *, user: str | None = None, database: str | None = None,
                  settings: dict[str, str] | None = None) -> asyncpg.Connection:
    """A connection to the configured upstream as the configured user (or `user`), for `application_name`."""
    import asyncpg

    kwargs: dict[str, Any] = config.proxy.upstream.asyncpg_kwargs(user=user, database=database)
    conn: asyncpg.Connection = await asyncpg.connect(
        **kwargs, timeout=config.proxy.connect_timeout,
        server_settings={"application_name": application_name, **(settings or {})})
    return conn
