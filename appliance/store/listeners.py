"""Who wants to hear that the store changed under this process (`Store.add_listener`), and the
twice-a-second poll that tells them when the store has no notifications of its own (SQLite).

Owns the callbacks and the poll task (alive only while someone listens). Never reads the store
itself: the poll reads a `version` function it is given; never lets a callback's error escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("appliance.store")

POLL_SECONDS = 0.5  # seen within half a second, so that the caches follow within one


class Listeners:
    """Callbacks to run on the event loop when the store changed; with `version`, a task reads
    it every `POLL_SECONDS` while there is a callback, and calls them when it moved."""

    def __init__(self, name: str, version: Callable[[], int | None] | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._name = name
        self._version = version
        self._poll_seconds = poll_seconds
        self._callbacks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        if self._version is not None and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._poll(), name=self._name)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def fire(self) -> None:
        """Call every callback now (on the loop's thread)."""
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception as exc:  # a listener's bug must not stop the others or the store
                log.error("store change listener failed", extra={"error": type(exc).__name__})

    async def _poll(self) -> None:
        assert self._version is not None
        last = self._version()
        while self._callbacks:
            await asyncio.sleep(self._poll_seconds)
            current = self._version()
            if current is not None and current != last:
                last = current
                self.fire()

    async def close(self) -> None:
        self._callbacks.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
