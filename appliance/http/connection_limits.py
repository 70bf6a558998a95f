"""Connection limits of the listeners: how many client connections may be open, from which address,
and how long each may take over its TLS handshake, its first request byte and its request head.

Owns the listening sockets and their accept loop, the accounting at accept (overall and per client
address: a refused connection is closed before any TLS), the per-connection timers, and the one-line
hint a plain-HTTP request to the HTTPS port gets. Never reads request content beyond looking for
the blank line that ends the first request head (and, where a TLS ClientHello was expected, the
first bytes and the Host header of a plain-HTTP request, to answer with the hint); logs peer
addresses and rule names, never a byte the client sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import resource
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance import metrics
from appliance.http.client_address import in_networks
from appliance.settings import Network, ServerSettings

log = logging.getLogger("appliance.listener")

# A refusal is logged at most once per (client address, rule) in this many seconds; the ones in
# between are counted (metrics, and `refused_since_last_log` on the next line).
REFUSAL_LOG_INTERVAL = 60.0
# Addresses remembered for that; past it, refusals from new addresses are only counted.
REFUSAL_LOG_ADDRESSES = 4096
# Descriptors kept for everything but client connections: the store, datasource pools, audit
# sinks, the listening sockets and the ACME client.
DESCRIPTOR_RESERVE = 1024
# Connections accepted per wake-up of a listening socket, and the pause after accept() fails for
# want of descriptors or memory (instead of spinning on it).
ACCEPT_BATCH = 64
ACCEPT_BACKOFF = 0.5
# Where a TLS ClientHello is expected: how much of a plain-HTTP request is looked at (its request
# line and Host header) and how long the hint's connection waits for the client to close after it.
PLAIN_HTTP_PEEK = 4096
PLAIN_HTTP_LINGER = 1.0
# A request line's start (a TLS record starts with the byte 0x16, never with a capital letter).
_HTTP_METHOD = re.compile(rb"[A-Z]{3,10} ")
# A Host header whose value may be written into the hint: a name, an IPv4 or a bracketed IPv6
# address, and an optional port (replaced by the listener's own).
_HOST_HEADER = re.compile(rb"\r\nhost:[ \t]*([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
                          rb"(?::[0-9]{1,5})?[ \t]*\r\n", re.IGNORECASE)


def client_address(peername: Any) -> str:
    """The address a connection is counted under: IPv4 as it is, an IPv4-mapped IPv6 address as its
    IPv4 address, any other IPv6 address by its /64 (one site's prefix: a client holding a /64
    must not get 2**64 caps)."""
    host = peername[0] if isinstance(peername, tuple) and peername else ""
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGate:
    """Counts the open client connections, overall and per client address, and refuses one past
    either cap. Shared by every listener of the process."""

    def __init__(self, max_connections: int, max_per_address: int, *,
                 trusted_proxies: Sequence[Network] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        # A trusted reverse proxy carries many clients on its one address: only the overall
        # cap counts for it (its clients are throttled by the address it reports).
        self._proxies = tuple(trusted_proxies)
        self.open = 0
        self._by_address: dict[str, int] = {}
        self._clock = clock
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, since)

    def admit(self, address: str, *, proxy: bool = False) -> str | None:
        """Count a new connection from `address`, or return the rule that refuses it. A trusted
        `proxy` answers only to the overall cap."""
        count = self._by_address.get(address, 0)
        if self.open >= self.max_connections:
            rule = "max_connections"
        elif count >= self.max_per_address and not proxy:
            rule = "max_connections_per_address"
        else:
            self._by_address[address] = count + 1
            self.open += 1
            return None
        self._refused(address, rule)
        return rule

    def is_proxy(self, peername: Any) -> bool:
        """Whether a connection's peer is a trusted reverse proxy."""
        host = peername[0] if isinstance(peername, tuple) and peername else ""
        return in_networks(str(host), self._proxies)

    def release(self, address: str) -> None:
        """A connection counted by `admit` is closed."""
        count = self._by_address.get(address, 0) - 1
        if count > 0:
            self._by_address[address] = count
        else:
            self._by_address.pop(address, None)
        self.open = max(0, self.open - 1)

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def _refused(self, address: str, rule: str) -> None:
        metrics.listener_dropped(rule)
        now = self._clock()
        key = (address, rule)
        last = self._logged.get(key)
        if last is not None and now - last[0] < REFUSAL_LOG_INTERVAL:
            self._logged[key] = (last[0], last[1] + 1)
            return
        if last is None and len(self._logged) >= REFUSAL_LOG_ADDRESSES:
            self._logged = {k: v for k, v in self._logged.items()
                            if now - v[0] < REFUSAL_LOG_INTERVAL}
            if len(self._logged) >= REFUSAL_LOG_ADDRESSES:
                return  # a flood from many addresses: counted in the metric only
        self._logged[key] = (now, 0)
        log.warning("connection refused", extra={
            "peer": address, "rule": f"server.{rule}",
            "refused_since_last_log": last[1] if last is not None else 0})


def fit_descriptor_limit(max_connections: int) -> int:
    """The overall cap that the process's descriptor limit can hold.

    Raises the soft RLIMIT_NOFILE towards `max_connections` + DESCRIPTOR_RESERVE (never past the
    hard limit). If it stays lower, returns a lowered cap and says so once: past the descriptor
    limit accept() fails for every client, while the cap refuses only the excess.
    """
    need = max_connections + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # e.g. a system-call filter: the limit stays as the service manager set it
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    # Half the descriptors at least, for a small limit that the reserve would leave nearly empty.
    fitted = min(max_connections, max(1, soft - DESCRIPTOR_RESERVE, soft // 2))
    if fitted == max_connections:
        return max_connections
    log.warning("the descriptor limit is below what server.max_connections needs: cap lowered",
                extra={"max_connections": max_connections, "lowered_to": fitted,
                       "nofile_limit": soft, "needed": need})
    return fitted


class Listener:
    """Listening sockets whose connections pass `gate` before anything else: a connection is
    accepted here, counted or closed at once, and only then handed to the event loop with TLS
    (`tls_context`, under the handshake limit), so a refused one costs no handshake. aiohttp's
    handler (`handler_factory`, a runner's `server`) sees only admitted, handshaken connections."""

    def __init__(self, handler_factory: Callable[[], asyncio.Protocol], gate: ConnectionGate,
                 limits: ServerSettings, tls_context: ssl.SSLContext | None = None) -> None:
        self.handler_factory = handler_factory
        self.gate = gate
        self.limits = limits
        self.tls_context = tls_context
        self.handshakes: set[asyncio.Task[None]] = set()
        self._sockets: list[socket.socket] = []

    async def start(self, host: str, port: int, *, backlog: int = 512) -> None:
        loop = asyncio.get_running_loop()
        self._sockets = await _bind(loop, host, port, backlog)
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listening socket."""
        return [sock.getsockname()[:2] for sock in self._sockets]

    def close(self) -> None:
        """Stop accepting and cut connections still in their TLS handshake; admitted ones are the
        aiohttp runner's to drain."""
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []
        for task in list(self.handshakes):
            task.cancel()

    def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors or memory: back off instead of spinning
                log.warning("cannot accept connections", extra={"error": exc.strerror})
                loop.remove_reader(listening.fileno())
                loop.call_later(ACCEPT_BACKOFF, self._resume, listening)
                return
            address = client_address(peer)
            if self.gate.admit(address, proxy=self.gate.is_proxy(peer)) is not None:
                sock.close()  # refused: closed at once, before any TLS
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._serve(sock, address))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    def _resume(self, listening: socket.socket) -> None:
        if listening in self._sockets:
            asyncio.get_running_loop().add_reader(listening.fileno(), self._accept, listening)

    async def _serve(self, sock: socket.socket, address: str) -> None:
        """Hand an admitted socket to the loop (with TLS: once its handshake is done in time)."""
        loop = asyncio.get_running_loop()
        conn = _Connection(self, address)
        tls = self.tls_context
        timeout = self.limits.handshake_timeout
        started = loop.time()
        if tls is not None:
            first = await _first_bytes(loop, sock, timeout)
            if first is None or not first:  # late, or the client left without a byte
                metrics.listener_dropped("handshake_timeout" if first is None
                                         else "handshake_failed")
                sock.close()
                conn.release()
                return
            if _HTTP_METHOD.match(first):
                metrics.listener_dropped("plain_http")
                try:
                    await _plain_http_hint(loop, sock, first)
                finally:
                    sock.close()
                    conn.release()
                return
            timeout = max(0.001, timeout - (loop.time() - started))
        try:
            if tls is None:
                await loop.connect_accepted_socket(lambda: conn, sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: conn, sock, ssl=tls, ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=timeout)
        except asyncio.CancelledError:
            conn.release()
            raise
        except Exception:  # whatever ended the handshake, the connection is over
            if tls is not None:
                late = loop.time() - started >= timeout * 0.95
                metrics.listener_dropped("handshake_timeout" if late else "handshake_failed")
            conn.release()
            return
        if not conn.opened:  # the client left during the handshake: no connection_lost comes
            conn.release()


async def _first_bytes(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                       timeout: float) -> bytes | None:
    """The first bytes the client sent, left unread for the TLS handshake (b"": it closed; None:
    nothing came within `timeout`)."""
    try:
        return sock.recv(PLAIN_HTTP_PEEK, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return b""
    if not await _readable(loop, sock, timeout):
        return None
    try:
        return sock.recv(PLAIN_HTTP_PEEK, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                    timeout: float) -> bool:
    """Wait until `sock` has something to read (or its peer closed), at most `timeout` s."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    timer = loop.call_later(timeout, wake)
    try:
        await ready
    finally:
        timer.cancel()
        loop.remove_reader(sock.fileno())
    try:
        sock.recv(1, socket.MSG_PEEK)  # a byte, or b"" when the peer closed: readable both ways
    except (BlockingIOError, InterruptedError):
        return False  # the timer woke us
    except OSError:
        pass  # reset: the next read says so
    return True


def hint_for(first: bytes, local: Any) -> bytes:
    """The whole reply to a plain-HTTP request on the HTTPS port: `HTTP/1.0 400` and one line
    naming the https:// URL (the request's Host when it is a plain name or address, else the
    listener's own address; always the listener's port)."""
    host_port = local[:2] if isinstance(local, tuple) else ("localhost", 0)
    found = _HOST_HEADER.search(first.split(b"\r\n\r\n", 1)[0] + b"\r\n")
    if found is not None:
        host = found.group(1).decode("ascii")
    else:
        host = str(host_port[0])
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a wildcard bind: name no address)
            host = "localhost"
        elif ":" in host:
            host = f"[{host.split('%', 1)[0]}]"
    body = f"This is an HTTPS port: use https://{host}:{host_port[1]}/\n".encode("ascii")
    return (b"HTTP/1.0 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body)


async def _plain_http_hint(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                           first: bytes) -> None:
    """Answer a plain-HTTP request with `hint_for`, then close gently: what the client sent is
    read and dropped (unread bytes at close would reset the connection and could lose the reply),
    and the client gets PLAIN_HTTP_LINGER seconds to close first."""
    try:
        reply = hint_for(first, sock.getsockname())
        sock.recv(PLAIN_HTTP_PEEK)  # what was peeked
        sock.send(reply)  # a few hundred bytes into an empty send buffer
        sock.shutdown(socket.SHUT_WR)
        deadline = loop.time() + PLAIN_HTTP_LINGER
        while (left := deadline - loop.time()) > 0 and await _readable(loop, sock, left):
            if not sock.recv(PLAIN_HTTP_PEEK):
                return  # the client closed: nothing unread is left behind
    except OSError:
        return


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int,
                backlog: int) -> list[socket.socket]:
    """Listening sockets for every address of `host` (one port for all, when `port` is 0)."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def listen(handler_factory: Callable[[], asyncio.Protocol], gate: ConnectionGate,
                 limits: ServerSettings, host: str, port: int, *,
                 tls_context: ssl.SSLContext | None = None, backlog: int = 512) -> Listener:
    """A started `Listener` (raises OSError when the address cannot be bound)."""
    listener = Listener(handler_factory, gate, limits, tls_context)
    await listener.start(host, port, backlog=backlog)
    return listener


# Where a connection is in its first request: waiting for a byte, past blank lines only, in the
# head, or done (from then on aiohttp's keep-alive timer rules, and data passes straight through).
_FIRST_BYTE, _LEADING, _HEAD, _DONE = range(4)


class _Connection(asyncio.Protocol):
    """One admitted client connection, in front of aiohttp's handler: a timer cuts it when its first
    byte or its first request head is late, and its place is given back when it closes."""

    __slots__ = (
        "_address",
        "_counted",
        "_head_tail",
        "_inner",
        "_listener",
        "_stage",
        "_timer",
        "_transport",
    )

    def __init__(self, listener: Listener, address: str) -> None:
        self._listener = listener
        self._address = address
        self._counted = True  # the listener admitted it
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stage = _FIRST_BYTE
        self._head_tail = b""  # the last bytes seen of the head, for a blank line split in two

    @property
    def opened(self) -> bool:
        return self._inner is not None

    def release(self) -> None:
        """Give the connection's place back (once)."""
        if self._counted:
            self._counted = False
            self._listener.gate.release(self._address)

    # A stream connection's transport (uvloop's do not subclass asyncio.Transport, so no isinstance
    # can narrow the BaseTransport that asyncio.Protocol declares).
    def connection_made(  # type: ignore[override]  # a stream transport (see above)
            self, transport: asyncio.Transport) -> None:
        """The connection is ready (with TLS: its handshake is done): aiohttp takes it, behind the
        first-byte timer."""
        self._transport = transport
        self._inner = inner = self._listener.handler_factory()
        inner.connection_made(transport)
        self._arm("first_byte_timeout", self._listener.limits.first_byte_timeout)

    # --- the first request's head -----------------------------------------------------------

    def _arm(self, rule: str, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, rule)

    def _expire(self, rule: str) -> None:
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        metrics.listener_dropped(rule)
        log.debug("connection closed: too slow", extra={"peer": self._address,
                                                         "rule": f"server.{rule}"})
        self._transport.abort()  # no TLS close_notify to wait for: the fd goes now

    def _watch_head(self, data: bytes) -> None:
        """At the first byte, swap the first-byte timer for the head timer; at the blank line that
        ends the head, disarm it. Blank lines before the request line (RFC 9112 lets a server
        ignore them) do not start the head, nor end it."""
        if self._stage == _FIRST_BYTE:
            self._stage = _LEADING
            self._arm("request_head_timeout", self._listener.limits.request_head_timeout)
        if self._stage == _LEADING:
            data = data.lstrip(b"\r\n")
            if not data:
                return
            self._stage = _HEAD
        seen = self._head_tail + data
        if b"\n\n" in seen or b"\n\r\n" in seen:
            self._stage = _DONE
            self._head_tail = b""
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        else:
            self._head_tail = seen[-2:]

    # --- asyncio.Protocol, forwarded to aiohttp's handler ---------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._stage != _DONE:
            self._watch_head(data)
        self._inner.data_received(data)  # type: ignore[union-attr]  # set in connection_made

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.release()
        inner, self._inner = self._inner, None
        self._transport = None
        if inner is not None:
            inner.connection_lost(exc)
