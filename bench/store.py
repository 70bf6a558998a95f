"""Store benchmark: one-step write transactions per second (the audit log's group commit when it
takes the writer's thread) by public ways, against aiosqlite's private `_execute` measured in the
same run. Prints ratios; never asserts.

Each transaction is what the audit log's batch does: BEGIN IMMEDIATE, read the chain's head,
insert a few rows, COMMIT, with `synchronous = NORMAL` (query runs are non-durable entries).

Run: .venv/bin/python bench/store.py [--seconds 2.0] [--rows 4] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

SCHEMA = "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)"
HEAD = "SELECT seq FROM log ORDER BY seq DESC LIMIT 1"
INSERT = "INSERT INTO log (seq, body) VALUES (?, ?)"


def _step(conn: sqlite3.Connection, rows: int) -> int:
    """The whole transaction, on whichever thread owns `conn`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        head = conn.execute(HEAD).fetchone()
        seq = head[0] if head else 0
        conn.executemany(INSERT, [(seq + i + 1, "x" * 200) for i in range(rows)])
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return seq + 1


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(SCHEMA)
    return conn


class _Worker:
    """A thread that owns one connection and runs what it is given, as aiosqlite's does."""

    def __init__(self, path: Path) -> None:
        self._queue: queue.SimpleQueue[tuple[asyncio.Future[object], Callable[[], object]] | None]
        self._queue = queue.SimpleQueue()
        self.conn = _connect(path)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            try:
                result = call()
            except BaseException as exc:  # handed to the waiting coroutine
                future.get_loop().call_soon_threadsafe(_fail, future, exc)
            else:
                future.get_loop().call_soon_threadsafe(_succeed, future, result)

    def run(self, fn: Callable[..., object], *args: object) -> asyncio.Future[object]:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((future, lambda: fn(*args)))
        return future

    def stop(self) -> None:
        self._queue.put_nowait(None)
        self._thread.join()
        self.conn.close()


def _succeed(future: asyncio.Future[object], result: object) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[object], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def rate(step: Callable[[], Awaitable[object]], seconds: float) -> float:
    for _ in range(50):  # warm up
        await step()
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            await step()
        count += 20
    return count / (time.perf_counter() - started)


async def main(seconds: float, rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        _connect(path).close()

        private = await aiosqlite.connect(path, isolation_level=None)
        await private.execute("PRAGMA synchronous = NORMAL")

        async def by_private() -> object:
            return await private._execute(_step, private._conn, rows)

        async def by_awaits() -> object:  # public aiosqlite: one await (one thread hop) a call
            await private.execute("BEGIN IMMEDIATE")
            try:
                async with private.execute(HEAD) as cursor:
                    head = await cursor.fetchone()
                seq = head[0] if head else 0
                await private.executemany(INSERT, [(seq + i + 1, "x" * 200)
                                                   for i in range(rows)])
            except BaseException:
                await private.rollback()
                raise
            await private.commit()
            return seq + 1

        # Public stdlib: a sqlite3 connection owned by one worker thread of our own.
        worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        own = await asyncio.get_running_loop().run_in_executor(worker, _connect, path)
        loop = asyncio.get_running_loop()

        async def by_own_thread() -> object:
            return await loop.run_in_executor(worker, _step, own, rows)

        lean = _Worker(path)

        async def by_own_worker() -> object:
            return await lean.run(_step, lean.conn, rows)

        results: dict[str, list[float]] = {"private": [], "awaits": [], "own thread": [],
                                           "own worker": []}
        for _ in range(3):  # interleaved, so drift on a shared machine hits each alike
            results["private"].append(await rate(by_private, seconds / 3))
            results["awaits"].append(await rate(by_awaits, seconds / 3))
            results["own thread"].append(await rate(by_own_thread, seconds / 3))
            results["own worker"].append(await rate(by_own_worker, seconds / 3))
        await private.close()
        await loop.run_in_executor(worker, own.close)
        worker.shutdown()
        lean.stop()

    base = max(results["private"])
    print(f"{rows} rows a transaction, best of 3 interleaved runs of {seconds / 3:.2f} s")
    for name, figures in results.items():
        best = max(figures)
        print(f"{name:>28}: {best:9,.0f} transactions/s   ratio {best / base:.2f}")
    print("  private    = aiosqlite's private _execute(fn, _conn): the whole step in one hop")
    print("  awaits     = public aiosqlite calls, one thread hop each")
    print("  own thread = a sqlite3 connection on our own one-thread executor: one hop")
    print("  own worker = the same on our own thread and queue (aiosqlite's own mechanism)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as serve does)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.run(main(args.seconds, args.rows))
    else:
        asyncio.run(main(args.seconds, args.rows))
