"""The ACME client's transport: a `requests` adapter whose every connection comes from the egress
dialer's check (purpose "acme"), bound to the configured source address.

Owns the bridge from the synchronous `acme` package (in a worker thread) to the async dialer on
the event loop. Never resolves a name itself and never connects to an address the dialer did not
check; TLS SNI, certificate verification and Host keep the URL's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
import weakref
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from appliance.egress import Dialer

PURPOSE = "acme"
CONNECT_TIMEOUT = 10.0
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class EgressRoute:
    """Opens sockets for a worker thread through the dialer running on `loop`; `stop()` (from
    the loop) ends every conversation on them at once."""

    def __init__(self, dialer: Dialer, loop: asyncio.AbstractEventLoop) -> None:
        self.dialer = dialer
        self.loop = loop
        # Each connection made through the route and its socket (the one TLS wraps, or the
        # socket itself); gone with the connection.
        self._opened: weakref.WeakKeyDictionary[HTTPConnection, socket.socket] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stopped = False

    def opened(self, conn: HTTPConnection, sock: socket.socket) -> None:
        """`conn` connected through this route on `sock` (`stop` shuts it down)."""
        with self._lock:
            self._opened[conn] = sock

    def stop(self) -> None:
        """No new connection, and each one open is shut down: a request under way in the
        worker thread fails at once instead of waiting out its time limit (the process is
        stopping, and would wait for the thread)."""
        with self._lock:
            self._stopped = True
            opened = list(self._opened.items())
        for conn, raw in opened:
            for sock in (conn.sock, raw):  # under TLS, `raw` was handed to the TLS socket
                if sock is not None:
                    with contextlib.suppress(OSError):
                        # The plain socket's shutdown, also under TLS: SSLSocket's own would
                        # drop its SSL object under the thread reading from it. A closed
                        # socket (or one handed over) refuses, without touching any descriptor.
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def open(self, host: str, port: int, timeout: float) -> socket.socket:
        if self._stopped:
            raise ConnectionAbortedError(f"not connecting to {host}:{port}: stopping")
        future = asyncio.run_coroutine_threadsafe(
            self.dialer.check(host, port, purpose=PURPOSE), self.loop)
        try:
            checked = future.result(timeout + 5)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"resolving {host} timed out") from None
        errors: list[str] = []
        for ip in checked.addresses:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                source = self.dialer.policy.policy.source_for(ip)
                if source is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_IP, _BIND_NO_PORT, 1)
                    sock.bind((source, 0) if family == socket.AF_INET else (source, 0, 0, 0))
                sock.settimeout(timeout)
                sock.connect((str(ip), port))
            except OSError as exc:
                sock.close()
                errors.append(f"{ip}: {exc.strerror or exc}")
                continue
            self.dialer.counters.connection(PURPOSE, "connected")
            return sock
        self.dialer.counters.connection(PURPOSE, "failed")
        raise ConnectionRefusedError(
            f"cannot connect to {host}:{port}: {'; '.join(errors) or 'no usable address'}")


def _connect_timeout(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else CONNECT_TIMEOUT


def _pool_classes(route: EgressRoute) -> dict[str, type[HTTPConnectionPool]]:
    def new_conn(conn: HTTPConnection) -> socket.socket:
        try:
            sock = route.open(conn.host, conn.port or 443, _connect_timeout(conn.timeout))
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"failed to connect: {exc}") from exc
        route.opened(conn, sock)
        return sock

    class EgressHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class EgressHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class EgressHTTPPool(HTTPConnectionPool):
        ConnectionCls = EgressHTTPConnection

    class EgressHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = EgressHTTPSConnection

    return {"http": EgressHTTPPool, "https": EgressHTTPSPool}


class EgressAdapter(HTTPAdapter):
    """Mount on a `requests.Session` (both schemes). Remembers the last Retry-After it saw."""

    def __init__(self, route: EgressRoute) -> None:
        self._route = route
        self.retry_after: dt.datetime | None = None
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._route)
        self.poolmanager.key_fn_by_scheme = dict(self.poolmanager.key_fn_by_scheme)

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        response = super().send(request, *args, **kwargs)
        if response.status_code in (429, 503) and "Retry-After" in response.headers:
            self.retry_after = parse_retry_after(response.headers["Retry-After"])
        return response


def parse_retry_after(value: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """Retry-After as seconds or an HTTP date; None if unreadable."""
    now = now or dt.datetime.now(dt.UTC)
    text = value.strip()
    if text.isdigit():
        return now + dt.timedelta(seconds=min(int(text), 7 * 86400))
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


def session_for(route: EgressRoute) -> tuple[requests.Session, EgressAdapter]:
    """A session that ignores proxy environment variables and dials only through `route`."""
    session = requests.Session()
    session.trust_env = False
    adapter = EgressAdapter(route)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter
