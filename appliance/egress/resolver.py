"""Name resolution for the egress dialer: one lookup per connection, through a replaceable resolver.

Owns the resolver seam (`Resolver`) and the system implementation. Never decides policy and
never caches an answer: the dialer resolves once per connection and connects to what it checked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol


class Resolver(Protocol):
    """Turns a host name into IP address strings. Raises OSError when the name does not resolve."""

    async def resolve(self, name: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver (getaddrinfo in a thread, as asyncio does)."""

    async def resolve(self, name: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
        out: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                address = str(sockaddr[0])
                if address not in out:
                    out.append(address)
        return out


class StaticResolver:
    """A fixed table of answers (for tests and `--dev`); unknown names do not resolve.

    A name may map to a sequence of answers: the n-th lookup gets the n-th (the last one repeats),
    which is how tests play a DNS-rebinding attacker.
    """

    def __init__(self, table: Mapping[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self._table: dict[str, list[list[str]]] = {}
        for name, answers in table.items():
            one_round = [a for a in answers if isinstance(a, str)]
            rounds = [one_round] if one_round else [list(r) for r in answers]
            self._table[name.lower().rstrip(".")] = rounds
        self.lookups: dict[str, int] = {}

    async def resolve(self, name: str, port: int) -> list[str]:
        key = name.lower().rstrip(".")
        count = self.lookups.get(key, 0)
        self.lookups[key] = count + 1
        rounds = self._table.get(key)
        if not rounds:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} does not resolve")
        return list(rounds[min(count, len(rounds) - 1)])
