"""The aiohttp client's hook into the egress dialer: a connector that checks every new connection.

Owns `EgressConnector`, `egress_session` and the hop-by-hop redirect follower. Never lets aiohttp
resolve or cache a name itself, keep cookies between requests or reuse a connection opened under
an older policy, never sends the caller's headers or body to another origin on a redirect, and
never follows a redirect from https to http.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict
from yarl import URL

from appliance.egress.addresses import parse_ip
from appliance.egress.dialer import DEFAULT_CONNECT_TIMEOUT, Dialer
from appliance.egress.policy import EgressPolicy
from appliance.errors import UpstreamError

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class EgressConnector(aiohttp.TCPConnector):
    """A TCPConnector whose only way to an address is the dialer's check.

    aiohttp calls `_resolve_host` for every new connection (the DNS cache is off, and this
    override also covers IP literals, which aiohttp would otherwise never resolve); it connects
    only to the addresses returned, which are the checked ones. The socket factory binds the
    source address of the address's family. TLS SNI and Host stay the URL's name (aiohttp's own
    behaviour, since only the addresses are replaced).

    A kept-alive connection was checked once, when it was opened: when the policy changes (an
    API change, another instance's, a reloaded settings file), the idle ones are closed at once
    and those in use are closed when their request releases them, so the next request dials
    afresh through the new policy. aiohttp has no public hook for either: `_create_connection`
    (to note the policy each connection was checked under), `_release` and the idle pool
    `_conns` are its private names (`tests/test_egress_reuse.py` fails if they change).
    """

    def __init__(self, dialer: Dialer, *, purpose: str, datasource: str | None = None,
                 **kwargs: Any) -> None:
        for forbidden in ("resolver", "local_addr", "socket_factory", "use_dns_cache"):
            if forbidden in kwargs:
                raise TypeError(f"EgressConnector does not take {forbidden!r}: the dialer decides")
        super().__init__(use_dns_cache=False, socket_factory=self._socket, **kwargs)
        self._dialer = dialer
        self._purpose = purpose
        self._datasource = datasource
        # Each open connection -> the policy it was checked under (gone with the connection).
        self._checked_under: weakref.WeakKeyDictionary[ResponseHandler, EgressPolicy] = (
            weakref.WeakKeyDictionary())
        # The idle pool is the loop's the connector is made in (aiohttp makes it in a running
        # loop): a change installed from another thread is brought there.
        dialer.policy.on_change(self._close_idle, loop=asyncio.get_running_loop())

    async def _resolve_host(self, host: str, port: int,
                            traces: Sequence[Any] | None = None) -> list[ResolveResult]:
        checked = await self._dialer.check(host, port, purpose=self._purpose,
                                           datasource=self._datasource)
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for ip in checked.addresses
        ]

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> ResponseHandler:
        # Noted before the check: a change while connecting makes the connection stale at once.
        policy = self._dialer.policy.policy
        protocol = await super()._create_connection(req, traces, timeout)
        self._checked_under[protocol] = policy
        return protocol

    def _release(self, key: Any, protocol: ResponseHandler, *,
                 should_close: bool = False) -> None:
        stale = self._checked_under.get(protocol) is not self._dialer.policy.policy
        super()._release(key, protocol, should_close=should_close or stale)

    def _close_idle(self) -> None:
        """The policy changed: close the idle connections (in the connector's loop). A closed
        connection is no longer `is_connected()`: aiohttp drops it from the pool."""
        for idle in list(self._conns.values()):
            for protocol, _since in list(idle):
                protocol.close()

    def _socket(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        ip = parse_ip(str(sockaddr[0]))
        if ip is None:  # aiohttp only ever passes the numeric addresses `_resolve_host` returned
            raise OSError(f"refusing to connect to non-numeric address {sockaddr[0]!r}")
        source = self._dialer.policy.policy.source_for(ip)
        sock = socket.socket(family, type_, proto)
        try:
            if source is not None:
                sock.bind((source, 0) if family == socket.AF_INET else (source, 0, 0, 0))
        except BaseException:
            sock.close()
            raise
        return sock


def egress_session(
    dialer: Dialer,
    *,
    purpose: str,
    datasource: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    total_timeout: float | None = None,
    limit: int = 100,
    **session_kwargs: Any,
) -> aiohttp.ClientSession:
    """A ClientSession whose every connection goes through the dialer (no proxy from the
    environment, connect timeout applied) and that keeps no cookies: a cookie one request
    received is never sent by another (another user's run, or a later redirect hop)."""
    session_kwargs.setdefault("cookie_jar", aiohttp.DummyCookieJar())
    connector = EgressConnector(dialer, purpose=purpose, datasource=datasource, limit=limit)
    timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                 **session_kwargs)


def origin(url: URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) as browsers compare origins: yarl lower-cases the scheme and host and
    fills in the default port (http 80, https 443); a trailing dot on the host is dropped."""
    return (url.scheme, (url.host or "").lower().rstrip("."), url.port)


def _redirect_target(current: URL, location: str) -> URL:
    """Where a Location header points, resolved against the current URL (so `//host/x` and
    `/x` work), or UpstreamError. Only http and https, never with user:password in it."""
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError):
        raise UpstreamError("redirect to an invalid location") from None
    if target.scheme not in ("http", "https") or not target.host:
        # The scheme is not named: an upstream may have echoed a run's value into Location.
        raise UpstreamError("redirect to an unsupported location (only http and https are "
                            "followed)")
    if target.user is not None or target.password is not None:
        raise UpstreamError("redirect to a location with a user name or password in it")
    if current.scheme == "https" and target.scheme == "http":
        raise UpstreamError("redirect from https to plain http refused")
    return target.with_fragment(None)


async def request_following_redirects(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    max_redirects: int = 5,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientResponse:
    """Send a request and follow redirects one hop at a time, each hop a new policy check.

    The session must use an `EgressConnector` (so each hop's host is checked before any socket is
    opened to it) and keep no cookies. `headers` (the caller's: credentials and a template's
    alike, any of which may carry a secret) and `auth` go to the first origin only: once a hop
    leaves it, none is sent for the rest of the request, even if a later hop comes back. A 307 or
    308 that would send the body to another origin is refused (UpstreamError), as is a redirect
    from https to http, whatever its origin. 303 (and 301/302 after a POST) become a GET without
    a body. Only http and https are followed.
    """
    if not isinstance(session.connector, EgressConnector):
        raise TypeError("redirects may only be followed through an EgressConnector session")
    if not isinstance(session.cookie_jar, aiohttp.DummyCookieJar):
        raise TypeError("redirects may only be followed by a session that keeps no cookies")
    current = URL(url)
    first_origin = origin(current)
    send_headers: CIMultiDict[str] = CIMultiDict(headers or {})
    for _hop in range(max_redirects + 1):
        response = await session.request(method, current, headers=send_headers,
                                         allow_redirects=False, **kwargs)
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response
        response.release()
        target = _redirect_target(current, location)
        if response.status == 303 or (response.status in (301, 302) and method.upper() == "POST"):
            method = "GET"
            for body_key in ("data", "json"):
                kwargs.pop(body_key, None)
        if origin(target) != first_origin:
            if kwargs.get("data") is not None or kwargs.get("json") is not None:
                # The body was written for the first origin (it may carry a run's values).
                raise UpstreamError(f"redirect ({response.status}) would send the request's "
                                    f"body to another origin; refused")
            # For good: nothing in `send_headers` is added back if a later hop comes home.
            send_headers.clear()
            kwargs.pop("auth", None)
        current = target
    raise UpstreamError(f"too many redirects (more than {max_redirects})")
