"""Accepting clients, and the ordered shutdown: stop accepting, drain sessions, then close what is left."""

from __future__ import annotations

import asyncio
import logging
import ssl

from .client_side import ClientProtocol
from .runtime import Runtime
from .session import Session

log = logging.getLogger("pgcutover.listener")


def server_tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert or not key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class Listener:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        proxy = runtime.config.proxy
        self.tls = server_tls_context(proxy.tls_cert, proxy.tls_key)
        self.server: asyncio.Server | None = None

    def _new_client(self) -> ClientProtocol:
        return ClientProtocol(Session(self.rt, self.tls))

    async def start(self) -> None:
        where = self.rt.config.proxy.listen
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._new_client, where.host, where.port, backlog=1024,
                                               reuse_address=True)
        log.info("listening on %s", where)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; idle sessions close now, busy ones when their transaction ends, the rest at timeout."""
        self.rt.shutting_down = True
        if self.server is not None:
            self.server.close()
        for session in list(self.rt.sessions):
            if session.idle or session.state != "active":
                session.close_for_shutdown()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.rt.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        # Sessions cut off mid-query: cancel the query too, or its backend runs on after we are gone.
        cancels = [task for session in list(self.rt.sessions) if (task := session.cancel_upstream())]
        for session in list(self.rt.sessions):
            log.warning("closing session %s at shutdown timeout", session.peer)
            session.close_for_shutdown()
        if cancels:
            await asyncio.wait(cancels, timeout=5)
        await asyncio.sleep(0)  # let transports flush their final error messages
