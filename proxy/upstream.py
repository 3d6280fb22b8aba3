"""Opening a raw connection to the real server: TCP or unix socket, with TLS negotiated as libpq would.

Only transport is set up here; the startup packet and authentication are the client's own and are
relayed by the session untouched.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from pgcutover.core.config import ProxySettings, UpstreamDsn
from pgcutover.core.connect import tls_context

from .protocol.messages import SSL_REQUEST_PACKET


class UpstreamError(ConnectionError):
    """The upstream cannot be reached or refused TLS; the client gets 08006."""


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    host: str
    port: int

    @property
    def unix_path(self) -> str | None:
        return f"{self.host}/.s.PGSQL.{self.port}" if self.host.startswith("/") else None

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


def address_of(dsn: UpstreamDsn) -> UpstreamAddress:
    return UpstreamAddress(dsn.host, dsn.port)


def tls_warnings(settings: ProxySettings) -> list[str]:
    """What serve() warns about at start (config.upstream_tls_policy() has refused what it cannot accept)."""
    upstream = settings.upstream
    if settings.tls_cert and not upstream.is_unix and upstream.sslmode in ("disable", "allow", "prefer"):
        return [f"TLS is terminated at the proxy but the upstream connection may be plaintext "
                f"(upstream_sslmode = {upstream.sslmode!r}): clients believe their queries travel encrypted "
                f"all the way to {upstream.host}:{upstream.port}"]
    return []


class _SslAnswer(asyncio.Protocol):
    """Reads the single byte the server answers an SSLRequest with."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(UpstreamError("upstream closed during TLS negotiation"))


async def _connect_raw(addr: UpstreamAddress, factory: Callable[[], asyncio.Protocol]):
    loop = asyncio.get_running_loop()
    if addr.unix_path:
        return await loop.create_unix_connection(factory, addr.unix_path)
    return await loop.create_connection(factory, addr.host, addr.port)


async def open_upstream(
    dsn: UpstreamDsn, protocol: asyncio.Protocol, timeout: float
) -> asyncio.Transport:
    """Connect, negotiate TLS per sslmode, and attach `protocol`. Raises UpstreamError."""
    addr = address_of(dsn)
    try:
        async with asyncio.timeout(timeout):
            if dsn.sslmode in ("disable", "allow") or addr.unix_path:
                transport, _ = await _connect_raw(addr, lambda: protocol)
                return transport
            transport, negotiator = await _connect_raw(addr, _SslAnswer)
            transport.write(SSL_REQUEST_PACKET)
            answer = await negotiator.answer
            if answer[:1] == b"S" and len(answer) == 1:
                loop = asyncio.get_running_loop()
                server_hostname = dsn.host if dsn.sslmode == "verify-full" else None
                transport = await loop.start_tls(transport, negotiator, tls_context(dsn),
                                                 server_hostname=server_hostname)
            elif answer[:1] != b"N" or len(answer) != 1 or dsn.sslmode not in ("prefer",):
                transport.close()
                raise UpstreamError(f"upstream {addr} does not offer TLS (sslmode={dsn.sslmode})")
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return transport
    except TimeoutError as exc:
        raise UpstreamError(f"timed out connecting to upstream {addr}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError(f"could not connect to upstream {addr}: {exc}") from exc


async def send_cancel(addr: UpstreamAddress, packet: bytes, timeout: float = 5.0) -> None:
    """Forward a CancelRequest; the server closes the connection without answering."""
    try:
        async with asyncio.timeout(timeout):
            if addr.unix_path:
                reader, writer = await asyncio.open_unix_connection(addr.unix_path)
            else:
                reader, writer = await asyncio.open_connection(addr.host, addr.port)
            writer.write(packet)
            await writer.drain()
            await reader.read(1)  # wait for the server to close: the cancel is then delivered
            writer.close()
    except (OSError, TimeoutError):
        pass
