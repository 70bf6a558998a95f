"""The client address of a request: the TCP peer, or behind a trusted reverse proxy the address
that proxy saw (the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy).

Owns that choice (what throttling, the access log and the audit see as "client"). Never believes a
forwarded header from a peer outside `[server] trusted_proxies`, and never raises on one: a
malformed header is ignored and the peer is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from appliance.settings import Network

# Request key: typed where aiohttp has RequestKey, a plain string (the same at run time) before.
if TYPE_CHECKING or hasattr(web, "RequestKey"):
    CLIENT = web.RequestKey("client_address", str)
else:
    CLIENT = "client_address"

MAX_HOPS = 16  # proxies walked from the right at most; a longer trusted chain is not believed
_MAX_ENTRY = 64  # longer than any written address (with brackets and a port)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An address as a proxy writes it: `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711` or
    `[2001:db8::1]:4711`; IPv4-mapped IPv6 as IPv4. None for anything else."""
    text = text.strip()
    if not text or len(text) > _MAX_ENTRY or "%" in text:  # no zone index: free text
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:  # IPv4 with a port
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def in_networks(text: str, networks: Sequence[Network]) -> bool:
    """Whether an address (as a socket or a proxy writes it; IPv4-mapped IPv6 as IPv4) is in
    one of `networks`. Anything that is not an address is in none."""
    found = _address(text) if networks else None
    return found is not None and _trusted(found, networks)


def choose(peer: str | None, forwarded_for: Sequence[str],
           proxies: Sequence[Network]) -> str:
    """The client address for a request from `peer` carrying these `X-Forwarded-For` header
    values (in order). Without trusted proxies, or from an untrusted peer, the peer itself."""
    if not proxies or not forwarded_for:
        return peer or ""
    peer_address = _address(peer or "")
    if peer_address is None or not _trusted(peer_address, proxies):
        return peer or ""
    entries = ",".join(forwarded_for).rsplit(",", MAX_HOPS)
    truncated = len(entries) > MAX_HOPS
    if truncated:
        entries = entries[1:]  # the leftmost piece holds the rest, unread
    found = peer_address
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return str(peer_address)  # malformed where it mattered: believe nothing
        found = address
        if not _trusted(address, proxies):
            return str(address)
    # Every entry is a trusted proxy: the leftmost one, unless the chain was too long to read.
    return str(peer_address) if truncated else str(found)


def of(request: web.Request) -> str:
    """The request's client address, as `middleware.front` chose it (the peer before that)."""
    return request.get(CLIENT) or request.remote or ""
