"""The egress policy: which destinations the appliance may connect to, and the rule that says so.

Owns the always-denied ranges and names, the allow/deny lists, strict mode, `allow_private` and
the appliance's own listeners. Pure decisions: never resolves a name, never opens a socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from appliance.egress.addresses import (
    AddressError,
    Host,
    IPAddress,
    addresses_to_check,
    canonical,
    parse_host,
    parse_ip,
)
from appliance.settings import EgressSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
log = logging.getLogger("appliance.egress")


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Instance metadata and platform endpoints that hold credentials (checked before every other range:
# some are public or ULA addresses, not link-local).
METADATA_ADDRESSES = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner, ...
    "169.254.169.253/32",  # AWS VPC DNS
    "169.254.169.123/32",  # AWS time sync
    "169.254.170.2/32",  # AWS ECS task credentials
    "169.254.170.23/32",  # AWS EKS pod identity
    "169.254.0.23/32",  # Tencent Cloud
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
    "fd00:ec2::23/128",  # AWS EKS pod identity over IPv6
    "fd00:ec2::123/128",  # AWS time sync over IPv6
    "fd20:ce::254/128",  # GCP metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud
    "168.63.129.16/32",  # Azure WireServer (a public address reachable from every Azure VM)
    "192.0.0.192/32",  # Oracle Cloud (classic)
)
# Names of metadata services: the name itself and every name under it.
METADATA_NAMES = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.packet.net",
    "metadata.platformequinix.com",
    "metadata.oraclecloud.com",
)

# (rule name, networks) in the order they are checked; none of them can be allowed by any list.
ALWAYS_DENIED: tuple[tuple[str, tuple[Network, ...]], ...] = (
    ("always-deny: cloud metadata", METADATA_ADDRESSES),
    ("always-deny: link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("always-deny: unspecified", _nets("0.0.0.0/8", "::/128")),
    ("always-deny: broadcast", _nets("255.255.255.255/32")),
    ("always-deny: multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("always-deny: reserved", _nets("240.0.0.0/4", "100::/64")),
)

# "Private" for `allow_private = false`: RFC 1918, CGNAT, ULA, site-local, benchmarking, and
# loopback (the appliance's own host is the most private network of all).
PRIVATE = _nets(
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15",
    "127.0.0.0/8", "::1/128", "fc00::/7", "fec0::/10",
)
LOOPBACK = _nets("127.0.0.0/8", "::1/128")

RULE_OWN_LISTENER = "appliance's own listener"
RULE_PRIVATE = "private network not allowed"
RULE_STRICT = "strict: not in allow list"
RULE_DEFAULT = "default: allowed"
RULE_MALFORMED = "malformed destination"
RULE_NO_ADDRESS = "name did not resolve"
RULE_NO_SOURCE = "no source address for the destination's address family"


@dataclass(frozen=True)
class Decision:
    """The outcome for one destination: allowed or not, the deciding rule, the addresses seen."""

    allowed: bool
    rule: str
    addresses: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rule:
    """An `allow` or `deny` entry: a network or a name (`*.suffix`: every name under it), a port."""

    text: str
    network: Network | None = None
    name: str | None = None
    wildcard: bool = False
    port: int | None = None

    def matches_name(self, name: str | None, port: int) -> bool:
        if self.name is None or name is None or not self._port_ok(port):
            return False
        if self.wildcard:
            return name.endswith("." + self.name)
        return name == self.name

    def matches_address(self, ip: IPAddress, port: int) -> bool:
        if self.network is None or not self._port_ok(port):
            return False
        return ip.version == self.network.version and ip in self.network

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


_PORT_SUFFIX = re.compile(r"^(?P<host>.+?):(?P<port>\d{1,5})$")


def parse_rule(text: str) -> Rule:
    """Parse an allow/deny entry: `10.0.0.0/8`, `10.0.0.0/8:5432`, `[fd00::/8]:5432`,
    `db.example.com`, `*.example.com:443`, `2130706433` (legacy IPv4 spellings become the
    address). Raises ValueError if bad."""
    raw = str(text).strip().lower()
    if not raw:
        raise ValueError("empty rule")
    host, port = raw, None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", raw)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
        port = int(port_text) if port_text else None
    else:
        match = _PORT_SUFFIX.match(raw)
        # `host:port` when what is before the colon is not itself an IPv6 address or network.
        if match and (":" not in match.group("host") or "/" in match.group("host")):
            host, port = match.group("host"), int(match.group("port"))
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"{text!r} has a bad port")
    if "/" in host:
        address, _, length = host.partition("/")
        ip = parse_ip(address)
        if ip is None or not length.isdigit():
            raise ValueError(f"{text!r} is not a CIDR")
        try:
            network = ipaddress.ip_network(f"{ip}/{length}", strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR (bad prefix length)") from None
        return Rule(text=raw, network=network, port=port)
    wildcard = host.startswith("*.")
    try:
        parsed = parse_host(host[2:] if wildcard else host)
    except AddressError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if parsed.ip is not None:
        if wildcard:
            raise ValueError(f"{text!r}: a wildcard applies to names, not addresses")
        return Rule(text=raw, network=ipaddress.ip_network(parsed.ip), port=port)
    return Rule(text=raw, name=parsed.name, wildcard=wildcard, port=port)


def is_metadata_name(name: str) -> bool:
    return any(name == known or name.endswith("." + known) for known in METADATA_NAMES)


def _always_denied(ip: IPAddress) -> str | None:
    for rule, networks in ALWAYS_DENIED:
        if any(ip.version == net.version and ip in net for net in networks):
            return rule
    return None


def _in(ip: IPAddress, networks: Iterable[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _is_local_address(ip: IPAddress) -> bool:
    """True if `ip` is an address of this host (binding to it succeeds)."""
    if _in(ip, LOOPBACK):
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Listener:
    ip: IPAddress
    port: int

    @property
    def wildcard(self) -> bool:
        return self.ip.is_unspecified


def _listeners(endpoints: Iterable[tuple[str, int]]) -> tuple[Listener, ...]:
    out: list[Listener] = []
    for host, port in endpoints:
        text = str(host).strip() or "0.0.0.0"  # noqa: S104 - an empty host is every interface
        ip = parse_ip(text)
        if ip is not None:
            out.append(Listener(canonical(ip), int(port)))
            continue
        # A listener given by name (`localhost`): every address it resolves to, at start-up.
        try:
            infos = socket.getaddrinfo(text, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        for info in infos:
            resolved = parse_ip(str(info[4][0]))
            if resolved is not None:
                out.append(Listener(canonical(resolved), int(port)))
        if text.lower().rstrip(".") == "localhost":
            out += [Listener(ipaddress.ip_address("127.0.0.1"), int(port)),
                    Listener(ipaddress.ip_address("::1"), int(port))]
    return tuple(dict.fromkeys(out))


class EgressPolicy:
    """An immutable policy built from `EgressSettings`; `decide` is pure apart from a bind probe
    for wildcard listeners."""

    def __init__(self, settings: EgressSettings,
                 own_listeners: Sequence[tuple[str, int]] = ()) -> None:
        self.settings = settings
        self.mode = settings.mode
        if self.mode not in ("default", "strict"):
            raise ValueError(f"egress mode must be default or strict, not {settings.mode!r}")
        self.allow = tuple(parse_rule(r) for r in settings.allow)
        self.deny = tuple(parse_rule(r) for r in settings.deny)
        self.allow_private = bool(settings.allow_private)
        sources = []
        for text in settings.source_address:
            ip = parse_ip(text)
            if ip is None:
                raise ValueError(f"source address {text!r} is not an IP address")
            sources.append(canonical(ip))
        self.source_v4 = next((str(a) for a in sources if a.version == 4), None)
        self.source_v6 = next((str(a) for a in sources if a.version == 6), None)
        self.listeners = _listeners(own_listeners)

    def source_for(self, ip: IPAddress) -> str | None:
        """The configured source address for this destination's family (None: the kernel's
        choice)."""
        return self.source_v6 if ip.version == 6 else self.source_v4

    def family_allowed(self, ip: IPAddress) -> bool:
        """With a source address configured, only families that have one may be used."""
        if self.source_v4 is None and self.source_v6 is None:
            return True
        return self.source_for(ip) is not None

    def decide_name(self, host: Host, port: int) -> Decision | None:
        """What can be decided from the name alone (before resolving), or None."""
        if host.name is not None:
            if is_metadata_name(host.name):
                return Decision(False, "always-deny: cloud metadata")
            for rule in self.deny:
                if rule.matches_name(host.name, port):
                    return Decision(False, f"deny: {rule.text}")
        return None

    def decide(self, host: Host | str, port: int, addresses: Sequence[IPAddress] = ()) -> Decision:
        """Decide for `host:port` that resolved to `addresses` (an IP literal is its own address).

        Every address, and every IPv4 address embedded in one, must pass.
        """
        if isinstance(host, str):
            try:
                host = parse_host(host)
            except AddressError:
                return Decision(False, RULE_MALFORMED)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            return Decision(False, RULE_MALFORMED)
        resolved = [canonical(a) for a in ([host.ip] if host.ip is not None else addresses)]
        shown = [str(a) for a in dict.fromkeys(resolved)]
        early = self.decide_name(host, port)
        if early is not None:
            return Decision(early.allowed, early.rule, shown)
        if not resolved:
            return Decision(False, RULE_NO_ADDRESS, shown)

        candidates = [c for ip in resolved for c in addresses_to_check(ip)]
        for ip in candidates:
            always = _always_denied(ip)
            if always is not None:
                return Decision(False, always, shown)
        for ip in candidates:
            if self._is_own_listener(ip, port):
                return Decision(False, RULE_OWN_LISTENER, shown)
        for rule in self.deny:
            if any(rule.matches_address(ip, port) for ip in candidates):
                return Decision(False, f"deny: {rule.text}", shown)
        if not any(self.family_allowed(ip) for ip in resolved):
            return Decision(False, RULE_NO_SOURCE, shown)

        allow_rule = self._allow_rule(host, port, resolved, candidates)
        if allow_rule is not None:
            return Decision(True, f"allow: {allow_rule.text}", shown)
        if self.mode == "strict":
            return Decision(False, RULE_STRICT, shown)
        if not self.allow_private and any(_in(ip, PRIVATE) for ip in candidates):
            return Decision(False, RULE_PRIVATE, shown)
        return Decision(True, RULE_DEFAULT, shown)

    def _allow_rule(self, host: Host, port: int, resolved: Sequence[IPAddress],
                    candidates: Sequence[IPAddress]) -> Rule | None:
        """The allow entry that names this destination: by name, or a network holding every address
        (and every embedded IPv4 address) it resolved to."""
        for rule in self.allow:
            if rule.matches_name(host.name, port):
                return rule
            if rule.network is not None and all(
                rule.matches_address(ip, port) or _embedded_only_in(ip, resolved, rule, port)
                for ip in candidates
            ):
                return rule
        return None

    def _is_own_listener(self, ip: IPAddress, port: int) -> bool:
        for listener in self.listeners:
            if listener.port != port:
                continue
            if listener.ip == ip:
                return True
            same_family = listener.ip.version == ip.version or listener.ip.version == 6
            if listener.wildcard and same_family and _is_local_address(ip):
                return True
        return False


def _embedded_only_in(ip: IPAddress, resolved: Sequence[IPAddress], rule: Rule, port: int) -> bool:
    """An embedded IPv4 need not match an allow network that already holds its IPv6 carrier."""
    if ip in resolved:
        return False
    return any(
        r.version == 6 and rule.matches_address(r, port) and ip in addresses_to_check(r)
        for r in resolved
    )


def _call_watcher(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # one watcher's failure never stops the policy or the others
        log.exception("an egress policy watcher failed")


class PolicyHolder:
    """The process's current policy: replaced atomically by `update`, read by every dial. Whoever
    keeps connections open past their check (a connection pool) asks `on_change` to hear of a
    new policy, so that no connection opened under the old one is used under the new."""

    def __init__(self, settings: EgressSettings) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[tuple[str, int], ...] = ()
        self._policy = EgressPolicy(settings)
        self._watchers: list[tuple[weakref.WeakMethod[Callable[[], None]],
                                   asyncio.AbstractEventLoop | None]] = []

    @property
    def policy(self) -> EgressPolicy:
        return self._policy

    @property
    def settings(self) -> EgressSettings:
        return self._policy.settings

    def update(self, settings: EgressSettings) -> EgressPolicy:
        """Build and install a new policy (raises ValueError, leaving the old one, if it is bad),
        then tell the watchers."""
        with self._lock:
            policy = EgressPolicy(settings, self._listeners)
            self._policy = policy
        self._tell_watchers()
        return policy

    def set_own_listeners(self, endpoints: Iterable[tuple[str, int]]) -> None:
        """The appliance's own listening sockets (HOST, PORT): always denied as destinations."""
        with self._lock:
            self._listeners = tuple((str(h), int(p)) for h, p in endpoints)
            self._policy = EgressPolicy(self._policy.settings, self._listeners)
        self._tell_watchers()

    def on_change(self, callback: Callable[[], None],
                  loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Call `callback` (a bound method) after every new policy is installed: in `loop` when
        given (at once when the policy is installed from that loop, else soon after, from any
        thread), else in the thread that installed it. Held weakly: a watcher that is gone is
        simply no longer called."""
        with self._lock:
            self._watchers = [w for w in self._watchers if w[0]() is not None]
            self._watchers.append((weakref.WeakMethod(callback), loop))

    def _tell_watchers(self) -> None:
        with self._lock:
            watchers = [(w(), loop) for w, loop in self._watchers]
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for callback, loop in watchers:
            if callback is None:
                continue
            if loop is not None and loop is not running:
                try:
                    loop.call_soon_threadsafe(_call_watcher, callback)
                except RuntimeError:  # that loop is closed: nothing of it is left to close
                    pass
                continue
            _call_watcher(callback)

    def decide(self, host: Host | str, port: int, addresses: Sequence[IPAddress] = ()) -> Decision:
        return self._policy.decide(host, port, addresses)
