"""`appliance serve`: start the listeners, wait for a signal, drain, stop.

Builds nothing itself: the application comes from `http.app.build_app`. Never logs secrets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import TextIO

from aiohttp import web

from appliance import __version__, bootstrap, demo, state_dir
from appliance import settings as settings_module
from appliance.http import connection_limits
from appliance.http.app import build_app
from appliance.http.app_keys import CORE
from appliance.http.connection_limits import ConnectionGate, Listener, fit_descriptor_limit
from appliance.http.redirect import build_redirect_app
from appliance.reload import Reloader
from appliance.settings import Endpoint, Settings
from appliance.tls import TLSManager

log = logging.getLogger("appliance.server")

DEV_ADMIN = "admin"
# The cyclic collector's thresholds while serving (CPython's default: 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)


def _url(endpoint: Endpoint, port: int) -> str:
    host = endpoint.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104
        host = "localhost"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


async def serve(settings: Settings, out: TextIO = sys.stdout, *,
                reload_settings: Callable[[], Settings] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. SIGHUP calls `reload_settings` (the same load as at start) and
    applies what can change live (see appliance.reload)."""
    first_admin_password = None
    if settings.dev:
        # A tester gets an admin on first start; its one-time password is printed once, below.
        report = await bootstrap.init_state(settings, admin_user=DEV_ADMIN)
        first_admin_password = report.one_time_password
    state = settings.server.state_dir.absolute()
    state_dir.check(state)

    tls = TLSManager(settings.tls, state)
    tls.load_initial()
    app = build_app(settings, tls)
    limits = settings.server
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=limits.shutdown_timeout,
                           keepalive_timeout=limits.keepalive_timeout)
    await runner.setup()
    if settings.dev:
        await demo.install(app[CORE])  # a demo SQLite datasource and two queries
    # One gate for both listeners: caps on open connections, overall and per client address.
    gate = ConnectionGate(fit_descriptor_limit(limits.max_connections),
                          limits.max_connections_per_address,
                          trusted_proxies=limits.trusted_proxies)
    listen = settings.server.listen
    listeners: list[Listener] = []
    http_runner: web.AppRunner | None = None
    try:
        assert runner.server is not None
        listeners.append(await connection_limits.listen(
            runner.server, gate, limits, listen.host, listen.port, tls_context=tls.context))
        own = listeners[0].addresses
        port = own[0][1]
        if settings.server.http_listen is not None:
            http_listen = settings.server.http_listen
            http_runner = web.AppRunner(build_redirect_app(settings, port, tls.http01),
                                        access_log=None, handle_signals=False,
                                        shutdown_timeout=2,
                                        keepalive_timeout=limits.keepalive_timeout)
            await http_runner.setup()
            assert http_runner.server is not None
            listeners.append(await connection_limits.listen(
                http_runner.server, gate, limits, http_listen.host, http_listen.port))
            own += listeners[-1].addresses
    except OSError as exc:
        for listener in listeners:
            listener.close()
        await runner.cleanup()
        if http_runner is not None:
            await http_runner.cleanup()
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1

    app[CORE].egress.policy.set_own_listeners(own)  # never a destination, in any spelling
    await app[CORE].heartbeat.serving_on(  # the ports really bound (port 0 is only known now)
        str(Endpoint(listen.host, port)),
        str(Endpoint(settings.server.http_listen.host, listeners[-1].addresses[0][1]))
        if settings.server.http_listen is not None else None)
    # Before "listening" and READY=1: from then on a SIGHUP reloads and a SIGTERM (systemd's
    # stop, or a script that stops what it just saw start) drains, never the default action.
    loop = asyncio.get_running_loop()
    reloader = Reloader(lambda: app[CORE], settings, reload_settings or _same_load(settings))
    loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tls.listeners_ready()  # acme: issuance starts in the background now that HTTP-01 answers
    url = _url(listen, port)
    log.info("listening", extra={"url": url, "version": __version__, "tls_mode": tls.settings.mode})
    print(f"Appliance {__version__} listening on {url}", file=out)
    if first_admin_password is not None:
        print(f"Console: {url}/ -- user {DEV_ADMIN!r}, password "
              f"{first_admin_password.reveal()} (printed only this once; enrol 2FA at first "
              "login)", file=out)
    if tls.ca is not None:
        print(f"Local CA certificate: {tls.ca.cert_path}", file=out)
        print(f"Local CA SHA-256 fingerprint: {tls.ca.fingerprint}", file=out)
        print(f"Try: curl --cacert {tls.ca.cert_path} {url}/healthz", file=out)
    out.flush()
    # What start-up loaded (modules, routes, settings) lives as long as the process: moved out of
    # the collector's way, so its full collections under load walk only newer objects.
    gc.freeze()
    # A young-generation collection every 10,000 allocations instead of CPython's 700:
    # each request allocates hundreds of objects and almost all are freed by reference
    # counting, so collecting that often mostly walks the live objects of requests in flight
    # (5 % of the CPU per query run at 32 in flight, measured). Only objects in reference
    # cycles wait longer to be freed.
    gc.set_threshold(*GC_THRESHOLDS)
    _notify(settings, b"READY=1")
    await stop.wait()

    log.info("stopping: draining in-flight requests",
             extra={"timeout_s": settings.server.shutdown_timeout})
    _notify(settings, b"STOPPING=1")
    for listener in listeners:  # stop accepting; the runners drain what was admitted
        listener.close()
    if http_runner is not None:
        await http_runner.cleanup()
    await runner.cleanup()
    log.info("stopped")
    return 0


def _same_load(settings: Settings) -> Callable[[], Settings]:
    """Reload from the same file (and the environment), listeners as they are now."""
    server = settings.server
    flags = {"state_dir": str(server.state_dir), "listen": str(server.listen),
             "http_listen": str(server.http_listen or "")}
    return lambda: settings_module.load(config_file=settings.config_file, dev=settings.dev,
                                        flags=flags)


def _notify(settings: Settings, message: bytes) -> None:
    """Tell systemd (Type=notify) about our state, when it asked to be told."""
    address = settings.environment.notify_socket
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("cannot notify systemd", extra={"error": exc.strerror})
