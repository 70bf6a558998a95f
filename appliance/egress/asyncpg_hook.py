"""asyncpg's hook into the egress dialer: a running-loop proxy whose `create_connection` dials,
and the seam where a `ProtocolGuard` can read what the server says before asyncpg does.

asyncpg has no socket or connector parameter, but `asyncpg.connect(loop=...)` opens every TCP
connection (including cancel requests and the STARTTLS upgrade) through `loop.create_connection`
and upgrades it with `loop.start_tls`. Never lets asyncpg open a Unix socket or pick an address
itself; never decides what a guard refuses (the engine's guard does).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Callable
from typing import Any

from appliance.egress.dialer import DEFAULT_CONNECT_TIMEOUT, Dialer, EgressDenied
from appliance.egress.policy import Decision


class ProtocolGuard(asyncio.Protocol):
    """Stands between a transport and asyncpg's protocol (`inner`) until it steps out.

    Receives what the server sends; a subclass reads it in `inspect` and passes on what asyncpg
    may see with `forward`, then `step_out` (the transport talks to `inner` directly from then
    on: nothing more is paid per message), or `refuse` (the transport is aborted and asyncpg is
    told the connection is lost, with `refusal` as the cause). Bytes that arrive before both the
    transport and `inner` are known are kept and inspected once they are.
    """

    def __init__(self) -> None:
        self.inner: asyncio.BaseProtocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.active = True  # False once stepped out or refused
        self.refusal: Exception | None = None
        self._pending = bytearray()
        self._lost: tuple[Exception | None] | None = None

    # --- wiring (the hook's side) ---------------------------------------------------------------

    def attach(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self._resume()

    def bind(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._resume()

    def _resume(self) -> None:
        if self.inner is None or self.transport is None:
            return
        if self._pending and self.active:
            self.inspect(self._pending)
        if self._lost is not None and self.inner is not None:
            self.connection_lost(self._lost[0])

    # --- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # the plain path only
        self.transport = transport
        if self.inner is not None:
            self.inner.connection_made(transport)
        self._resume()

    def data_received(self, data: bytes) -> None:
        if not self.active:  # refused: nothing more reaches asyncpg
            return
        self._pending += data
        if self.inner is not None and self.transport is not None:
            self.inspect(self._pending)

    def eof_received(self) -> bool | None:
        inner = self.inner
        if self.active and isinstance(inner, asyncio.Protocol):
            return inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None or self.transport is None:
            self._lost = (exc,)  # told to asyncpg's protocol once it is attached
            return
        self._lost = None
        self.active = False
        self.inner.connection_lost(self.refusal or exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # --- for subclasses -------------------------------------------------------------------------

    def inspect(self, pending: bytearray) -> None:
        """Read `pending` (what the server sent that asyncpg has not seen yet): `forward` a
        prefix, `step_out` or `refuse`. Bytes left in `pending` wait for more data."""
        raise NotImplementedError

    def forward(self, size: int) -> None:
        """Hand the first `size` pending bytes to asyncpg's protocol."""
        data = bytes(self._pending[:size])
        del self._pending[:size]
        if data:
            _deliver(self.inner, data)

    def step_out(self) -> None:
        """Hand everything pending to asyncpg's protocol and leave the path for good."""
        inner, transport = self.inner, self.transport
        assert inner is not None and transport is not None
        self.active = False
        transport.set_protocol(inner)
        data = bytes(self._pending)
        self._pending.clear()
        if data:
            _deliver(inner, data)

    def refuse(self, reason: Exception) -> None:
        """Abort the connection: nothing pending reaches asyncpg, nothing more is written."""
        self.active = False
        self.refusal = reason
        self._pending.clear()
        assert self.transport is not None
        # asyncpg hears of it in connection_lost, with `reason`. Every stream transport has
        # abort(), but uvloop's do not subclass asyncio.Transport: no isinstance to narrow with.
        self.transport.abort()  # type: ignore[attr-defined]  # a stream transport (see above)


def _deliver(protocol: asyncio.BaseProtocol | None, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


class GuardedTransport:
    """What asyncpg gets from `start_tls` when a guard stands in front of its protocol: the TLS
    transport itself, except that `set_protocol` gives the guard its `inner` until it steps out.

    Other methods are the transport's own, kept on first use (asyncpg holds this object for the
    life of the connection, so a write costs one dictionary lookup more than on the transport).
    """

    def __init__(self, transport: asyncio.BaseTransport, guard: ProtocolGuard) -> None:
        self._transport = transport
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        if callable(value):
            setattr(self, name, value)
        return value

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if self._guard.active:
            self._guard.attach(protocol)
        else:
            self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        if self._guard.active:
            return self._guard.inner
        return self._transport.get_protocol()


class EgressLoop:
    """The running event loop, except that TCP connections go through the dialer, and that with a
    `guard` factory every connection but the SSLRequest's first byte is read by a fresh guard
    before asyncpg's protocol (also after `start_tls`).

    Everything but `create_connection`, `create_unix_connection` and `start_tls` is the real
    loop's.
    """

    def __init__(self, dialer: Dialer, *, purpose: str, datasource: str | None = None,
                 timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 loop: asyncio.AbstractEventLoop | None = None,
                 guard: Callable[[], ProtocolGuard] | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._dialer = dialer
        self._purpose = purpose
        self._datasource = datasource
        self._timeout = timeout
        self._guard = guard

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
        factory = protocol_factory
        make_guard = self._guard
        if make_guard is not None:
            from asyncpg.connect_utils import TLSUpgradeProto  # only reads 'S' or 'N'

            def factory() -> asyncio.BaseProtocol:
                inner = protocol_factory()
                if isinstance(inner, TLSUpgradeProto):
                    return inner  # the TLS that follows is guarded in start_tls
                guard = make_guard()
                guard.attach(inner)
                return guard

        transport, protocol = await self._dialer.create_connection(
            factory, host, int(port), purpose=self._purpose,
            datasource=self._datasource, timeout=self._timeout, ssl=ssl or None,
            server_hostname=server_hostname, **kwargs,
        )
        if isinstance(protocol, ProtocolGuard) and protocol.inner is not None:
            return transport, protocol.inner  # asyncpg holds its own protocol, never the guard
        return transport, protocol

    async def start_tls(self, transport: asyncio.WriteTransport, protocol: asyncio.BaseProtocol,
                        sslcontext: ssl_module.SSLContext, **kwargs: Any
                        ) -> asyncio.Transport | GuardedTransport | None:
        """The loop's `start_tls`; with a guard, the TLS transport's protocol is a fresh guard and
        asyncpg gets a `GuardedTransport`, so its `set_protocol` puts its protocol behind it."""
        make_guard = self._guard
        if make_guard is None:
            return await self._loop.start_tls(transport, protocol, sslcontext, **kwargs)
        guard = make_guard()
        tls = await self._loop.start_tls(transport, guard, sslcontext, **kwargs)
        if tls is None:  # pragma: no cover - asyncio returns None only for a closed transport
            return None
        guard.bind(tls)
        return GuardedTransport(tls, guard)

    async def create_unix_connection(self, protocol_factory: Any, path: str | None = None,
                                     **kwargs: Any) -> Any:
        raise EgressDenied(str(path), 0, Decision(False, "unix socket not allowed"))


async def connect(dialer: Dialer, *, host: str, port: int, purpose: str = "postgres",
                  datasource: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                  guard: Callable[[], ProtocolGuard] | None = None,
                  **asyncpg_kwargs: Any) -> Any:
    """`asyncpg.connect` with every connection through the dialer (and read by a fresh `guard()`
    until it steps out, when given). Pass everything explicitly: asyncpg fills missing values
    from PG* environment variables."""
    import asyncpg  # an engine dependency, imported only by the engine that uses it

    loop = EgressLoop(dialer, purpose=purpose, datasource=datasource, timeout=timeout,
                      guard=guard)
    # EgressLoop is the running loop by delegation (`__getattr__`), not by subclassing: a subclass
    # of AbstractEventLoop would inherit its stubs and never reach `__getattr__`.
    return await asyncpg.connect(  # type: ignore[call-overload]  # a loop by delegation (above)
        host=host, port=port, loop=loop, timeout=timeout, **asyncpg_kwargs)
