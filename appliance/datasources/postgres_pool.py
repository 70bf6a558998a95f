"""The PostgreSQL engine's connection pool: at most `max_size` connections, each opened by the
engine's one connect function (through the egress dialer), each reset before anyone else gets it.

Not asyncpg's own pool: that one spends two tasks, a queue and a timeout scope on every release,
about 700 bytecodes and 8 % of a run's CPU time at 32 runs in flight (docs/performance.md). Here
a release costs one task, which sends the reset and hands the connection on.

Owns the idle connections, the count of open ones (slots), the runs waiting for one, and the
resets under way. Runs no statement of its own but asyncpg's reset.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import deadlines

Connection = Any  # an asyncpg.Connection (or a subclass the engine chose)

# Around asyncpg's reset query (advisory locks, cursors, `LISTEN`, `RESET ALL`). `RESET ALL` leaves
# `SET ROLE` and `SET SESSION AUTHORIZATION` in place (PostgreSQL exempts both from it), so the
# user the connection logged in as is restored first; and the temporary tables a run made are
# dropped last. Not `DISCARD ALL`, which would also drop the prepared statements asyncpg keeps
# for each connection.
RESET_FIRST = "SET SESSION AUTHORIZATION DEFAULT;"
RESET_LAST = "DISCARD TEMP;"


class PoolClosed(Exception):
    """The pool was closed (its datasource changed or was deleted, or the appliance is stopping)
    while the caller wanted a connection from it."""


class ConnectionPool:
    """`take()` an idle connection at once, or `await acquire(timeout)` one (new, or the next one
    given back); `release(conn, clean=...)` when done with it, always.

    A released connection is reset (the role and session user, advisory locks, cursors,
    `LISTEN`, every session setting and temporary tables) in a task of its own, and only then
    handed to a waiting run or kept idle: one run's session state never reaches the next. A
    connection whose reset fails is terminated and its slot passed on. Idle connections are
    closed after `idle_lifetime` seconds."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]], *, max_size: int,
                 reset_timeout: float, idle_lifetime: float = 300.0) -> None:
        self._connect = connect
        self.max_size = max_size
        self.reset_timeout = reset_timeout
        self.idle_lifetime = idle_lifetime
        self._loop = asyncio.get_running_loop()
        self._size = 0  # slots taken: connections open or being opened
        self._idle: list[tuple[Connection, float]] = []  # (connection, idle since), newest last
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._resets: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    # -- taking ------------------------------------------------------------------------------

    def take(self) -> Connection | None:
        """An idle connection, at once; None when there is none (then `acquire`) or the pool is
        closing."""
        if self._closed:
            return None
        idle = self._idle
        while idle:
            conn = idle.pop()[0]
            if not conn.is_closed():
                return conn
            self._size -= 1  # lost while idle (the server restarted, say): its slot is free
        return None

    async def acquire(self, timeout: float) -> Connection:
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
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            with deadlines.limit(timeout):
                conn = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as the wait ended: pass it on
            else:
                waiter.cancel()  # `_give` skips it
            raise
        return conn if conn is not None else await self._open()  # None: a free slot

    async def _open(self) -> Connection:
        """A new connection, in a slot already counted; the slot is passed on if it fails."""
        try:
            conn = await self._connect()
        except BaseException:
            self._give(None)
            raise
        if self._closed:
            conn.terminate()
            self._size -= 1
            raise PoolClosed()
        return conn

    # -- giving back -------------------------------------------------------------------------

    def release(self, conn: Connection, *, clean: bool) -> None:
        """Give `conn` back; it is reset before anyone else gets it (in a task: the caller does
        not wait for the round trip). `clean`: every statement on it finished, outside a
        transaction (then the reset query alone suffices; otherwise asyncpg's whole reset runs,
        which also ends a transaction and forgets asyncpg's record of it). Either waits first
        for a cancellation asyncpg sent (a statement cut short) to finish."""
        reset = self._loop.create_task(self._reset(conn, clean))
        self._resets.add(reset)
        reset.add_done_callback(self._resets.discard)

    async def _reset(self, conn: Connection, clean: bool) -> None:
        try:
            if self._closed:
                raise PoolClosed()
            if clean and not conn.is_in_transaction():
                await conn.execute(RESET_FIRST + conn.get_reset_query() + RESET_LAST,
                                   timeout=self.reset_timeout)
            else:
                await conn.reset(timeout=self.reset_timeout)
                await conn.execute(RESET_FIRST + RESET_LAST, timeout=self.reset_timeout)
        except BaseException as exc:
            conn.terminate()
            if self._closed:
                self._size -= 1
            else:
                self._give(None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._give(conn)

    def _give(self, conn: Connection | None) -> None:
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
            idle.pop(0)[0].terminate()  # idle: nothing under way to close politely
            self._size -= 1
        if idle:
            self._expiry = self._loop.call_at(idle[0][1] + self.idle_lifetime, self._expire)

    # -- closing -----------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new callers, fail the waiting ones, let the resets under way end, then close
        the idle connections (terminated if they do not close within `timeout`). A connection
        still in use is terminated when it is given back."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed())
        if self._resets:
            await asyncio.gather(*self._resets, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for conn, _since in idle:
            try:
                await conn.close(timeout=timeout)
            except Exception:
                conn.terminate()

