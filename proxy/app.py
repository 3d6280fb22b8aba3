"""`pgcutover serve`: one event loop with the listener, the metrics endpoints and the signal handlers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pgcutover.core.config import Config, ConfigError, load_config
from pgcutover.core.routing import Override

from . import metrics
from .control import RoutingFollower
from .listener import Listener
from .runtime import Runtime
from .services import ServiceSupervisor

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


def reload_config(runtime: Runtime) -> str:
    """SIGHUP / RELOAD: re-read the TOML, validate, apply the routes; the old config stays on any error."""
    path = runtime.config.source
    if path is None:
        return "no config file to reload"
    try:
        new = load_config(path)
        runtime.apply_routing(new, runtime.overrides)
    except ConfigError as exc:
        runtime.totals.reload_errors += 1
        runtime.last_reload_error = str(exc)
        log.error("reload of %s refused, routing unchanged: %s", path, exc)
        return f"reload refused: {exc}"
    runtime.last_reload_error = ""  # the refused file's message (and whatever it quoted) goes with it
    if new.proxy != runtime.config.proxy:
        log.warning("[proxy] changes in %s take effect at restart", path)
    log.info("reloaded %s (routing generation %d)", path, runtime.routing.generation)
    return "reloaded"


def follow_routing(runtime: Runtime) -> RoutingFollower:
    def apply(overrides: list[Override]) -> None:
        if overrides == runtime.overrides and runtime.routing_loaded:
            return
        try:
            runtime.apply_routing(runtime.config, overrides)
            log.info("routing generation %d applied", runtime.routing.generation)
        except ConfigError as exc:
            log.error("routing change refused, routing in force unchanged: %s", exc)
        runtime.routing_loaded = True

    from .admin import reconcile_local_changes

    return RoutingFollower(lambda: runtime.config, apply,
                           on_connect=lambda conn: reconcile_local_changes(runtime, conn))


async def serve(config: Config) -> int:
    from .upstream import tls_warnings

    for warning in tls_warnings(config.proxy):
        log.warning(warning)
    runtime = Runtime(config)
    supervisor = ServiceSupervisor(runtime)
    await supervisor.start()
    endpoints = None
    if config.proxy.metrics is not None:
        endpoints = metrics.HttpEndpoints(
            metrics.install(runtime),
            ready=lambda: (runtime.upstream_ok and runtime.routing_loaded and not runtime.shutting_down
                           and (runtime.fallback is None or runtime.fallback.ready)),
            token=config.admin.token)
        await endpoints.start(config.proxy.metrics)
        if not config.admin.token and config.proxy.metrics.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("/metrics on %s answers anyone who can reach it: set [admin] token to require one",
                        config.proxy.metrics)
    # the endpoints first: once clients can connect, probes and scrapes answer too (/readyz says "not ready" until
    # the upstream probe and the routing table are in)
    listener = Listener(runtime)
    await listener.start()
    await probe_upstream(runtime)
    follower = follow_routing(runtime)
    loop = asyncio.get_running_loop()
    follower_task = loop.create_task(follower.run())

    stop = asyncio.Event()
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

    def reload() -> str:
        outcome = reload_config(runtime)
        supervisor.extend()  # routes the reload added may need a service that did not exist yet
        return outcome

    loop.add_signal_handler(signal.SIGHUP, reload)
    runtime.request_shutdown = on_stop_signal  # the admin console's SHUTDOWN
    runtime.reload = reload

    print(f"pgcutover listening on {config.proxy.listen} -> {config.proxy.upstream.host}:"
          f"{config.proxy.upstream.port}", flush=True)
    await stop.wait()
    log.info("shutting down: draining %d session(s) for up to %ss", len(runtime.sessions),
             config.proxy.shutdown_timeout)
    await listener.shutdown(config.proxy.shutdown_timeout)
    follower_task.cancel()
    await supervisor.close()
    if endpoints is not None:
        await endpoints.close()
    return 0


def run(config: Config) -> int:
    install_event_loop_policy()
    return asyncio.run(serve(config))
