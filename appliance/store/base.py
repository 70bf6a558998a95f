"""What every store offers: reads, and writes inside a transaction that commits whole or not at all.

Owns the interface only; implementations live beside it. Never names a driver's type: no
connection or cursor crosses it, so a PostgreSQL store can honour it as the SQLite one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

Row = dict[str, Any]
T = TypeVar("T")
Params = Sequence[Any]


class Transaction(Protocol):
    """Writes (and reads that must see them) inside one transaction."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows changed."""
        ...

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT; return the new row id."""
        ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...


class Step(Protocol):
    """A transaction seen synchronously, for `Store.write`'s function: whatever thread the store
    runs it on, each call returns before the next (SQLite: its writer's thread or the event
    loop's; a store on an async driver would run it on a worker thread and bridge each call)."""

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT; return the new row id."""
        ...

    def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement once per row of parameters; return the number of rows changed."""
        ...


class Store(Protocol):
    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        """`fetch_one` for indexed point reads on the request path, at the lowest latency the
        implementation offers (SQLite: on the event loop's thread, no thread hop)."""
        ...

    def version(self) -> int | None:
        """A number that changes whenever a record that `lookup` reads may have changed, for
        caching lookups; None when it cannot tell (then nothing may be cached)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """Commit when the block ends, roll back if it raises."""
        ...

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True) -> T:
        """Run a synchronous `fn(step)` as one whole transaction, in one step; for hot paths.
        `fn` must be quick, must not commit, and must raise to roll back. `durable=False` allows
        the newest such commits to be lost to a power failure (never half of one)."""
        ...

    async def snapshot(self, to: Path) -> None:
        """Write a transactionally consistent copy of the whole store to the new file `to`
        (0600; it must not exist), in the implementation's own format, while others go on
        reading and writing (the backup's store member)."""
        ...

    async def schema_version(self) -> int: ...

    async def ping(self) -> None:
        """Raise `StoreError` if the store cannot answer."""
        ...

    async def close(self) -> None: ...
