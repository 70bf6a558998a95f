"""asyncpg's hook into the egress dialer: a running-loop proxy whose `create_connection` dials.

asyncpg has no socket or connector parameter, but `asyncpg.connect(loop=...)` opens every TCP
connection (including cancel requests and the STARTTLS upgrade) through `loop.create_connection`.
Never lets asyncpg open a Unix socket or pick an address itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from appliance.egress.dialer import DEFAULT_CONNECT_TIMEOUT, Dialer, EgressDenied
from appliance.egress.policy import Decision


class EgressLoop:
    """The running event loop, except that TCP connections go through the dialer.

    Everything but `create_connection` and `create_unix_connection` is the real loop's.
    """

    def __init__(self, dialer: Dialer, *, purpose: str, datasource: str | None = None,
                 timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._dialer = dialer
        self._purpose = purpose
        self._datasource = datasource
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name this object does not have (asyncpg calls `call_later` twice
        # per query): a method of the loop is kept, so the next lookup finds it at once.
        value = getattr(self._loop, name)
        if callable(value):
            setattr(self, name, value)
        return value

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: Any = None,
        ssl: Any = None,
        server_hostname: str | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        if sock is not None or host is None or port is None:
            raise EgressDenied(str(host), int(port or 0),
                               Decision(False, "malformed destination"))
        for name in ("local_addr", "family", "proto", "flags", "happy_eyeballs_delay",
                     "interleave", "all_errors"):
            kwargs.pop(name, None)  # the dialer decides addresses and binding
        return await self._dialer.create_connection(
            protocol_factory, host, int(port), purpose=self._purpose,
            datasource=self._datasource, timeout=self._timeout, ssl=ssl or None,
            server_hostname=server_hostname, **kwargs,
        )

    async def create_unix_connection(self, protocol_factory: Any, path: str | None = None,
                                     **kwargs: Any) -> Any:
        raise EgressDenied(str(path), 0, Decision(False, "unix socket not allowed"))


async def connect(dialer: Dialer, *, host: str, port: int, purpose: str = "postgres",
                  datasource: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                  **asyncpg_kwargs: Any) -> Any:
    """`asyncpg.connect` with every connection through the dialer. Pass everything explicitly:
    asyncpg fills missing values from PG* environment variables."""
    import asyncpg  # an engine dependency, imported only by the engine that uses it

    loop = EgressLoop(dialer, purpose=purpose, datasource=datasource, timeout=timeout)
    return await asyncpg.connect(host=host, port=port, loop=loop, timeout=timeout,
                                 **asyncpg_kwargs)
