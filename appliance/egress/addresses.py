"""Address normalisation for the egress policy: host text to a name or an IP, and the IPv4 inside.

Owns the parsing of every host spelling (brackets, zone ids, trailing dots, case, legacy IPv4
literals) and the IPv6 transition formats that carry an IPv4 address. Never resolves names.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
# A label a resolver (glibc inet_aton) could read as a number: decimal, octal, or 0x hex.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_IPV4_PART = re.compile(r"0[xX]([0-9a-fA-F]*)|0([0-7]+)|([1-9][0-9]*|0)", re.ASCII)

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated, RFC 4291 2.5.5.1
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, any RFC 6052 prefix length
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380


class AddressError(ValueError):
    """The host text is neither a usable name nor an address (the message says why)."""


@dataclass(frozen=True)
class Host:
    """A normalised destination host: exactly one of `ip` and `name` is set."""

    text: str  # what the caller gave, for messages and TLS SNI / Host
    ip: IPAddress | None = None
    name: str | None = None  # lower case, no trailing dot, IDNA (punycode)

    @property
    def display(self) -> str:
        return str(self.ip) if self.ip is not None else str(self.name)


def parse_ipv4_legacy(text: str) -> ipaddress.IPv4Address | None:
    """Read an IPv4 literal as inet_aton(3) does: 1 to 4 parts, decimal, 0-octal or 0x-hex.

    `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.1` are all 127.0.0.1. None if it is not one.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        match = _IPV4_PART.fullmatch(part)
        if match is None:
            return None
        hexa, octal, decimal = match.groups()
        if hexa is not None:
            values.append(int(hexa, 16) if hexa else 0)
        elif octal is not None:
            values.append(int(octal, 8))
        else:
            values.append(int(decimal, 10))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal in any spelling (brackets, zone id, legacy IPv4), or None for a name."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if "%" in value:  # an IPv6 zone id names an interface, not an address
        value = value.split("%", 1)[0]
    if ":" in value:
        try:
            return ipaddress.IPv6Address(value)
        except ValueError:
            return None
    value = value.rstrip(".") if value.endswith(".") and not value.endswith("..") else value
    return parse_ipv4_legacy(value)


def parse_host(text: str) -> Host:
    """Normalise a destination host: an IP literal in any spelling, or a DNS name.

    Raises `AddressError` for empty, malformed or numeric-looking-but-invalid hosts (a resolver
    might read those as addresses in ways we cannot predict, so they are refused, not resolved).
    """
    if not isinstance(text, str) or not text.strip():
        raise AddressError("empty host")
    raw = text.strip()
    if any(ch in raw for ch in "\x00/\\@ \t\r\n?#"):
        raise AddressError(f"malformed host {raw!r}")
    ip = parse_ip(raw)
    if ip is not None:
        return Host(text=raw, ip=ip)
    if ":" in raw or raw.startswith("["):
        raise AddressError(f"malformed address {raw!r}")
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError(f"malformed host name {raw!r}") from None
    if not _NAME_RE.match(name):
        raise AddressError(f"malformed host name {raw!r}")
    if _NUMERIC_LABEL.match(name.rsplit(".", 1)[-1]):
        # `1.2.3.4.5`, `0x1g`, `999.1`: not an address we accept, and not a real DNS name.
        raise AddressError(f"malformed address {raw!r}")
    return Host(text=raw, name=name)


def _nat64_candidates(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 that RFC 6052 could embed in a local-use NAT64 address (/48 to /96 prefixes)."""
    bits = int(ip)
    out = []
    # (prefix length, [(bit offset from the left of the first IPv4 bits, how many bits)...])
    layouts = {
        48: [(48, 16), (72, 16)],
        56: [(56, 8), (72, 24)],
        64: [(72, 32)],
        96: [(96, 32)],
    }
    for pieces in layouts.values():
        value = 0
        for offset, width in pieces:
            value = (value << width) | ((bits >> (128 - offset - width)) & ((1 << width) - 1))
        if value >> 24:  # 0.0.0.0/8 is never translated: an empty slot, not an address
            out.append(ipaddress.IPv4Address(value))
    return out


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo,
    ISATAP)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    out: list[ipaddress.IPv4Address] = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_MAPPED or ip in _IPV4_TRANSLATED or ip in _NAT64_WELL_KNOWN:
        out.append(low32)
    elif ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        out.append(low32)
    if ip in _NAT64_LOCAL:
        out.extend(_nat64_candidates(ip))
    if ip in _SIX_TO_FOUR:
        out.append(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
    if ip in _TEREDO:
        server, client = ip.teredo or (None, None)
        out.extend(a for a in (server, client) if a is not None)
    # ISATAP interface identifier: ::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d (any prefix).
    if (int(ip) >> 32) & 0xFDFFFFFF == 0x00005EFE:
        out.append(low32)
    seen: list[ipaddress.IPv4Address] = []
    for address in out:
        if address not in seen:
            seen.append(address)
    return seen


def addresses_to_check(ip: IPAddress) -> list[IPAddress]:
    """The address itself and every IPv4 address embedded in it: all must pass the policy."""
    return [ip, *embedded_ipv4(ip)]


def canonical(ip: IPAddress) -> IPAddress:
    """The address to connect to: an IPv4-mapped IPv6 address becomes its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
