"""Login throttling: per (account, address) pair first, then per address and per account at much
higher thresholds, each with exponential backoff; the pairs that have logged in are "known".

Owns the `login_throttle` table and the per-key locks that serialise concurrent attempts. Each
row says when it stops mattering (`forget_at`: its window after the last failure, the known span
after a login); every write deletes a bounded batch of rows past it, so the table holds only rows
still inside their window however many accounts and addresses were ever tried. A known
pair (a full login, password and second factor, from that address in the last `known_for`
seconds) answers only to its own pair limit: failures other people cause elsewhere, on the same
account or from the same address, never refuse it. Never stores a password, a typed user name or
an address; keys are hashes (`throttle_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from appliance.errors import TooManyRequests
from appliance.store import Store, Transaction

THRESHOLD = 5        # failures of one pair allowed before backoff starts
BASE_DELAY = 2.0     # seconds locked at the threshold; doubles with each further failure
MAX_DELAY = 900.0    # never locked longer than this at once
PRUNE_BATCH = 200    # rows past their window each write deletes: far more than a write adds (3)


@dataclass(frozen=True)
class Limit:
    """Failures a key may collect before it locks, and how long a quiet key remembers them."""

    threshold: int
    forget_after: float


@dataclass(frozen=True)
class Policy:
    """The limits, as data (see docs/users.md for why these numbers)."""

    pair: Limit = Limit(THRESHOLD, 3600.0)       # one account from one address
    address: Limit = Limit(50, 86400.0)          # one address, any accounts
    account: Limit = Limit(100, 86400.0)         # one account, from any address
    known_for: float = 30 * 86400.0              # a full login makes its pair known this long


def throttle_key(kind: str, value: str) -> str:
    """`<kind>:<hash>`: a name typed at login may be a misplaced password, so the table never
    keeps it (or the address) in clear."""
    return f"{kind}:" + hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Keys:
    """The throttle keys of one login attempt."""

    pair: str
    address: str
    account: str
    known: str  # the row that says the pair has logged in (no counter)

    @classmethod
    def of(cls, username: str, address: str) -> Keys:
        name = username.lower()
        return cls(pair=throttle_key("pair", f"{name}\x00{address}"),
                   address=throttle_key("addr", address),
                   account=throttle_key("user", name),
                   known=throttle_key("known", f"{name}\x00{address}"))


def delay_for(failures: int, threshold: int = THRESHOLD) -> float:
    if failures < threshold:
        return 0.0
    return min(MAX_DELAY, BASE_DELAY * 2.0 ** min(failures - threshold, 20))


class Throttled(TooManyRequests):
    def __init__(self, retry_after: float, limit: str = "") -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        self.limit = limit  # which key locked: for the audit, never for the client
        super().__init__(f"too many failed attempts; try again in {self.retry_after} seconds",
                         code="throttled")


class Throttle:
    def __init__(self, store: Store, policy: Policy | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy or Policy()
        self._clock = clock
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    async def watched(self, keys: Keys) -> list[str]:
        """The keys that may refuse this attempt: the pair's only, for a known pair."""
        row = await self.store.fetch_one(
            "SELECT updated_at FROM login_throttle WHERE key = ?", (keys.known,))
        if row is not None and self._clock() - row["updated_at"] < self.policy.known_for:
            return [keys.pair]
        return [keys.pair, keys.account, keys.address]

    @contextlib.asynccontextmanager
    async def serialised(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Attempts on the same watched keys run one at a time (a known pair waits only for
        attempts of its own pair, never behind an attack on its account)."""
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

    async def locked(self, keys: Sequence[str]) -> Throttled | None:
        """The lock on any of `keys` now (the longest), or None."""
        try:
            await self.check(keys)
        except Throttled as exc:
            return exc
        return None

    async def check(self, keys: Sequence[str]) -> None:
        """Raise `Throttled` if any key is locked now."""
        if not keys:
            return
        now = self._clock()
        marks = ",".join("?" for _ in keys)
        rows = await self.store.fetch_all(
            f"SELECT key, locked_until FROM login_throttle WHERE key IN ({marks})", tuple(keys))
        worst = max(rows, key=lambda row: row["locked_until"], default=None)
        if worst is not None and worst["locked_until"] > now:
            raise Throttled(worst["locked_until"] - now, str(worst["key"]).partition(":")[0])

    async def failure(self, tx: Transaction, keys: Keys) -> float:
        """Count a failure for the pair, the address and the account; return the longest lock it
        causes (seconds)."""
        now = self._clock()
        longest = 0.0
        for key, limit in ((keys.pair, self.policy.pair), (keys.address, self.policy.address),
                           (keys.account, self.policy.account)):
            row = await tx.fetch_one(
                "SELECT failures, updated_at FROM login_throttle WHERE key = ?", (key,))
            failures = 1
            if row and now - row["updated_at"] < limit.forget_after:
                failures = int(row["failures"]) + 1
            delay = delay_for(failures, limit.threshold)
            longest = max(longest, delay)
            await tx.execute(
                "INSERT INTO login_throttle (key, failures, locked_until, updated_at, forget_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " failures = excluded.failures, locked_until = excluded.locked_until,"
                " updated_at = excluded.updated_at, forget_at = excluded.forget_at",
                (key, failures, now + delay, now, now + max(limit.forget_after, delay)))
        await self.prune(tx, now)
        return longest

    async def success(self, tx: Transaction, keys: Keys) -> None:
        """A full login: the pair starts again from zero and is known from now on. The address's
        and the account's counts stay (a login of one's own account must not buy an attacker at
        the same address, or on the same account, a fresh allowance)."""
        now = self._clock()
        await tx.execute("DELETE FROM login_throttle WHERE key = ?", (keys.pair,))
        await tx.execute(
            "INSERT INTO login_throttle (key, failures, locked_until, updated_at, forget_at)"
            " VALUES (?, 0, 0, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            " updated_at = excluded.updated_at, forget_at = excluded.forget_at",
            (keys.known, now, now + self.policy.known_for))
        await self.prune(tx, now)

    @staticmethod
    async def prune(tx: Transaction, now: float, batch: int = PRUNE_BATCH) -> int:
        """Delete at most `batch` rows whose window has passed (the oldest first, through the
        `forget_at` index); how many. A forgotten row counts as it did at the end of its window:
        nothing."""
        return await tx.execute(
            "DELETE FROM login_throttle WHERE key IN (SELECT key FROM login_throttle"
            " WHERE forget_at <= ? ORDER BY forget_at LIMIT ?)", (now, batch))
