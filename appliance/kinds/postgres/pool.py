"""The PostgreSQL engine's connection pool: at most `max_size` connections, each opened by the
engine's one connect function (through the egress dialer), each reset before anyone else gets it.

Not asyncpg's own pool: that one spends two tasks, a queue and a timeout scope on every release,
about 700 bytecodes and 8 % of a run's CPU time at 32 runs in flight (docs/performance.md). Here
a release costs one task, which sends the reset and hands the connection on. Its reset is also
stricter than asyncpg's (`RESET_STATEMENTS`).

Owns the idle connections, the count of open ones (slots), the runs waiting for one, and the
resets under way. Runs no statement of its own but the reset. Logs no statement and no value:
only that a reset failed, and the exception's type.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import deadlines

log = logging.getLogger("appliance.datasources")

Connection = Any  # an asyncpg.Connection (or a subclass the engine chose)

# What a connection is put through before the next run gets it, in one round trip (a transaction
# left open, or failed, is rolled back first). asyncpg's own reset query misses the first kind of
# state and the last two, and calls `pg_advisory_unlock_all()` by an unqualified name while the
# run's `search_path` is still in force (a function of that name in a schema of the run's
# choosing would run instead). Here:
# - the login user comes back first: `RESET ALL` leaves `SET ROLE` and `SET SESSION
#   AUTHORIZATION` in place;
# - then every setting, `search_path` included, before any function is called, and the function
#   by its qualified name (a user's own default `search_path` may name a schema of its choosing);
# - cursors, `LISTEN`, temporary tables and sequence state (`lastval`) go.
# Not `DISCARD ALL`: it would also drop the statements asyncpg prepared and keeps for each
# connection. Statements a run prepares with SQL `PREPARE` are therefore not dropped, and not
# looked for either: listing them (`pg_prepared_statements`) cost PostgreSQL about 40 us per run
# (docs/datasources.md says what that leaves open).
RESET_STATEMENTS = (
    "SET SESSION AUTHORIZATION DEFAULT;"
    "RESET ALL;"
    "SELECT pg_catalog.pg_advisory_unlock_all();"
    "CLOSE ALL;"
    "UNLISTEN *;"
    "DISCARD TEMP;"
    "DISCARD SEQUENCES;"
)


class PoolClosed(Exception):
    """The pool was closed (its datasource changed or was deleted, or the appliance is stopping)
    while the caller wanted a connection from it."""


class ConnectionPool:
    """`take()` an idle connection at once, or `await acquire(timeout)` one (new, or the next one
    given back); `release(conn)` when done with it, always.

    A released connection is reset (`RESET_STATEMENTS`) in a task of its own, and only then
    handed to a waiting run or kept idle: one run's session state never reaches the next. A
    connection whose reset fails is terminated and its slot passed on; one open for
    `max_lifetime` seconds is closed when it comes back, and one idle for `idle_lifetime`
    seconds is closed. `name` only labels log lines."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]], *, max_size: int,
                 reset_timeout: float, idle_lifetime: float = 300.0,
                 max_lifetime: float = 3600.0, name: str = "") -> None:
        self._connect = connect
        self.max_size = max_size
        self.reset_timeout = reset_timeout
        self.idle_lifetime = idle_lifetime
        self.max_lifetime = max_lifetime
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._size = 0  # slots taken: connections open or being opened
        self._born: dict[Connection, float] = {}  # every open connection, and when it opened
        self._idle: list[tuple[Connection, float]] = []  # (connection, idle since), newest last
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self.waits = 0  # acquires that had to wait for a connection (metrics)
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

    @property
    def waiting(self) -> int:
        """Acquires waiting for a connection now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

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
            self._born.pop(conn, None)
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
        self.waits += 1
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
        self._born[conn] = self._loop.time()
        return conn

    # -- giving back -------------------------------------------------------------------------

    def release(self, conn: Connection) -> None:
        """Give `conn` back; it is reset before anyone else gets it (in a task: the caller does
        not wait for the round trip). A cancellation asyncpg sent for a statement cut short is
        waited for first (asyncpg does that before any statement)."""
        reset = self._loop.create_task(self._reset(conn))
        self._resets.add(reset)
        reset.add_done_callback(self._resets.discard)

    async def _reset(self, conn: Connection) -> None:
        try:
            if self._closed:
                raise PoolClosed()
            if self._loop.time() - self._born.get(conn, 0.0) >= self.max_lifetime:
                raise _Retired()  # its slot goes to a new connection
            statements = RESET_STATEMENTS
            if conn.is_in_transaction():  # left open or failed by the run: rolled back first
                statements = "ROLLBACK;" + statements
            await conn.execute(statements, timeout=self.reset_timeout)
        except BaseException as exc:
            try:
                if isinstance(exc, _Retired):
                    await _close(conn, self.reset_timeout)
                else:
                    conn.terminate()
                    if not isinstance(exc, PoolClosed | asyncio.CancelledError):
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
            conn = idle.pop(0)[0]
            conn.terminate()  # idle: nothing under way to close politely
            self._born.pop(conn, None)
            self._size -= 1
        if idle:
            self._expiry = self._loop.call_at(idle[0][1] + self.idle_lifetime, self._expire)

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
                await asyncio.gather(*(_close(conn, max(0.0, deadline - self._loop.time()))
                                       for conn, _since in idle))
        finally:
            for conn in list(self._born):
                conn.terminate()  # in use past the deadline, or not closed in time
            self._born.clear()


class _Retired(Exception):
    """The connection has been open for `max_lifetime`: closed when it comes back."""


async def _close(conn: Connection, timeout: float) -> None:
    """Close `conn` politely (a Terminate message), or terminate it after `timeout` seconds."""
    try:
        await conn.close(timeout=timeout)
    except Exception:
        conn.terminate()
    except BaseException:  # cancelled: not left half closed
        conn.terminate()
        raise
