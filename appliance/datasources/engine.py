"""The one interface every datasource kind implements: test, open a result stream, collect a
whole result, close.

Owns `Engine`, `Target` (what an engine knows of its datasource), `RowStream`, and `EngineRuns`
(for engines whose driver has no pool that closes gracefully). The query
service talks only to this interface and never knows which kind is behind it. Engines open their
network connections only through the egress dialer, and never log values or results.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from appliance.datasources.config import Limits, limits_of
from appliance.datasources.errors import EngineRetired
from appliance.secret import Secret


@dataclass(frozen=True)
class Target:
    """A datasource as an engine sees it: identity, canonical config, and its version (bumped on
    every change of config or secrets, so a registry knows when to replace a pool)."""

    id: str
    name: str
    kind: str
    config: Mapping[str, Any]
    version: int
    secrets: Mapping[str, Secret[str]] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def limits(self) -> Limits:
        return limits_of(self.config)

    def secret(self, name: str) -> str | None:
        found = self.secrets.get(name)
        return found.reveal() if found is not None else None


@dataclass
class RowStream:
    """The result of one statement: its columns, then rows in batches as they arrive.

    Rows are sequences of driver values (see `queries.result_json` for their JSON form).
    """

    columns: list[str]
    batches: AsyncIterator[list[Any]]


class Engine(abc.ABC):
    """One datasource's connections (its pool), created lazily, closed once."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def name(self) -> str:
        return self.target.name

    @abc.abstractmethod
    async def test(self, timeout: float) -> None:
        """Connect and run a trivial command; raise a `DatasourceError` saying what failed."""

    @abc.abstractmethod
    def open(self, bound: Any, *, timeout: float, fetch: int, stream: bool = False
             ) -> AbstractAsyncContextManager[RowStream]:
        """Run one bound statement and hand its rows over batch by batch: the streamed run.
        `fetch` is how many rows the caller wants at most (it stops reading after that);
        `timeout` bounds the statement; `stream`: the caller sends rows on as they arrive, for as
        long as it takes (an engine may read them through a cursor). Leaving the context releases
        the connection (and cancels what is still running)."""

    async def collect(self, bound: Any, *, timeout: float, fetch: int,
                      take: Callable[[list[Any]], bool]) -> list[str]:
        """Run one bound statement for an answer: hand its rows to `take` batch by batch until
        it returns False or the rows run out; return the columns. The connection is let go
        before it returns. Engines that can read a whole answer in one step override it."""
        async with self.open(bound, timeout=timeout, fetch=fetch) as rows:
            async for batch in rows.batches:
                if not take(batch):
                    break
            return rows.columns

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection. Idempotent."""

    def pool_stats(self) -> PoolStats | None:
        """Connections open and idle now, for metrics; None where the driver does not say.
        Never blocks."""
        return None


class EngineRuns:
    """An engine's runs under way and whether it was retired, for a driver whose pool does not
    close gracefully by itself (an aiohttp session, a PyMongo client): a retired engine starts
    nothing more (`EngineRetired`: the runner takes the engine that replaced it, never this one's
    old config and secrets), and its pool is closed only once the runs under way have ended."""

    def __init__(self, datasource: str) -> None:
        self._datasource = datasource
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()
        self.retired = False

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """One run (or test) on the engine, from before it takes a connection to its end."""
        if self.retired:
            raise EngineRetired(self._datasource)
        self._count += 1
        self._none.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._none.set()

    async def retire(self) -> None:
        """No new run from now on; return once the runs under way have ended (each is bounded
        by its own time limit)."""
        self.retired = True
        await self._none.wait()


@dataclass(frozen=True)
class PoolStats:
    size: int  # connections open
    idle: int  # of which not in use
    waiting: int | None = None  # runs waiting for a connection now (None: the driver does not say)
    waits: int | None = None  # runs that had to wait for one, since the pool opened
