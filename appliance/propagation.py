"""How a change made by another instance (or a CLI verb) reaches this process's caches: one store
listener, and one task that asks each cache holder to check itself against the store.

Owns that listener and the checking task of a serving core: checks run one at a time, in the
order given, coalesced (any number of changes seen while a round runs make one more round), and a
round that failed is retried every `RETRY_SECONDS` until one passes. Never reads a record itself
(each check is its owner's: one cheap query, then drop what changed) and never raises into the
store's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from appliance.errors import ApplianceError
from appliance.store import Store

log = logging.getLogger("appliance.propagation")

RETRY_SECONDS = 1.0

Check = Callable[[], Awaitable[object]]


class ChangeFollower:
    """Runs `checks` (name, async function) after every change the store reports
    (`Store.add_listener`): within about a second of another instance's commit."""

    def __init__(self, store: Store, checks: Sequence[tuple[str, Check]], *,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self._store = store
        self._checks = tuple(checks)
        self._retry_seconds = retry_seconds
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self._failing: set[str] = set()
        self.rounds = 0  # completed rounds (for tests and diagnosis)
        self.last_round_ms = 0.0

    def start(self) -> None:
        self._remove = self._store.add_listener(self.changed)

    def changed(self) -> None:
        """The store moved: run a round of checks now, or once more after the current one."""
        self._pending = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="follow-store-changes")

    async def _run(self) -> None:
        while self._pending:
            self._pending = False
            started = time.perf_counter()
            if not await self._round():
                self._pending = True  # try again: the store may answer in a moment
                await asyncio.sleep(self._retry_seconds)
                continue
            self.rounds += 1
            self.last_round_ms = round((time.perf_counter() - started) * 1000, 3)

    async def _round(self) -> bool:
        passed = True
        for name, check in self._checks:
            try:
                await check()
            except Exception as exc:  # one holder's failure must not keep the others stale
                passed = False
                if name not in self._failing:  # logged once per outage, not every second
                    self._failing.add(name)
                    log.warning("following a store change failed; retrying every second",
                                extra={"cache": name, "error": _reason(exc)})
                continue
            if name in self._failing:
                self._failing.discard(name)
                log.info("following store changes again", extra={"cache": name})
        return passed

    async def close(self) -> None:
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _reason(exc: Exception) -> str:
    """What a failed check says: an appliance error's code, else the exception's type (a
    driver's message could carry a value)."""
    return exc.code if isinstance(exc, ApplianceError) else type(exc).__name__
