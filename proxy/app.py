"""`pgcutover serve`: one event loop with the listener, the metrics endpoints and the signal handlers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from . import metrics
from .config import Config
from .listener import Listener
from .runtime import Runtime

log = logging.getLogger("pgcutover")


def install_event_loop_policy() -> str:
    """uvloop when available (it is a dependency on Linux), with plain asyncio as the fall-back."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def probe_upstream(runtime: Runtime) -> None:
    """Readiness: can a TCP/unix connection to the upstream be opened right now?"""
    from .upstream import address_of

    addr = address_of(runtime.config.proxy.upstream)
    try:
        async with asyncio.timeout(runtime.config.proxy.connect_timeout):
            if addr.unix_path:
                _, writer = await asyncio.open_unix_connection(addr.unix_path)
            else:
                _, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.close()
        runtime.upstream_ok = True
    except (OSError, TimeoutError):
        runtime.upstream_ok = False


async def serve(config: Config) -> int:
    runtime = Runtime(config)
    listener = Listener(runtime)
    await listener.start()
    await probe_upstream(runtime)
    endpoints = None
    if config.proxy.metrics is not None:
        endpoints = metrics.HttpEndpoints(metrics.install(runtime),
                                          ready=lambda: runtime.upstream_ok and not runtime.shutting_down)
        await endpoints.start(config.proxy.metrics)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_stop_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:  # a second signal forces the exit, as uvicorn and PgBouncer do
            log.warning("second signal: exiting now")
            sys.exit(1)
        runtime.shutting_down = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)

    print(f"pgcutover listening on {config.proxy.listen} -> {config.proxy.upstream.host}:"
          f"{config.proxy.upstream.port}", flush=True)
    await stop.wait()
    log.info("shutting down: draining %d session(s) for up to %ss", len(runtime.sessions),
             config.proxy.shutdown_timeout)
    await listener.shutdown(config.proxy.shutdown_timeout)
    if endpoints is not None:
        await endpoints.close()
    return 0


def run(config: Config) -> int:
    install_event_loop_policy()
    return asyncio.run(serve(config))
