"""What every store offers: reads, and writes inside a transaction that commits whole or not at all.

Owns the interface (and `CommitHooks`, the one bookkeeping of a transaction's commit hooks that
both stores share); implementations live beside it (`sqlite`, `postgres`). Never names a
driver's type: no connection or cursor crosses it. SQL crosses it in one portable dialect: `?`
placeholders, ON CONFLICT … DO UPDATE, RETURNING; no row ids, no SQLite-only functions.

Writes are serialised across every process on the store (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock taken first in each write), so a read-modify-write inside one `transaction()` or
`write()` never loses an update, however many instances share the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

Row = dict[str, Any]
T = TypeVar("T")
Params = Sequence[Any]


class CommitHook(Protocol):
    """Work tied to one transaction's commit (`Transaction.hook`): the audit log's sinks."""

    async def prepare(self) -> None:
        """Run once the block ended without error, just before COMMIT; raising rolls the
        transaction back, and what it raised leaves the block."""
        ...

    async def undo(self) -> None:
        """`prepare` ran but the COMMIT then failed (the transaction is rolled back). Must not
        raise."""
        ...


H = TypeVar("H", bound=CommitHook)


class CommitHooks:
    """A transaction's hooks (`Transaction.hook`), for the stores: `prepare` them all before
    COMMIT, `undo` those prepared when the COMMIT fails; `finish` does both around the store's
    COMMIT."""

    __slots__ = ("_hooks", "_prepared")

    def __init__(self) -> None:
        self._hooks: dict[object, CommitHook] = {}
        self._prepared: list[CommitHook] = []

    def get(self, key: object, make: Callable[[], H]) -> H:
        hook = self._hooks.get(key)
        if hook is None:
            hook = self._hooks[key] = make()
        return hook  # type: ignore[return-value]  # made by `make` under this key: an H

    async def prepare(self) -> None:
        for hook in self._hooks.values():
            await hook.prepare()
            self._prepared.append(hook)

    async def undo(self) -> None:
        for hook in self._prepared:
            await hook.undo()

    async def finish(self, commit: Callable[[], Awaitable[None]],
                     rollback: Callable[[], Awaitable[None]]) -> None:
        """The end of a transaction whose block ended well: `prepare`, then `commit()` (which
        raises when the COMMIT failed, the transaction rolled back); `rollback()` when a hook's
        `prepare` raised, `undo` when the COMMIT failed.

        Run to its end even when the caller is cancelled meanwhile (at COMMIT, say), as the audit
        log's own commits are (`AuditLog._committed`): a COMMIT cut short cannot tell whether it
        went through, and a hook is undone if, and only if, the store did not commit. The
        caller's cancellation is raised once it has ended (the store's write lock held until
        then, so the next transaction never starts under an unfinished COMMIT)."""
        await to_the_end(self._finish(commit, rollback))

    async def _finish(self, commit: Callable[[], Awaitable[None]],
                      rollback: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.prepare()
        except BaseException:
            await rollback()
            raise
        try:
            await commit()
        except BaseException:
            await self.undo()
            raise


async def to_the_end(work: Awaitable[T], *, on_cancel: Callable[[], None] | None = None) -> T:
    """`work`'s result, run to its end even when the caller is cancelled meanwhile (a COMMIT
    cut short cannot tell whether it went through); the caller's cancellation is raised once it
    has ended. `on_cancel` is called when that cancellation arrives (to hurry `work` on)."""
    ending = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not ending.done():
        try:
            await asyncio.wait((ending,))
        except asyncio.CancelledError as exc:  # wait() leaves `ending` running
            if cancelled is None and on_cancel is not None:
                on_cancel()
            cancelled = exc
    if cancelled is not None:
        if not ending.cancelled():
            ending.exception()  # retrieved: the caller leaves by its cancellation
        raise cancelled
    return ending.result()


class Transaction(Protocol):
    """Writes (and reads that must see them) inside one transaction."""

    def hook(self, key: object, make: Callable[[], H]) -> H:
        """The transaction's commit hook under `key`, made by `make()` at the first ask; hooks
        prepare in the order they were made."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows changed."""
        ...

    async def insert(self, sql: str, params: Params = ()) -> None:
        """Run one INSERT. To learn a key the store chose, use `INSERT … RETURNING` with
        `fetch_one` (both stores have it): a row id is not portable."""
        ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement once per row of parameters (PostgreSQL: a plain INSERT in one
        round trip); return the number of rows changed."""
        ...


class Step(Protocol):
    """A transaction seen synchronously, for `Store.write`'s function: whatever thread the store
    runs it on, each call returns before the next (SQLite: its writer's thread or the event
    loop's; a store on an async driver would run it on a worker thread and bridge each call)."""

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    def insert(self, sql: str, params: Params = ()) -> None:
        """Run one INSERT (for a key the store chose: `INSERT … RETURNING` with `fetch_one`)."""
        ...

    def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement once per row of parameters; return the number of rows changed."""
        ...


class Store(Protocol):
    bridged_writes: bool
    """True when `write` must bridge each step of its function from a worker thread to the
    event loop (a store on an async driver: PostgreSQL), so a short write on a hot path is
    quicker as a `transaction()`; False when `write` is the quickest way (SQLite: inline)."""

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """`fetch_all` as plain tuples in the statement's column order, for long scans (the
        audit chain's walk) where making a dict of every row is most of the cost."""
        ...

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        """`fetch_one` for indexed point reads on the request path, at the lowest latency the
        implementation offers (SQLite: on the event loop's thread, no thread hop)."""
        ...

    async def search(self, sql: str, params: Params = ()) -> list[Row]:
        """`fetch_all` for a read whose best plan depends on its values (the audit log's
        filters: a rare actor wants its index, a common one the primary key), planned for these
        values on every call. PostgreSQL otherwise settles on one generic plan for a prepared
        statement after its fifth run; SQLite plans every statement with its values anyway."""
        ...

    def version(self) -> int | None:
        """A number that changes whenever a record that `lookup` reads may have changed, for
        caching lookups; None when it cannot tell (then nothing may be cached). It moves at once
        after this process's own durable commit, and within a second of another process's."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` on the event loop whenever `version()` moved because another process
        (another instance, a CLI verb) committed; return the function that removes it. Calls are
        coalesced (one per change seen, within about a second) and may also follow this
        process's own writes (SQLite cannot tell them apart): a callback reloads, idempotently.
        A callback must be quick and must not raise (what it raises is logged and dropped)."""
        ...

    def transaction(self, *, durable: bool = True) -> AbstractAsyncContextManager[Transaction]:
        """Commit when the block ends, roll back if it raises. `durable=False` as for `write`
        (a store may commit durably all the same: SQLite's threaded writer does)."""
        ...

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True,
                    blocking: bool = False) -> T:
        """Run a synchronous `fn(step)` as one whole transaction, in one step; for hot paths.
        `fn` must be quick, must not commit, and must raise to roll back. `durable=False` allows
        the newest such commits to be lost to a power failure (never half of one). `blocking`:
        `fn` does I/O of its own (the audit sinks), so it never runs on the event loop's thread."""
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
