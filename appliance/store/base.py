"""What every store offers: reads, and writes inside a transaction that commits whole or not at all.

Owns the interface only; implementations live beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
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

    async def write(self, fn: Callable[[Any], T], *, durable: bool = True) -> T:
        """Run a synchronous `fn(connection)` as one whole transaction, in one step; for hot
        paths. `fn` gets the implementation's own connection (sqlite3 for SQLite)."""
        ...

    async def schema_version(self) -> int: ...

    async def ping(self) -> None:
        """Raise `StoreError` if the store cannot answer."""
        ...

    async def close(self) -> None: ...
