"""A datasource's pool of connections, for any kind whose driver has none worth using, and the
engine base that holds one (`PooledEngine`): at most `max_size` connections, each opened by the
engine's one connect function (through the egress dialer), each reset before anyone else gets it.

Each kind supplies only what is its own: the connect function, and a subclass's `reset` (what a
connection is put through between runs) and `close` (closing one politely). A connection is
anything with `is_closed()` and `terminate()` (asyncpg's; the MySQL kind's `DialedConnection`).

Not asyncpg's own pool: that one spends two tasks, a queue and a timeout scope on every release,
about 700 bytecodes and 8 % of a run's CPU time at 32 runs in flight (docs/performance.md). Here
a release costs one task, which runs the reset and hands the connection on: the reset is off the
run's latency path (the answer is on its way while the reset's round trip is under way), yet no
one else takes the connection before it has ended.

A connection was checked by the egress policy once, when it was dialed. When the policy changes
(an API change, another instance's, a reloaded settings file), the idle connections are closed at
once and those in use are closed when they come back (their run ends normally): the next run
dials afresh, through the new policy.

Owns the idle connections, the count of open ones (slots), the runs waiting for one, the resets
under way, idle expiry, retirement and staleness under the egress policy. Runs no statement of
its own (the kind's reset does).
Logs no statement and no value: only that a reset failed, and the exception's type.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from appliance import deadlines
from appliance.datasources.config import CONNECT_TIMEOUT
from appliance.datasources.engine import Engine, PoolStats, Target
from appliance.datasources.errors import EngineRetired, connection_failure
from appliance.egress import EgressPolicy, PolicyHolder
from appliance.errors import ApplianceError

log = logging.getLogger("appliance.datasources")


class PooledConnection(Protocol):
    """What the pool asks of a connection itself."""

    def is_closed(self) -> bool: ...

    def terminate(self) -> None:
        """Close at once (no goodbye to the server); never raises, never blocks."""


C = TypeVar("C", bound=PooledConnection)


class PoolClosed(Exception):
    """The pool was closed (its datasource changed or was deleted, or the appliance is stopping)
    while the caller wanted a connection from it."""


class ConnectionPool(abc.ABC, Generic[C]):
    """`take()` an idle connection at once, or `await acquire(timeout)` one (new, or the next one
    given back); `release(conn)` when done with it, always.

    A released connection is reset (`reset`) in a task of its own, and only then handed to a
    waiting run or kept idle: one run's session state never reaches the next. A connection whose
    reset fails is terminated and its slot passed on; one open for `max_lifetime` seconds is
    closed when it comes back, and one idle for `idle_lifetime` seconds is closed. A connection
    dialed under an older egress policy than `policy`'s current one is never handed out again:
    terminated at the change when idle, else when it comes back (no goodbye to a destination the
    new policy may deny), its slot passed on. `name` only labels log lines."""

    def __init__(self, connect: Callable[[], Awaitable[C]], *, policy: PolicyHolder,
                 max_size: int, reset_timeout: float, idle_lifetime: float = 300.0,
                 max_lifetime: float = 3600.0, name: str = "") -> None:
        self._connect = connect
        self._policy = policy
        self.max_size = max_size
        self.reset_timeout = reset_timeout
        self.idle_lifetime = idle_lifetime
        self.max_lifetime = max_lifetime
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._size = 0  # slots taken: connections open or being opened
        # Every open connection: when it opened, and the egress policy in force when it was
        # dialed (noted before the dial: a change while connecting makes it stale at once).
        self._born: dict[C, tuple[float, EgressPolicy]] = {}
        self._idle: list[tuple[C, float]] = []  # (connection, idle since), newest last
        self._waiters: collections.deque[asyncio.Future[C | None]] = collections.deque()
        self.waits = 0  # acquires that had to wait for a connection (metrics)
        self._resets: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = False
        policy.on_change(self._policy_changed, self._loop)

    # -- what a kind supplies ------------------------------------------------------------------

    @abc.abstractmethod
    async def reset(self, conn: C, timeout: float) -> None:
        """Put `conn` back to the state of a new connection, within `timeout` seconds; raise if
        that cannot be made sure of (the connection is then terminated)."""

    @abc.abstractmethod
    async def close_politely(self, conn: C, timeout: float) -> None:
        """Say goodbye to the server and close `conn`, within `timeout` seconds."""

    # -- state ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Acquires waiting for a connection now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    # -- taking ------------------------------------------------------------------------------

    def take(self) -> C | None:
        """An idle connection, at once; None when there is none (then `acquire`) or the pool is
        closing."""
        if self._closed:
            return None
        idle = self._idle
        current = self._policy.policy
        while idle:
            conn = idle.pop()[0]
            if not conn.is_closed():
                if self._born[conn][1] is current:
                    return conn
                conn.terminate()  # dialed under an older policy (the change's closing is due)
            self._born.pop(conn, None)
            self._size -= 1  # lost while idle (the server restarted, say): its slot is free
        return None

    async def acquire(self, timeout: float) -> C:
        """An idle connection, a new one while fewer than `max_size` are open, or else the next
        one given back, waiting at most `timeout` seconds for it (then `TimeoutError`). Raises
        `PoolClosed` once the pool is closed, and whatever the connect function raises."""
        if self._closed:
            raise PoolClosed()
        conn = self.take()
        if conn is not None:
            return conn
        if self._size < self.max_size:
            self._size += 1
            return await self._open()
        waiter: asyncio.Future[C | None] = self._loop.create_future()
        self._waiters.append(waiter)
        self.waits += 1
        try:
            with deadlines.limit(timeout):
                given = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as the wait ended: pass it on
            else:
                waiter.cancel()  # `_give` skips it
            raise
        return given if given is not None else await self._open()  # None: a free slot

    async def _open(self) -> C:
        """A new connection, in a slot already counted; the slot is passed on if it fails."""
        policy = self._policy.policy
        try:
            conn = await self._connect()
        except BaseException:
            self._give(None)
            raise
        if self._closed:
            conn.terminate()
            self._size -= 1
            raise PoolClosed()
        self._born[conn] = (self._loop.time(), policy)
        return conn

    # -- giving back -------------------------------------------------------------------------

    def release(self, conn: C) -> None:
        """Give `conn` back; it is reset before anyone else gets it (in a task: the caller does
        not wait for the round trip)."""
        reset = self._loop.create_task(self._reset(conn))
        self._resets.add(reset)
        reset.add_done_callback(self._resets.discard)

    async def _reset(self, conn: C) -> None:
        try:
            if self._closed:
                raise PoolClosed()
            born, policy = self._born.get(conn, (0.0, None))
            if policy is not self._policy.policy:
                raise _Stale()
            if self._loop.time() - born >= self.max_lifetime:
                raise _Retired()  # its slot goes to a new connection
            await self.reset(conn, self.reset_timeout)
            if policy is not self._policy.policy:
                raise _Stale()  # the policy changed during the reset
        except BaseException as exc:
            try:
                if isinstance(exc, _Retired):
                    await self._close(conn, self.reset_timeout)
                else:
                    conn.terminate()
                    if not isinstance(exc, PoolClosed | _Stale | asyncio.CancelledError):
                        log.warning("connection reset failed; the connection is closed",
                                    extra={"datasource": self.name,
                                           "exception": type(exc).__qualname__})
            finally:  # the slot is passed on even if closing politely is cut short
                self._born.pop(conn, None)
                if self._closed:
                    self._size -= 1
                else:
                    self._give(None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._give(conn)

    def _give(self, conn: C | None) -> None:
        """Hand a reset connection, or (None) a free slot, to the first run still waiting;
        with none waiting, keep the connection idle or count the slot free."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._size -= 1
            return
        self._idle.append((conn, self._loop.time()))
        if self._expiry is None:
            self._expiry = self._loop.call_at(self._loop.time() + self.idle_lifetime,
                                              self._expire)

    def _expire(self) -> None:
        """Close the connections idle for `idle_lifetime` (the oldest are first in `_idle`)."""
        self._expiry = None
        idle = self._idle
        oldest = self._loop.time() - self.idle_lifetime
        while idle and idle[0][1] <= oldest:
            conn = idle.pop(0)[0]
            conn.terminate()  # idle: nothing under way to close politely
            self._born.pop(conn, None)
            self._size -= 1
        if idle:
            self._expiry = self._loop.call_at(idle[0][1] + self.idle_lifetime, self._expire)

    def _policy_changed(self) -> None:
        """The egress policy changed (called in the pool's loop): close every idle connection.
        Those in use and those being reset are closed when they come back (`_reset`)."""
        idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.terminate()  # idle: nothing under way; no goodbye to a maybe denied destination
            self._born.pop(conn, None)
        self._size -= len(idle)

    # -- closing -----------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new callers and fail the waiting ones; give the connections in use and the
        resets under way up to `timeout` seconds to come back, close the idle connections in
        what is left of it, and terminate every connection still open then (also when the
        close itself is cancelled)."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed())
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self._loop.time() + timeout
        try:
            # Runs still under way give their connection back (then terminated by its reset);
            # resets under way end (their connections then idle).
            while ((self._resets or len(self._born) > len(self._idle))
                   and self._loop.time() < deadline):
                await asyncio.sleep(0.05)
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            if idle:
                await asyncio.gather(*(self._close(conn, max(0.0, deadline - self._loop.time()))
                                       for conn, _since in idle))
        finally:
            for conn in list(self._born):
                conn.terminate()  # in use past the deadline, or not closed in time
            self._born.clear()

    async def _close(self, conn: C, timeout: float) -> None:
        """Close `conn` politely, or terminate it when that fails or is cut short."""
        try:
            await self.close_politely(conn, timeout)
        except Exception:
            conn.terminate()
        except BaseException:  # cancelled: not left half closed
            conn.terminate()
            raise


class _Retired(Exception):
    """The connection has been open for `max_lifetime`: closed when it comes back."""


class _Stale(Exception):
    """The connection was dialed under an older egress policy: terminated when it comes back."""


class PooledEngine(Engine, Generic[C]):
    """An engine whose connections are a `ConnectionPool`, made on the first run (`new_pool`) and
    closed once; a run takes a connection with `acquire` and gives it back to `pool.release`."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._pool: ConnectionPool[C] | None = None
        self._closed = False

    @abc.abstractmethod
    def new_pool(self) -> ConnectionPool[C]:
        """The kind's pool for this engine's datasource."""

    def translate(self, exc: BaseException, timeout: float, what: str,
                  identifiers: tuple[str, ...] = ()) -> BaseException:
        """An appliance error for a driver or network failure (`what`: the step that failed;
        names holding one of the run's `identifiers` are left out of messages): a cancellation
        and the egress dialer's outcomes as every engine answers them, an appliance error as it
        is, a closed pool as a retired engine, anything else as the kind says."""
        common = connection_failure(self.name, exc, CONNECT_TIMEOUT)
        if common is not None:
            return common
        if isinstance(exc, ApplianceError):
            return exc
        if isinstance(exc, PoolClosed):
            return EngineRetired(self.name)
        return self.driver_failure(exc, timeout, what, identifiers)

    @abc.abstractmethod
    def driver_failure(self, exc: BaseException, timeout: float, what: str,
                       identifiers: tuple[str, ...]) -> BaseException:
        """`translate` for what only the kind's driver raises (messages never hold values)."""

    @abc.abstractmethod
    async def probe(self) -> None:
        """Open a connection of its own (not the pool's), run a trivial command on it, close it."""

    async def test(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.probe()
        except BaseException as exc:
            raise self.translate(exc, timeout, "connect") from None

    async def acquire(self, timeout: float) -> tuple[ConnectionPool[C], C]:
        """The pool and a connection from it (an idle one without any wait or time limit)."""
        pool = self._pool
        if pool is None:
            if self._closed:
                raise EngineRetired(self.name)
            pool = self._pool = self.new_pool()
        conn = pool.take()
        if conn is None:
            try:
                conn = await pool.acquire(timeout)
            except BaseException as exc:
                raise self.translate(exc, timeout, "connect") from None
        return pool, conn

    def pool_stats(self) -> PoolStats | None:
        pool = self._pool
        if pool is None:
            return PoolStats(size=0, idle=0)
        return PoolStats(size=pool.size, idle=pool.idle, waiting=pool.waiting,
                         waits=pool.waits)

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
