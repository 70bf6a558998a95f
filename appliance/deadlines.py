"""Time limits on the request path: `asyncio.timeout`'s behaviour without a timer per use.

Every request has a time limit and every run that waits for a pool connection another. A loop
timer per limit (what `asyncio.timeout` arms and cancels) costs a few microseconds each time;
here the limits of a loop share one sweep that runs every `RESOLUTION` seconds while any limit is
open, and arming one costs a set insertion. A limit fires up to `RESOLUTION` late.

Owns nothing but the open limits of each event loop.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

RESOLUTION: Final = 0.05  # seconds a limit may fire late


class _Sweeper:
    """The open limits of one event loop, and the sweep that cancels the tasks past theirs."""

    __slots__ = ("_scheduled", "loop", "open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open: set[Limit] = set()
        self._scheduled = False

    def add(self, limit: Limit) -> None:
        self.open.add(limit)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_later(RESOLUTION, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for limit in [limit for limit in self.open if limit.deadline <= now]:
            self.open.discard(limit)
            limit.expire()
        if self.open:
            self.loop.call_later(RESOLUTION, self._sweep)
        else:
            self._scheduled = False


_current: _Sweeper | None = None


def _sweeper(loop: asyncio.AbstractEventLoop) -> _Sweeper:
    global _current
    sweeper = _current
    if sweeper is None or sweeper.loop is not loop:
        sweeper = _current = _Sweeper(loop)  # one loop at a time in a process (tests: many)
    return sweeper


class Limit:
    """`with limit(seconds):` in a task: once `seconds` have passed, the task is cancelled where
    it waits and `TimeoutError` leaves the block (as with `asyncio.timeout`, which this replaces
    on the request path). Limits nest; the one that expired is the one that raises."""

    __slots__ = ("_cancelling", "_sweeper", "_task", "deadline", "expired")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + seconds
        self.expired = False
        self._sweeper = _sweeper(loop)
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def __enter__(self) -> Limit:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a time limit needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self._sweeper.add(self)
        return self

    def expire(self) -> None:
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._sweeper.open.discard(self)
        if self.expired and self._task is not None:
            # The same bookkeeping as asyncio.timeout: our cancellation is withdrawn, and it is
            # ours to turn into TimeoutError only if nobody else asked to cancel the task.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def limit(seconds: float) -> Limit:
    """A time limit of `seconds` on the block it guards (see `Limit`)."""
    return Limit(seconds)


__all__ = ["RESOLUTION", "Limit", "limit"]
