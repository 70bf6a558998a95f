"""PyMongo async's hook into the egress dialer: its one TCP connect function, replaced at install.

PyMongo has no socket factory; every async pool and monitor connection (and client-side
encryption's KMS connections) is opened by `pymongo.pool_shared._async_create_connection`,
which `install` replaces with the dialer. Never used by the synchronous `MongoClient`.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from appliance.egress.dialer import DEFAULT_CONNECT_TIMEOUT, Dialer

if TYPE_CHECKING:
    from pymongo.pool_options import PoolOptions

_dialer: Dialer | None = None
_original: Any = None
# Who is connecting: set around client creation, inherited by the client's monitor tasks.
_attribution: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "egress_pymongo_attribution", default=("mongodb", None)
)


async def _create_connection(address: tuple[str, int | None],
                             options: PoolOptions) -> socket.socket:
    if _dialer is None:  # pragma: no cover - installed before the function is reachable
        raise RuntimeError("egress hook for pymongo used before install()")
    host, port = address
    purpose, datasource = _attribution.get()
    timeout = options.connect_timeout or DEFAULT_CONNECT_TIMEOUT
    # PyMongo gives no port only for a Unix socket path, which the policy refuses as malformed.
    sock, _ = await _dialer.open_socket(host, 0 if port is None else port, purpose=purpose,
                                        datasource=datasource, timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    return sock


def install(dialer: Dialer) -> None:
    """Route every PyMongo async connection through `dialer` (idempotent; the last dialer wins)."""
    global _dialer, _original
    from pymongo import pool_shared  # an engine dependency, imported only when installed

    if not hasattr(pool_shared, "_async_create_connection"):
        raise RuntimeError("this PyMongo has no _async_create_connection: the egress hook "
                           "cannot be installed (check the pinned version)")
    _dialer = dialer
    if pool_shared._async_create_connection is not _create_connection:
        _original = pool_shared._async_create_connection
        pool_shared._async_create_connection = _create_connection


def uninstall() -> None:
    """Restore PyMongo's own connect function (tests only)."""
    global _dialer, _original
    from pymongo import pool_shared

    if _original is not None:
        pool_shared._async_create_connection = _original
    _dialer, _original = None, None


@contextlib.contextmanager
def attribution(purpose: str, datasource: str | None) -> Iterator[None]:
    """Name the purpose and datasource of connections opened by clients created inside."""
    token = _attribution.set((purpose, datasource))
    try:
        yield
    finally:
        _attribution.reset(token)


async def reach(dialer: Dialer, *, host: str, port: int, purpose: str = "mongodb",
                datasource: str | None = None, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
    """Connect once to `host:port` through the dialer and hang up: `EgressDenied`,
    `EgressUnreachable` (refused, no route, no such name) or `EgressTimeout` at once, in the
    dialer's words. Inside PyMongo each of these only surfaces when its server selection gives
    up, seconds later, as a timeout."""
    sock, _ = await dialer.open_socket(host, port, purpose=purpose, datasource=datasource,
                                       timeout=timeout)
    sock.close()


async def connect_client(dialer: Dialer, *, host: str, port: int, purpose: str = "mongodb",
                         datasource: str | None = None,
                         timeout: float = DEFAULT_CONNECT_TIMEOUT, **client_kwargs: Any) -> Any:
    """An `AsyncMongoClient` whose connections all go through `dialer`.

    The destination is reached first (`reach`), so a denied, refused or silent one fails at
    once, as for every other kind, instead of after PyMongo's server selection. `timeout` is
    the connect and (unless given) the server-selection timeout.
    """
    from pymongo import AsyncMongoClient

    await reach(dialer, host=host, port=port, purpose=purpose, datasource=datasource,
                timeout=timeout)
    install(dialer)
    millis = max(1, int(timeout * 1000))
    client_kwargs.setdefault("connectTimeoutMS", millis)
    client_kwargs.setdefault("serverSelectionTimeoutMS", millis)
    with attribution(purpose, datasource):
        client: Any = AsyncMongoClient(host=host, port=port, **client_kwargs)
        await client.aconnect()
    return client
