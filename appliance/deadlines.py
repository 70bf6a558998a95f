"""Time limits on the request path: `asyncio.timeout`'s behaviour without a timer per use.

Every request has a time limit and every run that waits for a pool connection another. A loop
timer per limit (what `asyncio.timeout` arms and cancels) costs a few microseconds each time;
here the limits of a loop share one sweep that runs every `RESOLUTION` seconds while any limit is
open, and arming one costs a set insertion. A limit fires up to `RESOLUTION` late.

Owns nothing but the open limits of each event loop.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Final

RESOLUTION: Final = 0.05  # seconds a limit may fire late


class _Sweeper:
    """The open limits of one event loop, and the sweep that cancels the tasks past theirs."""

    __slots__ = ("loop", "open", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open: set[Limit] = set()
        self.scheduled = False

    def schedule(self) -> None:
        """Sweep in `RESOLUTION` seconds (`Limit` adds itself to `open`, then calls this)."""
        self.scheduled = True
        self.loop.call_later(RESOLUTION, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for limit in [limit for limit in self.open if limit.deadline <= now]:
            self.open.discard(limit)
            limit.expire()
        if self.open:
            self.loop.call_later(RESOLUTION, self._sweep)
        else:
            self.scheduled = False


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
    on the request path). Limits nest; the one that expired is the one that raises. The time
    counts from entering the block."""

    __slots__ = ("_cancelling", "_seconds", "_sweeper", "_task", "deadline", "expired")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None  # the rest is set on entering
        self._sweeper: _Sweeper | None = None
        self.expired = False

    def __enter__(self) -> Limit:
        self._task = task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a time limit needs a running task")
        self._cancelling = task.cancelling()
        self._sweeper = sweeper = _sweeper(task.get_loop())
        # The process's monotonic clock, not the loop's: uvloop's is read once per loop turn
        # (to the millisecond), so a deadline taken from it could fall due early.
        self.deadline = time.monotonic() + self._seconds
        sweeper.open.add(self)
        if not sweeper.scheduled:
            sweeper.schedule()
        return self

    def expire(self) -> None:
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._sweeper is not None:
            self._sweeper.open.discard(self)
        if self.expired and self._task is not None:
            # The same bookkeeping as asyncio.timeout: our cancellation is withdrawn, and it is
            # ours to turn into TimeoutError only if nobody else asked to cancel the task.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


limit = Limit  # `with deadlines.limit(seconds):` a time limit on the block it guards


__all__ = ["RESOLUTION", "Limit", "limit"]
