"""A second handle on a test's store, as another process would hold it (no tests here): the test
reads and changes the store behind the appliance's back through the Store interface, whichever
store it is (SQLite file or PostgreSQL database).

Owns that handle: opened from the same settings, on an event loop of its own in a thread of its
own, so plain synchronous calls work from sync tests and from async tests alike (an async test
cannot block its own loop on the appliance's store). Also owns the few statements that must be
spelled per dialect (a trigger that refuses audit entries). Never used by the appliance itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from appliance.egress import Dialer, PolicyHolder
from appliance.settings import Settings
from appliance.store import Store, open_store
from appliance.store.opener import sqlite_path

T = TypeVar("T")
TIMEOUT = 30.0


class Record(tuple[Any, ...]):
    """A row by position (`row[0]`, `== (1,)`) and by column name (`row["n"]`, `dict(row)`), as
    `sqlite3.Row` reads."""

    _columns: tuple[str, ...]

    def __new__(cls, row: dict[str, Any]) -> Record:
        record = super().__new__(cls, row.values())
        record._columns = tuple(row)
        return record

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._columns.index(key))
        return super().__getitem__(key)

    def keys(self) -> tuple[str, ...]:
        return self._columns


class OutsideStore:
    """The store the settings name, opened apart from the appliance (its own connections)."""

    def __init__(self, settings: Settings) -> None:
        self.dialect = "sqlite" if sqlite_path(settings) is not None else "postgresql"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="outside-store",
                                        daemon=True)
        self._thread.start()
        try:
            self._store: Store = self._run(open_store(
                settings, Dialer(PolicyHolder(settings.egress)), migrate=False, must_exist=True))
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Record]:
        """Every row of one read (`?` placeholders, the store's portable SQL)."""
        return [Record(row) for row in self._run(self._store.fetch_all(sql, params))]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in a transaction of its own, committed; the rows it changed."""
        async def run() -> int:
            async with self._store.transaction() as tx:
                return await tx.execute(sql, params)
        return self._run(run())

    def snapshot_bytes(self, directory: Path) -> bytes:
        """Everything the store holds, as the bytes of one SQLite file (the store's own backup
        format): what a stolen disk or dump would show."""
        target = directory / f"snapshot-{threading.get_ident()}-{id(self)}.db"
        self._run(self._store.snapshot(target))
        try:
            return target.read_bytes()
        finally:
            target.unlink()

    def refuse_audit(self, action: str | None = None) -> None:
        """From now on every audit entry (or only those of `action`) fails to be written, as a
        full disk would refuse it; `allow_audit()` ends that."""
        if self.dialect == "sqlite":
            when = f" WHEN NEW.action = '{action}'" if action is not None else ""
            self.execute(f"CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log{when} "
                         "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            return
        when = f" WHEN (NEW.action = '{action}')" if action is not None else ""
        self.execute("CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger "
                     "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$")
        self.execute(f"CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW{when} "
                     "EXECUTE FUNCTION refuse_audit()")

    def allow_audit(self) -> None:
        on = " ON audit_log" if self.dialect == "postgresql" else ""
        self.execute(f"DROP TRIGGER IF EXISTS refuse_audit{on}")

    def close(self) -> None:
        try:
            self._run(self._store.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()

