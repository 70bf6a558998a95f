"""aiosqlite's private seam, in one place: run a function on an aiosqlite connection's own thread,
with its sqlite3 connection. Owns the only use of aiosqlite's private `Connection._execute` and
`Connection._conn`; never used outside appliance/store/ (tests/test_init_and_store.py fails loudly
when aiosqlite changes them).

What it buys (bench/store.py, `--uvloop`, 4 rows a transaction): the audit log's group commit on
the writer's thread as one thread hop: aiosqlite's public calls, one hop each, reach 0.20-0.51 of
it. A sqlite3 connection on a one-thread `ThreadPoolExecutor` (public stdlib) reaches 0.77-0.90;
our own thread and queue (aiosqlite's mechanism, ~30 lines) matched it (0.94-1.63, noisy): that
is the way to drop this module, by owning the writer's thread instead of borrowing aiosqlite's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")


async def run_on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """`fn(sqlite3_connection, *args)` on `conn`'s thread, queued behind its other calls."""
    raw: sqlite3.Connection = conn._conn
    # aiosqlite leaves its private `_execute` unannotated.
    result: T = await conn._execute(  # type: ignore[no-untyped-call]  # unannotated (above)
        fn, raw, *args)
    return result
