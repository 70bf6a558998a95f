"""The PostgreSQL engine's connection pool against a real cluster (the session fixture in
conftest): reuse and the size limit, waiting and its time limit; the reset before reuse (role,
settings, advisory locks, temporary tables, sequences, open and failed transactions, a cancelled
statement, a function shadowing the reset's); connections lost while idle, failing or timing out
their reset, or past their lifetime; a failed connect; idle expiry; a hand-over racing a
cancellation; closing; and a change of the egress policy (idle connections closed at once, one in
use closed when it comes back, the change heard from another thread too)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.egress import PolicyHolder
from appliance.kinds.postgres.pool import ConnectionPool, PoolClosed
from appliance.settings import EgressSettings
from tests.conftest import PG_PASSWORD, PostgresServer

asyncpg = pytest.importorskip("asyncpg")

OPEN = EgressSettings(source_address=(), mode="default", allow=(), deny=(), allow_private=True)


def connector(pg: PostgresServer, *, failures: int = 0) -> Any:
    """A connect function for the cluster; its first `failures` calls fail as a refused
    connection would."""
    calls = {"n": 0}

    async def connect() -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionRefusedError("refused (test)")
        return await asyncpg.connect(host="127.0.0.1", port=pg.port, user="app",
                                     password=PG_PASSWORD, database="appdb",
                                     server_settings={"application_name": "pool-test"})

    return connect


def new_pool(connect: Any, *, policy: PolicyHolder | None = None, **options: Any
             ) -> ConnectionPool:
    """A pool over `connect` under `policy` (by default one of its own that allows everything)."""
    return ConnectionPool(connect, policy=policy or PolicyHolder(OPEN), **options)


def pid(conn: Any) -> int:
    return conn.get_server_pid()


def open_backends(pg: PostgresServer) -> int:
    return int(pg.sql("SELECT count(*) FROM pg_stat_activity "
                      "WHERE application_name = 'pool-test'").strip())


@contextlib.asynccontextmanager
async def opened(pg: PostgresServer, **options: Any) -> AsyncIterator[ConnectionPool]:
    """A pool of connections to the cluster, closed after the block."""
    pool = new_pool(connector(pg), **options)
    try:
        yield pool
    finally:
        await pool.close()


async def settled(pool: ConnectionPool) -> None:
    """Until every reset under way has ended."""
    for _ in range(200):
        if not pool._resets:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a reset did not end")


async def test_connections_are_reused_and_the_size_is_capped(postgres_server: PostgresServer
                                                               ) -> None:
    async with opened(postgres_server, max_size=2, reset_timeout=5) as pool:
        first, second = await pool.acquire(1), await pool.acquire(1)
        assert pid(first) != pid(second) and pool.size == 2 and pool.take() is None
        third = asyncio.ensure_future(pool.acquire(5))
        await asyncio.sleep(0.1)
        assert not third.done()  # both slots taken: it waits
        pool.release(first)
        reused = await asyncio.wait_for(third, 5)
        assert pid(reused) == pid(first) and pool.size == 2
        pool.release(second)
        pool.release(reused)
        await settled(pool)
        assert (pool.size, pool.idle) == (2, 2)
        taken = pool.take()
        assert pid(taken) in {pid(first), pid(second)}
        pool.release(taken)


async def test_a_wait_ends_at_its_time_limit_and_the_pool_keeps_working(
        postgres_server: PostgresServer) -> None:
    async with opened(postgres_server, max_size=1, reset_timeout=5) as pool:
        held = await pool.acquire(1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.acquire(0.2)
        assert 0.15 < time.monotonic() - started < 1.0
        assert not pool._waiters or all(w.done() for w in pool._waiters)
        pool.release(held)
        again = await pool.acquire(1)
        assert pid(again) == pid(held) and await again.fetchval("SELECT 1") == 1
        pool.release(again)


@pytest.fixture(scope="module")
def other_role(postgres_server: PostgresServer) -> str:
    """A role `app` may switch to with `SET ROLE`."""
    postgres_server.sql("DROP ROLE IF EXISTS pool_other; CREATE ROLE pool_other; "
                        "GRANT pool_other TO app", database="postgres")
    return "pool_other"


async def test_no_session_state_reaches_the_next_caller(postgres_server: PostgresServer,
                                                        other_role: str) -> None:
    postgres_server.sql("CREATE SEQUENCE IF NOT EXISTS pool_seq; ALTER SEQUENCE pool_seq OWNER TO app")
    pool = new_pool(connector(postgres_server), max_size=1, reset_timeout=5)
    watcher = await connector(postgres_server)()

    async def advisory_locks() -> int:
        return await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                      "AND objid = 4242")

    try:
        conn = await pool.acquire(1)
        await conn.fetchval("SELECT nextval('public.pool_seq')")
        await conn.execute(f"SET ROLE {other_role}")  # `RESET ALL` leaves a role in place
        assert await conn.fetchval("SELECT current_user") == other_role
        await conn.fetchval("SELECT set_config('search_path', 'hijacked', false)")
        await conn.fetchval("SELECT pg_advisory_lock(4242)")
        await conn.execute("CREATE TEMP TABLE left_behind AS SELECT 1 AS x")
        await conn.execute("LISTEN pool_channel")
        pool.release(conn)
        again = await pool.acquire(5)
        assert pid(again) == pid(conn)
        assert await again.fetchval("SELECT current_user") == "app"
        assert await again.fetchval("SELECT current_setting('search_path')") != "hijacked"
        assert await again.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None
        assert await again.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):  # lastval() undefined
            await again.fetchval("SELECT lastval()")
        assert await advisory_locks() == 0
        # A transaction left open, then one failed: rolled back in the same round trip.
        for failing in (False, True):
            await again.execute(f"SET ROLE {other_role}")
            await again.execute("CREATE TEMP TABLE left_behind AS SELECT 1 AS x")
            await again.execute("BEGIN")
            await again.fetchval("SELECT pg_advisory_lock(4242)")
            if failing:
                with pytest.raises(asyncpg.DivisionByZeroError):
                    await again.fetchval("SELECT 1 / 0")
            pool.release(again)
            again = await pool.acquire(5)
            assert pid(again) == pid(conn) and not again.is_in_transaction()
            assert await again.fetchval("SELECT current_user") == "app"
            assert await again.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None
            assert await advisory_locks() == 0
        pool.release(again)
    finally:
        await watcher.close()
        await pool.close()


async def test_a_function_named_like_the_resets_cannot_run_in_it(postgres_server: PostgresServer,
                                                                 other_role: str) -> None:
    """A run may create a function called `pg_advisory_unlock_all` in a schema it puts first in
    its `search_path`; the reset calls the real one by its qualified name, after `RESET ALL`."""
    postgres_server.sql(
        "DROP SCHEMA IF EXISTS shadow CASCADE; CREATE SCHEMA shadow AUTHORIZATION app;")
    pool = new_pool(connector(postgres_server), max_size=1, reset_timeout=5)
    try:
        conn = await pool.acquire(1)
        await conn.execute(
            "CREATE FUNCTION shadow.pg_advisory_unlock_all() RETURNS void LANGUAGE sql AS "
            f"$$ SELECT set_config('role', '{other_role}', false) $$")
        await conn.fetchval("SELECT pg_advisory_lock(77)")
        await conn.fetchval("SELECT set_config('search_path', 'shadow, pg_catalog', false)")
        pool.release(conn)
        again = await pool.acquire(5)
        assert pid(again) == pid(conn)
        assert await again.fetchval("SELECT current_user") == "app"
        assert await again.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND objid = 77 AND pid = $1", pid(again)) == 0
        pool.release(again)
        await pool.close()
        # The same `search_path` as the user's own default (what `RESET ALL` goes back to): a
        # user may set it for itself, for the connections opened after.
        postgres_server.sql("ALTER ROLE app IN DATABASE appdb SET search_path = shadow, pg_catalog")
        pool = new_pool(connector(postgres_server), max_size=1, reset_timeout=5)
        conn = await pool.acquire(1)
        assert await conn.fetchval("SELECT current_setting('search_path')") == "shadow, pg_catalog"
        pool.release(conn)
        again = await pool.acquire(5)
        assert pid(again) == pid(conn)
        assert await again.fetchval("SELECT current_user") == "app"
        pool.release(again)
    finally:
        await pool.close()
        postgres_server.sql("ALTER ROLE app IN DATABASE appdb RESET search_path; "
                            "DROP SCHEMA IF EXISTS shadow CASCADE")


async def test_a_statement_cut_short_leaves_a_usable_connection(postgres_server: PostgresServer
                                                                ) -> None:
    """asyncpg cancels a statement past its time limit on the server; the reset waits for that
    to finish (asyncpg's protocol does), and the same connection is handed on."""
    async with opened(postgres_server, max_size=1, reset_timeout=5) as pool:
        conn = await pool.acquire(1)
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(5)", timeout=0.2)
        pool.release(conn)
        again = await pool.acquire(5)
        assert pid(again) == pid(conn) and await again.fetchval("SELECT 2") == 2
        pool.release(again)


async def test_a_connection_lost_while_idle_is_replaced(postgres_server: PostgresServer) -> None:
    async with opened(postgres_server, max_size=1, reset_timeout=5) as pool:
        conn = await pool.acquire(1)
        pool.release(conn)
        await settled(pool)
        postgres_server.sql(f"SELECT pg_terminate_backend({pid(conn)})")
        for _ in range(100):
            if conn.is_closed():
                break
            await asyncio.sleep(0.02)
        assert conn.is_closed()
        fresh = await pool.acquire(5)
        assert pid(fresh) != pid(conn) and pool.size == 1
        assert await fresh.fetchval("SELECT 3") == 3
        pool.release(fresh)


async def test_a_failed_reset_passes_the_slot_to_a_waiting_caller(
        postgres_server: PostgresServer) -> None:
    async with opened(postgres_server, max_size=1, reset_timeout=5) as pool:
        held = await pool.acquire(1)
        waiting = asyncio.ensure_future(pool.acquire(5))
        await asyncio.sleep(0.05)
        old = pid(held)
        held.terminate()  # the reset cannot run on it
        pool.release(held)
        fresh = await asyncio.wait_for(waiting, 5)
        assert pid(fresh) != old and pool.size == 1
        assert await fresh.fetchval("SELECT 4") == 4
        pool.release(fresh)


async def test_a_failed_connect_frees_its_slot(postgres_server: PostgresServer) -> None:
    pool = new_pool(connector(postgres_server, failures=1), max_size=1, reset_timeout=5)
    try:
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire(1)
        assert pool.size == 0
        conn = await pool.acquire(1)
        assert pool.size == 1 and await conn.fetchval("SELECT 5") == 5
        pool.release(conn)
    finally:
        await pool.close()


async def test_idle_connections_close_after_their_lifetime(postgres_server: PostgresServer
                                                           ) -> None:
    async with opened(postgres_server, max_size=2, reset_timeout=5, idle_lifetime=1.0) as pool:
        first, second = await pool.acquire(1), await pool.acquire(1)
        pool.release(first)
        await settled(pool)
        await asyncio.sleep(0.6)
        pool.release(second)  # idle 0.6 s later than the first
        await settled(pool)
        await asyncio.sleep(0.6)  # the first is past its lifetime, the second is not
        assert (pool.size, pool.idle) == (1, 1) and first.is_closed()
        assert not second.is_closed()
        await asyncio.sleep(0.7)
        assert (pool.size, pool.idle) == (0, 0) and second.is_closed()


async def test_a_connection_handed_over_as_its_wait_is_cancelled_is_not_lost(
        postgres_server: PostgresServer) -> None:
    waiting: list[asyncio.Future[Any]] = []

    class Racing(ConnectionPool):
        def _give(self, conn: Any) -> None:
            super()._give(conn)
            for task in waiting:  # cancelled in the same loop turn as the hand-over
                task.cancel()

    pool = Racing(connector(postgres_server), policy=PolicyHolder(OPEN), max_size=1,
                  reset_timeout=5)
    try:
        held = await pool.acquire(1)
        waiting.append(asyncio.ensure_future(pool.acquire(5)))
        await asyncio.sleep(0.05)
        pool.release(held)
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        await settled(pool)
        assert (pool.size, pool.idle) == (1, 1)  # back in the pool, not in a dead waiter
        waiting.clear()
        again = await pool.acquire(1)
        assert pid(again) == pid(held)
        pool.release(again)
    finally:
        await pool.close()


async def test_closing_fails_the_waiting_and_ends_what_stays_in_use(
        postgres_server: PostgresServer) -> None:
    pool = new_pool(connector(postgres_server), max_size=1, reset_timeout=5)
    held = await pool.acquire(1)
    waiting = asyncio.ensure_future(pool.acquire(5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await pool.close(timeout=0.3)  # `held` is not given back in time: terminated
    assert 0.25 < time.monotonic() - started < 2.0
    with pytest.raises(PoolClosed):
        await waiting
    with pytest.raises(PoolClosed):
        await pool.acquire(1)
    assert held.is_closed()
    pool.release(held)  # late: nothing to reset
    await settled(pool)
    assert (pool.size, pool.idle) == (0, 0)
    assert open_backends(postgres_server) == 0


async def test_closing_waits_for_a_connection_given_back_in_time(
        postgres_server: PostgresServer) -> None:
    pool = new_pool(connector(postgres_server), max_size=1, reset_timeout=5)
    held = await pool.acquire(1)
    closing = asyncio.ensure_future(pool.close(timeout=5))
    await asyncio.sleep(0.1)
    assert not closing.done() and not held.is_closed()  # the run in flight may finish
    assert await held.fetchval("SELECT 6") == 6
    pool.release(held)
    await asyncio.wait_for(closing, 2)
    assert held.is_closed() and (pool.size, pool.idle) == (0, 0)
    assert open_backends(postgres_server) == 0


async def test_closing_hands_nothing_out_and_closes_every_connection(
        postgres_server: PostgresServer) -> None:
    pool = new_pool(connector(postgres_server), max_size=2, reset_timeout=5)
    first, second = await pool.acquire(1), await pool.acquire(1)
    pool.release(first)
    await settled(pool)
    assert pool.idle == 1
    pool.release(second)  # its reset is under way as the pool closes
    closing = asyncio.ensure_future(pool.close())
    while not pool._closed:
        await asyncio.sleep(0)
    assert pool._resets and pool.idle == 1
    assert pool.take() is None  # the idle connection is not handed out any more
    await closing
    assert first.is_closed() and second.is_closed() and (pool.size, pool.idle) == (0, 0)
    assert open_backends(postgres_server) == 0


async def test_a_cancelled_close_still_ends_every_connection(postgres_server: PostgresServer
                                                             ) -> None:
    pool = new_pool(connector(postgres_server), max_size=2, reset_timeout=5)
    idle, held = await pool.acquire(1), await pool.acquire(1)
    pool.release(idle)
    await settled(pool)
    closing = asyncio.ensure_future(pool.close(timeout=30))
    await asyncio.sleep(0.1)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert idle.is_closed() and held.is_closed()
    assert open_backends(postgres_server) == 0


async def test_a_connection_opened_while_the_pool_closes_is_not_kept(
        postgres_server: PostgresServer) -> None:
    gate = asyncio.Event()
    connect = connector(postgres_server)
    opened: list[Any] = []

    async def slow_connect() -> Any:
        conn = await connect()
        opened.append(conn)
        await gate.wait()
        return conn

    pool = new_pool(slow_connect, max_size=1, reset_timeout=5)
    taking = asyncio.ensure_future(pool.acquire(5))
    while not opened:
        await asyncio.sleep(0.01)
    await pool.close()
    gate.set()
    with pytest.raises(PoolClosed):
        await taking
    assert opened[0].is_closed() and pool.size == 0
    assert open_backends(postgres_server) == 0


async def test_a_reset_that_does_not_answer_in_time_frees_the_slot(
        postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    """The server process stops answering (SIGSTOP) while the connection is being reset: after
    `reset_timeout` the connection is terminated, a waiting run gets the slot and a new
    connection, and one log line names the datasource and the exception type only."""
    import os
    import signal

    async with opened(postgres_server, max_size=1, reset_timeout=0.3, name="frozen db") as pool:
        held = await pool.acquire(1)
        backend = pid(held)
        waiting = asyncio.ensure_future(pool.acquire(5))
        await asyncio.sleep(0.05)
        os.kill(backend, signal.SIGSTOP)
        try:
            with caplog.at_level("WARNING", logger="appliance.datasources"):
                pool.release(held)
                fresh = await asyncio.wait_for(waiting, 5)
        finally:
            os.kill(backend, signal.SIGCONT)
        assert pid(fresh) != backend and held.is_closed() and pool.size == 1
        assert await fresh.fetchval("SELECT 7") == 7
        lines = [r for r in caplog.records if r.name == "appliance.datasources"]
        assert [(r.getMessage(), r.datasource, r.exception) for r in lines] == [
            ("connection reset failed; the connection is closed", "frozen db", "TimeoutError")]
        pool.release(fresh)


async def test_a_connection_past_its_lifetime_is_replaced_when_given_back(
        postgres_server: PostgresServer) -> None:
    async with opened(postgres_server, max_size=1, reset_timeout=5, max_lifetime=0.3) as pool:
        old = await pool.acquire(1)
        pool.release(old)
        await settled(pool)
        assert pool.take() is old  # young enough: kept
        await asyncio.sleep(0.4)
        pool.release(old)
        await settled(pool)
        assert old.is_closed() and (pool.size, pool.idle) == (0, 0)
        fresh = await pool.acquire(1)
        assert fresh is not old and await fresh.fetchval("SELECT 8") == 8
        pool.release(fresh)


# -- a change of the egress policy ---------------------------------------------------------------

STILL_ALLOWS = dataclasses.replace(OPEN, deny=("192.0.2.1",))  # a change; the cluster still allowed


def backend_alive(pg: PostgresServer, backend: int) -> bool:
    return pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}").strip() == "1"


async def gone(pg: PostgresServer, *backends: int) -> None:
    """Until the server no longer has any of `backends` (a terminated socket: the backend sees
    the EOF and exits)."""
    for _ in range(100):
        if not any(backend_alive(pg, backend) for backend in backends):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backends {backends} still open")


async def test_a_policy_change_closes_the_idle_connections_at_once(
        postgres_server: PostgresServer) -> None:
    holder = PolicyHolder(OPEN)
    async with opened(postgres_server, policy=holder, max_size=2, reset_timeout=5) as pool:
        first, second = await pool.acquire(1), await pool.acquire(1)
        old = {pid(first), pid(second)}
        pool.release(first)
        pool.release(second)
        await settled(pool)
        assert (pool.size, pool.idle) == (2, 2) and all(backend_alive(postgres_server, b)
                                                        for b in old)
        holder.update(STILL_ALLOWS)
        assert (pool.size, pool.idle) == (0, 0) and first.is_closed() and second.is_closed()
        await gone(postgres_server, *old)
        fresh = await pool.acquire(1)  # dialed afresh, under the new policy
        assert pid(fresh) not in old and await fresh.fetchval("SELECT 1") == 1
        pool.release(fresh)
        await settled(pool)
        assert pool.take() is fresh  # kept again: it was checked under the policy now in force
        pool.release(fresh)


async def test_a_connection_in_use_at_a_change_finishes_its_run_then_is_closed(
        postgres_server: PostgresServer) -> None:
    """The run holding the only connection goes on after the change; given back, the connection
    is closed, not reset nor handed to the run waiting for it: that run gets a new one."""
    holder = PolicyHolder(OPEN)
    async with opened(postgres_server, policy=holder, max_size=1, reset_timeout=5) as pool:
        held = await pool.acquire(1)
        backend = pid(held)
        waiting = asyncio.ensure_future(pool.acquire(5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        holder.update(STILL_ALLOWS)
        assert await held.fetchval("SELECT 41 + 1") == 42  # the run under way is not cut
        assert not held.is_closed()
        pool.release(held)
        fresh = await asyncio.wait_for(waiting, 5)
        assert held.is_closed() and pid(fresh) != backend and pool.size == 1
        await gone(postgres_server, backend)
        pool.release(fresh)


async def test_a_change_made_in_another_thread_reaches_the_pool_in_its_loop(
        postgres_server: PostgresServer) -> None:
    holder = PolicyHolder(OPEN)
    async with opened(postgres_server, policy=holder, max_size=1, reset_timeout=5) as pool:
        conn = await pool.acquire(1)
        pool.release(conn)
        await settled(pool)
        await asyncio.to_thread(holder.update, STILL_ALLOWS)
        for _ in range(100):  # called soon, in the pool's loop
            if pool.idle == 0:
                break
            await asyncio.sleep(0.01)
        assert (pool.size, pool.idle) == (0, 0) and conn.is_closed()


async def test_a_connection_dialed_while_the_policy_changes_is_not_kept(
        postgres_server: PostgresServer) -> None:
    """The policy in force when the dial starts is the one noted: a change during the connect
    makes the new connection stale at once (its run uses it; it is not kept)."""
    holder = PolicyHolder(OPEN)
    connect = connector(postgres_server)

    async def connect_during_a_change() -> Any:
        conn = await connect()
        holder.update(STILL_ALLOWS)
        return conn

    pool = new_pool(connect_during_a_change, policy=holder, max_size=1, reset_timeout=5)
    try:
        conn = await pool.acquire(1)
        assert await conn.fetchval("SELECT 3") == 3
        pool.release(conn)
        await settled(pool)
        assert conn.is_closed() and (pool.size, pool.idle) == (0, 0)
    finally:
        await pool.close()
