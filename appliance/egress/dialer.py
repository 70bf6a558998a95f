"""The one egress dialer: every outbound TCP connection of the process is checked and opened here.

Owns resolve-once, check-every-address, connect-only-to-checked, source binding, the connect
timeout, decision logging and counting. Never re-resolves a name and never logs payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.egress.addresses import (
    AddressError,
    Host,
    IPAddress,
    canonical,
    parse_host,
    parse_ip,
)
from appliance.egress.policy import (
    RULE_MALFORMED,
    RULE_NO_ADDRESS,
    Decision,
    EgressPolicy,
    PolicyHolder,
)
from appliance.egress.resolver import Resolver, SystemResolver
from appliance.errors import Forbidden, UpstreamError, UpstreamTimeout

log = logging.getLogger("appliance.egress")

DEFAULT_CONNECT_TIMEOUT = 10.0
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2


class EgressDenied(Forbidden):
    """The egress policy refused a destination (403). No socket was opened to it."""

    code = "egress_denied"

    def __init__(self, host: str, port: int, decision: Decision) -> None:
        super().__init__(f"egress to {_destination(host, port)} denied by rule '{decision.rule}'")
        self.host = host
        self.port = port
        self.decision = decision
        self.rule = decision.rule


class EgressUnreachable(UpstreamError, ConnectionError):
    """The destination was allowed but no connection could be made (or the name did not resolve)."""

    code = "egress_unreachable"

    def __init__(self, message: str) -> None:
        UpstreamError.__init__(self, message)


class EgressTimeout(UpstreamTimeout, TimeoutError):
    """The destination was allowed but the connection did not complete within the timeout."""

    code = "egress_timeout"

    def __init__(self, message: str) -> None:
        UpstreamTimeout.__init__(self, message)


def _destination(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# What a failed connect means, in words, by errno (the rest: the C library's own sentence).
_CONNECT_PROBLEMS: dict[int, str] = {
    errno.ECONNREFUSED: "connection refused by {ip} port {port} (nothing listens there, or a "
                        "firewall rejects it)",
    errno.ETIMEDOUT: "no answer from {ip} port {port} (timed out)",
    errno.EHOSTUNREACH: "no route to {ip} (host unreachable)",
    errno.ENETUNREACH: "no route to {ip} (network unreachable)",
    errno.ECONNRESET: "connection reset by {ip} port {port}",
    errno.EADDRNOTAVAIL: "cannot reach {ip} port {port} from the configured source address",
}


def describe_connect_error(exc: BaseException, ip: str, port: int | None) -> str:
    """A failed TCP connect to `ip` `port` in words ("connection refused by 127.0.0.1 port 1"),
    never a Python exception's text (asyncio's "Connect call failed ('127.0.0.1', 1)")."""
    if isinstance(exc, TimeoutError):
        return f"no answer from {ip} port {port} (timed out)"
    number = exc.errno if isinstance(exc, OSError) else None
    if number in _CONNECT_PROBLEMS:
        return _CONNECT_PROBLEMS[number].format(ip=ip, port=port)
    if number:
        return f"cannot connect to {ip} port {port}: {os.strerror(number).lower()}"
    return f"cannot connect to {ip} port {port}"


class EgressCounters:
    """In-process counters of egress decisions and connections, for `/metrics`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, bool, str], int] = {}
        self._connections: dict[tuple[str, str], int] = {}

    def decision(self, purpose: str, allowed: bool, rule: str) -> None:
        with self._lock:
            key = (purpose, allowed, rule)
            self._decisions[key] = self._decisions.get(key, 0) + 1

    def connection(self, purpose: str, outcome: str) -> None:
        with self._lock:
            key = (purpose, outcome)
            self._connections[key] = self._connections.get(key, 0) + 1

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """`{"decisions": [{purpose, allowed, rule, count}],
        "connections": [{purpose, outcome, count}]}`; outcome: connected, failed or timeout."""
        with self._lock:
            return {
                "decisions": [
                    {"purpose": p, "allowed": a, "rule": r, "count": n}
                    for (p, a, r), n in sorted(self._decisions.items())
                ],
                "connections": [
                    {"purpose": p, "outcome": o, "count": n}
                    for (p, o), n in sorted(self._connections.items())
                ],
            }


@dataclass(frozen=True)
class CheckedDestination:
    """A destination that passed the policy: the only addresses a connection may go to."""

    host: str  # as the caller gave it
    port: int
    decision: Decision
    addresses: tuple[IPAddress, ...]  # checked, in the resolver's order, usable families only
    server_hostname: str | None  # for TLS SNI and the Host header: the name, None for an address


@dataclass
class ProbeResult:
    """What `POST /api/v1/egress/probe` reports."""

    allowed: bool
    rule: str
    addresses: list[str]
    connected: bool = False
    source_address: str | None = None
    error: str | None = None


class Dialer:
    """Resolves once, checks every address, connects only to a checked one, from
    `source_address`."""

    def __init__(
        self,
        policy: PolicyHolder,
        *,
        resolver: Resolver | None = None,
        counters: EgressCounters | None = None,
    ) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or SystemResolver()
        self.counters = counters or EgressCounters()

    # --- decisions ------------------------------------------------------------------------------

    async def resolve_and_check(
        self, host: str, port: int, *, purpose: str = "check", datasource: str | None = None
    ) -> Decision:
        """The decision for `host:port` (resolving a name once). Logged and counted; never raises
        for a denial."""
        decision, _ = await self._decide(host, port)
        self._record(decision, host, port, purpose, datasource)
        return decision

    async def check(
        self, host: str, port: int, *, purpose: str, datasource: str | None = None
    ) -> CheckedDestination:
        """Resolve once and check; raise `EgressDenied` (or `EgressUnreachable` for a name that
        does not resolve). The result holds the only addresses a connection may use."""
        decision, parsed = await self._decide(host, port)
        self._record(decision, host, port, purpose, datasource)
        if decision.rule == RULE_NO_ADDRESS:
            raise EgressUnreachable(f"the name {host} does not resolve to an address "
                                    "(no such name, or DNS did not answer)")
        if not decision.allowed or parsed is None:
            raise EgressDenied(host, port, decision)
        policy = self.policy.policy
        usable = []
        for text in decision.addresses:
            ip = parse_ip(text)
            if ip is not None and policy.family_allowed(ip):
                usable.append(ip)
        return CheckedDestination(
            host=host, port=port, decision=decision, addresses=tuple(usable),
            server_hostname=parsed.name,
        )

    async def decide_under(self, policy: EgressPolicy, host: str, port: int) -> Decision:
        """The decision `policy` (not the live one) would take for `host:port`, resolving a name
        once: for refusing a policy change before it is stored. Neither logged nor counted."""
        decision, _ = await self._decide(host, port, policy)
        return decision

    async def _decide(self, host: str, port: int,
                      policy: EgressPolicy | None = None) -> tuple[Decision, Host | None]:
        try:
            parsed = parse_host(host)
        except AddressError:
            return Decision(False, RULE_MALFORMED), None
        policy = policy or self.policy.policy
        if parsed.ip is not None:
            return policy.decide(parsed, port), parsed
        early = policy.decide_name(parsed, port)
        if early is not None:  # denied by name: do not even ask DNS
            return early, parsed
        assert parsed.name is not None
        try:
            answers = await self.resolver.resolve(parsed.name, port)
        except (OSError, UnicodeError):
            answers = []
        addresses: list[IPAddress] = []
        for answer in answers:
            ip = parse_ip(str(answer))
            if ip is None:  # a resolver answered something that is not an address: refuse all
                return Decision(False, RULE_MALFORMED, [str(a) for a in answers]), parsed
            addresses.append(canonical(ip))
        return policy.decide(parsed, port, addresses), parsed

    def _record(self, decision: Decision, host: str, port: int, purpose: str,
                datasource: str | None) -> None:
        self.counters.decision(purpose, decision.allowed, decision.rule)
        log.log(
            logging.INFO if decision.allowed else logging.WARNING,
            "egress allowed" if decision.allowed else "egress denied",
            extra={
                "purpose": purpose,
                "datasource": datasource,
                "destination": _destination(host, port),
                "rule": decision.rule,
                "allowed": decision.allowed,
                "addresses": decision.addresses,
            },
        )

    def addresses_to_allow(self) -> list[str]:
        """The addresses destinations will see connections come from: `source_address` when set,
        else the address the kernel picks on the default route of each family (no packet sent).
        Behind NAT the far side sees the NAT's address instead (see docs/egress.md)."""
        policy = self.policy.policy
        configured = [a for a in (policy.source_v4, policy.source_v6) if a is not None]
        if configured:
            return configured
        found = []
        for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as udp:
                    udp.connect((probe, 9))  # a UDP connect only asks the routing table
                    found.append(str(udp.getsockname()[0]))
            except OSError:
                continue
        return found

    # --- connections ----------------------------------------------------------------------------

    async def open_socket(
        self,
        host: str,
        port: int,
        *,
        purpose: str,
        datasource: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> tuple[socket.socket, CheckedDestination]:
        """A connected, non-blocking TCP socket to a checked address of `host:port`.

        The timeout covers resolution and every connection attempt. Addresses are tried in the
        resolver's order; only the checked ones (all of which passed) are ever tried.
        """
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                checked = await self.check(host, port, purpose=purpose, datasource=datasource)
        except TimeoutError:
            self.counters.connection(purpose, "timeout")
            raise EgressTimeout(f"resolving {_destination(host, port)} timed out") from None
        return await self.connect_checked(checked, purpose=purpose, deadline=deadline), checked

    async def connect_checked(
        self, checked: CheckedDestination, *, purpose: str, deadline: float
    ) -> socket.socket:
        """Connect to one of `checked.addresses` (never anything else) before `deadline`."""
        loop = asyncio.get_running_loop()
        policy = self.policy.policy
        errors: list[str] = []
        timed_out = False
        for ip in checked.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            sock: socket.socket | None = None
            try:
                sock = _new_socket(ip, policy.source_for(ip))
                sockaddr: tuple[Any, ...] = (str(ip), checked.port)
                if ip.version == 6:
                    sockaddr = (str(ip), checked.port, 0, 0)
                async with asyncio.timeout(remaining):
                    await loop.sock_connect(sock, sockaddr)
            except TimeoutError as exc:
                _close(sock)
                timed_out = True
                errors.append(describe_connect_error(exc, str(ip), checked.port))
                continue
            except OSError as exc:
                _close(sock)
                errors.append(describe_connect_error(exc, str(ip), checked.port))
                continue
            except BaseException:
                _close(sock)
                raise
            self.counters.connection(purpose, "connected")
            return sock
        where = _destination(checked.host, checked.port)
        # An address given as the host is named once: "connection refused by 127.0.0.1 port 1".
        named = [str(ip) for ip in checked.addresses] != [checked.host.strip("[]")]
        if timed_out:
            self.counters.connection(purpose, "timeout")
            detail = "; ".join(errors) or "no time left"
            if named or not errors:
                raise EgressTimeout(f"connecting to {where} timed out ({detail})")
            raise EgressTimeout(detail)
        self.counters.connection(purpose, "failed")
        detail = "; ".join(errors) or "no usable address"
        if named or not errors:
            raise EgressUnreachable(f"cannot connect to {where}: {detail}")
        raise EgressUnreachable(detail)

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        purpose: str,
        datasource: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """`loop.create_connection` through the policy. TLS SNI and certificate checks use the
        original name (or `server_hostname`), never the address connected to."""
        sock, checked = await self.open_socket(host, port, purpose=purpose, datasource=datasource,
                                               timeout=timeout)
        loop = asyncio.get_running_loop()
        if ssl is not None:
            kwargs["server_hostname"] = _sni(checked, server_hostname)
        try:
            return await loop.create_connection(protocol_factory, sock=sock, ssl=ssl, **kwargs)
        except BaseException:
            sock.close()
            raise

    async def connect(
        self,
        host: str,
        port: int,
        *,
        purpose: str,
        datasource: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream pair to `host:port` through the policy (TLS with the original name if `ssl`)."""
        sock, checked = await self.open_socket(host, port, purpose=purpose, datasource=datasource,
                                               timeout=timeout)
        kwargs: dict[str, Any] = {}
        if ssl is not None:
            kwargs["server_hostname"] = _sni(checked, server_hostname)
        try:
            return await asyncio.open_connection(sock=sock, ssl=ssl, **kwargs)
        except BaseException:
            sock.close()
            raise

    async def probe(self, host: str, port: int, *, timeout: float = 5.0) -> ProbeResult:
        """Decide, then try a TCP connection if allowed: for the admin's probe endpoint."""
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                checked = await self.check(host, port, purpose="probe")
        except EgressDenied as exc:
            return ProbeResult(False, exc.rule, exc.decision.addresses)
        except EgressUnreachable as exc:
            return ProbeResult(False, RULE_NO_ADDRESS, [], error=exc.message)
        except TimeoutError:
            return ProbeResult(False, RULE_NO_ADDRESS, [],
                               error=f"resolving the name {host} timed out (DNS did not answer)")
        decision = checked.decision
        try:
            sock = await self.connect_checked(checked, purpose="probe", deadline=deadline)
        except (EgressUnreachable, EgressTimeout) as exc:
            source = None
            if checked.addresses:
                source = self.policy.policy.source_for(checked.addresses[0])
            return ProbeResult(True, decision.rule, decision.addresses, source_address=source,
                               error=exc.message)
        with contextlib.closing(sock):
            source = str(sock.getsockname()[0])
        return ProbeResult(True, decision.rule, decision.addresses, connected=True,
                           source_address=source)


def _new_socket(ip: IPAddress, source: str | None) -> socket.socket:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            with contextlib.suppress(OSError):  # lets many connections share one source address
                sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0) if family == socket.AF_INET else (source, 0, 0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _sni(checked: CheckedDestination, server_hostname: str | None) -> str:
    """The name TLS verifies: the caller's, else the original host name, else the address."""
    return server_hostname or checked.server_hostname or checked.host.strip("[]")


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()
