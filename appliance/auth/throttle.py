"""Login throttling: after 5 failures per account or per client address, exponential backoff.

Owns the `login_throttle` table and the per-key locks that serialise concurrent attempts.
Never stores a password or a typed user name; keys are hashes (`throttle_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import weakref
from collections.abc import AsyncIterator, Sequence

from appliance.errors import TooManyRequests
from appliance.store import Store, Transaction

THRESHOLD = 5        # failures allowed before backoff starts
BASE_DELAY = 2.0     # seconds locked after the 5th failure; doubles with each further one
MAX_DELAY = 900.0    # never locked longer than this at once
FORGET_AFTER = 3600.0  # a key with no failure for this long starts again from zero


def throttle_key(kind: str, value: str) -> str:
    """`user:<hash>` or `addr:<hash>`: a name typed at login may be a misplaced password, so
    the table never keeps it in clear."""
    return f"{kind}:" + hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:32]


def delay_for(failures: int) -> float:
    if failures < THRESHOLD:
        return 0.0
    return min(MAX_DELAY, BASE_DELAY * 2 ** min(failures - THRESHOLD, 20))


class Throttled(TooManyRequests):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many failed logins; try again in {self.retry_after} seconds",
                         code="throttled")


class Throttle:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    @contextlib.asynccontextmanager
    async def serialised(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Attempts on the same account or from the same address run one at a time."""
        locks = []
        for key in sorted(set(keys)):
            lock = self._locks.get(key)
            if lock is None:
                lock = asyncio.Lock()
                self._locks[key] = lock
            locks.append(lock)
        async with contextlib.AsyncExitStack() as stack:
            for lock in locks:
                await stack.enter_async_context(lock)
            yield

    async def check(self, keys: Sequence[str]) -> None:
        """Raise `Throttled` if any key is locked now."""
        now = time.time()
        marks = ",".join("?" for _ in keys)
        rows = await self.store.fetch_all(
            f"SELECT locked_until FROM login_throttle WHERE key IN ({marks})", tuple(keys))
        wait = max((row["locked_until"] - now for row in rows), default=0.0)
        if wait > 0:
            raise Throttled(wait)

    async def failure(self, tx: Transaction, keys: Sequence[str]) -> float:
        """Count a failure for each key; return the longest lock it causes (seconds)."""
        now = time.time()
        longest = 0.0
        for key in keys:
            row = await tx.fetch_one(
                "SELECT failures, updated_at FROM login_throttle WHERE key = ?", (key,))
            failures = 1
            if row and now - row["updated_at"] < FORGET_AFTER:
                failures = int(row["failures"]) + 1
            delay = delay_for(failures)
            longest = max(longest, delay)
            await tx.execute(
                "INSERT INTO login_throttle (key, failures, locked_until, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET failures = excluded.failures,"
                " locked_until = excluded.locked_until, updated_at = excluded.updated_at",
                (key, failures, now + delay, now))
        return longest

    async def success(self, tx: Transaction, key: str) -> None:
        await tx.execute("DELETE FROM login_throttle WHERE key = ?", (key,))
