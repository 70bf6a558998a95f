"""The audit log: append-only entries chained by an HMAC under the keyring's audit key, written
in the caller's transaction.

Owns `audit_log` rows, their one write path (`AuditLog.record`), the upgrade boundary (the first
keyed entry after legacy ones) and the group commit of entries written outside a transaction
(query runs), and the hand-over of every entry to the audit sinks (`Sinks.deliver`, in the
entry's transaction, just before its commit). Fail-closed: when an entry cannot be written (the
store fails, a required sink fails, or no audit key can be had: the keyring does not open) the
caller's transaction is rolled back and the request fails. Never records a secret value, a
query parameter value or a result (every entry's details pass through `redact`); never logs a
key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NamedTuple

from appliance.audit.chain import GENESIS, KEYED_ACTION, Verification, encode_details, mac_values
from appliance.audit.keys import MacKeys
from appliance.audit.redact import redact
from appliance.audit.sinks import ENTRY_FIELDS, SinkFailed, Sinks
from appliance.errors import ApplianceError, ServiceUnavailable, StoreError
from appliance.store import Step, Store, Transaction

log = logging.getLogger("appliance.audit")
RUN_ACTION = "query.run"
RUN_START_ACTION = "query.run.start"  # a stream's entry, written before its first row leaves
RUN_ACTIONS = frozenset({RUN_ACTION, RUN_START_ACTION})  # committed without a flush to disk

OUTCOMES = ("ok", "denied", "failed", "error")
_MAX_FIELD = 500


class AuditUnavailable(ServiceUnavailable):
    """The audit entry could not be written, so the action it describes did not happen."""

    code = "audit_unavailable"

    def __init__(self, why: str = "") -> None:
        super().__init__(f"the audit log cannot be written{f' ({why})' if why else ''}; "
                         "the action was not performed")


class _NoKeys(Exception):
    """No audit key can be had (the keyring is sealed and does not open); `why` says why."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# What gives a sealed process its audit keys (the core unseals): called with True when the
# caller holds a store transaction (then it must write nothing: that transaction holds the
# writer). Raises when the keyring cannot be opened.
NeedKeys = Callable[[bool], Awaitable[MacKeys]]
MacKey = tuple[int, bytes]  # (version, key)


class Context(NamedTuple):
    """Who and where, for entries written on behalf of a request (or the CLI). A named tuple:
    made for every request, and a tuple is quicker to make than a frozen dataclass."""

    actor: str = "system"
    client: str = ""
    request_id: str = ""


class RunsUnderWay:
    """The query runs under way, as the audit log's group commit sees them (from
    `AuditLog.run_under_way`): a context manager counting the runs inside it. Each will record
    an entry soon, so a batch forming may wait a few loop turns for them."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1


# An entry before it is chained: the columns between `seq` and `prev_hash`, in table order
# (time, actor, action, target, outcome, client, request_id, details).
Fields = tuple[str, str, str, str, str, str, str, str]
_ACTION = 2
_action_of = operator.itemgetter(_ACTION)


class AuditLog:
    """`record` writes every entry (one path: redacted, encoded, chained); `run_under_way` tells
    the group commit which entries are on their way."""

    def __init__(self, store: Store, *, keys: MacKeys | None = None,
                 need_keys: NeedKeys | None = None, sinks: Sinks | None = None,
                 gather_turns: int = 6, max_batch: int = 512) -> None:
        self.store = store
        # Every entry also goes to these, in its transaction before the commit (None or no
        # sink configured: the store only).
        self.sinks = sinks if sinks else None
        self._keys = keys  # the keyring's audit keys, once unsealed (`use_keys`)
        self._need_keys = need_keys
        self.gather_turns = gather_turns
        self.max_batch = max_batch
        self._runs = RunsUnderWay()
        self._entries: list[Fields] = []  # waiting for the next batch, in order
        self._waiters: list[asyncio.Future[int]] = []  # each entry's caller, at its index
        self._flusher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[int]] = set()  # commits under way, with sinks
        self._withdrawing: set[asyncio.Task[None]] = set()  # withdrawals of cancelled callers
        self._closed = False
        # The head this process's last own commit left (bridged stores only): the next commit
        # chains onto it and its first INSERT checks it is still the head (`_GUARDED_INSERT_SQL`)
        # instead of reading it first. A hint, never trusted: a wrong one costs the read.
        self._head: Row | None = None

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        tx: Transaction | None = None,
        *,
        action: str,
        actor: str = "system",
        target: str = "",
        outcome: str = "ok",
        client: str = "",
        request_id: str = "",
        details: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> Coroutine[Any, Any, int]:
        """Append one entry; await what it returns for its position, once it is written.

        The one way in for every entry: its details are always redacted (`redact`) and encoded
        by the one encoder (`chain.encode_details`). With `tx`, the entry is written inside that
        transaction: let `AuditUnavailable` propagate out of it so the action is rolled back with
        its entry. Without, it is committed in a transaction of its own, grouped with the
        entries arriving meanwhile (group commit; never await it while holding a store
        transaction: it needs the writer itself). Query runs' entries (`RUN_ACTIONS`) skip the
        flush to disk: a power failure may lose the newest of them, never half of one.

        A plain function returning the write's coroutine (one coroutine less on a run's path):
        a bad `outcome` raises `ValueError` at the call. Raises `AuditUnavailable` (awaited) if
        the entry cannot be written.
        """
        if context is not None:
            actor, client, request_id = context.actor, context.client, context.request_id
        fields = _fields(action=action, actor=actor, target=target, outcome=outcome,
                         client=client, request_id=request_id, details=details)
        if tx is not None:
            return self._write_in(tx, fields)
        return self._commit(fields)

    def use_keys(self, keys: MacKeys) -> None:
        """Take the audit keys from `keys` (the vault: it follows the keyring's changes, so the
        newest audit key is always the one in use)."""
        self._keys = keys

    @property
    def keys(self) -> MacKeys | None:
        return self._keys

    async def mac_keys(self, *, in_transaction: bool = False) -> MacKeys:
        """The audit keys, unsealing the keyring if this process has not yet (`need_keys`).
        `AuditUnavailable` naming why when they cannot be had (so nothing is written)."""
        try:
            return await self._find_keys(in_transaction)
        except _NoKeys as exc:
            log.error("audit write failed", extra={"exception": "NoAuditKey",
                                                   "error": exc.why})
            raise AuditUnavailable(exc.why) from None

    async def _find_keys(self, in_transaction: bool) -> MacKeys:
        if self._keys is not None and self._keys.mac_key() is not None:
            return self._keys
        if self._need_keys is None:
            raise _NoKeys("no audit key: the keyring is sealed in this process")
        try:
            keys = await self._need_keys(in_transaction)
        except ApplianceError as exc:
            raise _NoKeys(f"no audit key: {exc.message}") from None
        if keys.mac_key() is None:
            raise _NoKeys("the keyring has no audit key yet: start `appliance serve` or run "
                          "`appliance audit verify` once to add it")
        self._keys = keys
        return keys

    def _mac_key(self) -> MacKey | None:
        keys = self._keys
        return keys.mac_key() if keys is not None else None

    def run_under_way(self) -> RunsUnderWay:
        """Hold it (`with audit.run_under_way():`) around a query run, from its start until its
        last entry is recorded. While runs are under way a batch forming waits a few loop turns
        for their entries, so that one commit serves many; the only run under way commits its
        entry at once."""
        return self._runs

    async def _write_in(self, tx: Transaction, fields: Fields) -> int:
        key = self._mac_key() or (await self.mac_keys(in_transaction=True)).mac_key()
        assert key is not None  # mac_keys() returns keys that have one
        self._head = None  # the caller's transaction may yet roll back: nothing to chain onto
        try:
            return (await self._append(tx, [fields], key))[0]
        except ApplianceError as exc:
            if not isinstance(exc, StoreError):
                raise
            log.error("audit write failed", extra={"action": fields[_ACTION],
                                                   "exception": type(exc).__qualname__})
            raise AuditUnavailable() from None
        except Exception as exc:
            log.error("audit write failed", extra={"action": fields[_ACTION],
                                                   "exception": type(exc).__qualname__})
            raise AuditUnavailable() from None

    async def _commit(self, fields: Fields) -> int:
        """Commit `fields` in a transaction of its own: at once when nothing else is on its way
        (no batch forming, no other run under way), else in the next batch."""
        if self._closed:
            raise AuditUnavailable()
        key = self._mac_key()
        if key is None:  # a sealed process's first entry: unseal (never on the hot path again)
            key = (await self.mac_keys()).mac_key()
            assert key is not None
        flusher = self._flusher
        if self._runs.count <= 1 and not self._entries and (flusher is None or flusher.done()):
            action = fields[_ACTION]
            try:
                first = await self._committed([fields], key, action not in RUN_ACTIONS)
            except Exception as exc:  # not CancelledError: a BaseException, it propagates
                log.error("audit write failed", extra={"action": action,
                                                       "exception": type(exc).__qualname__})
                raise AuditUnavailable() from None
            return first
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._entries.append(fields)
        self._waiters.append(done)
        if flusher is None or flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="audit-group-commit")
        # Not shielded: a cancelled caller cancels only its own future; the flusher skips it.
        return await done

    async def _flush_loop(self) -> None:
        # Started by the first entry's submitter, this task first runs after every callback
        # ready in that loop iteration: the entries they submitted join the same batch. While
        # fewer entries wait than query runs are under way (each of which submits one when it
        # ends), it gives the loop up to `gather_turns` more turns to gather them: under load a
        # commit then serves many runs instead of a few (its fixed cost, SQLite's locks and
        # WAL write, is most of an entry's), and a run never waits more than those few turns.
        pending, waiting = self._entries, self._waiters  # parallel lists: entry, its future
        while pending:
            waiters: list[asyncio.Future[int]] = []
            try:
                turns = self.gather_turns
                while turns and len(pending) < min(self._runs.count, self.max_batch):
                    await asyncio.sleep(0)
                    turns -= 1
                count = min(len(pending), self.max_batch)
                entries, waiters = pending[:count], waiting[:count]
                del pending[:count], waiting[:count]
                # Query-run metadata may skip the flush to disk (atomic all the same, and still
                # written before the caller answers); any other entry makes the batch durable.
                durable = not RUN_ACTIONS.issuperset(map(_action_of, entries))
                key = self._mac_key()
                if key is None:  # the keys were there when these entries were submitted
                    raise AuditUnavailable("no audit key")
                first = await self._committed(entries, key, durable)
            except asyncio.CancelledError:
                for done in waiters + waiting:
                    if not done.done():
                        done.set_exception(AuditUnavailable())
                pending.clear()
                waiting.clear()
                raise
            except Exception as exc:
                log.error("audit group commit failed",
                          extra={"entries": len(waiters), "exception": type(exc).__qualname__})
                for done in waiters:
                    if not done.done():
                        done.set_exception(AuditUnavailable())
                continue
            for position, done in enumerate(waiters, first):
                if not done.done():
                    done.set_result(position)

    async def _committed(self, entries: list[Fields], key: MacKey, durable: bool) -> int:
        """`_write`, and the sinks' lines withdrawn if it failed: the one way every path (one
        entry at once, a batch) commits, so a failure and a cancellation end the same on each.

        With sinks, the write is a task of its own that a cancelled caller does not cut short (a
        cancellation arriving at COMMIT, say): a SQLite store's writer thread would go on without
        it, and commit or not. When that write ends its lines are withdrawn if, and only if, it
        failed (a committed entry's line is never marked withdrawn because its caller left). On a
        PostgreSQL store the transaction's commit hook withdraws them (`_SinkDelivery.undo`),
        when its COMMIT failed or its answer was lost. Without sinks there is nothing to
        withdraw, and the write is awaited as it is (no task on a run's path)."""
        delivered: list[Row] = []
        if self.sinks is None:
            return await self._write(entries, key, durable, delivered)
        write = asyncio.ensure_future(self._write(entries, key, durable, delivered))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            write.add_done_callback(functools.partial(self._withdraw_if_failed, delivered))
            raise
        except Exception:
            await self._withdraw(delivered)
            raise

    def _withdraw_if_failed(self, delivered: list[Row], write: asyncio.Future[int]) -> None:
        """A write whose caller was cancelled has ended: withdraw its lines if it failed."""
        if write.cancelled() or write.exception() is not None:
            self._withdraw_later(delivered)

    async def _write(self, entries: list[Fields], key: MacKey, durable: bool,
                     delivered: list[Row]) -> int:
        """Commit `entries` in a transaction of their own; the position of the first. The whole
        batch is one store write: the head, the chain, the inserts, the sinks, the commit.

        A store whose `write` bridges each step from a thread (PostgreSQL) takes an async
        `transaction` instead, chaining onto the head this process's last commit left: BEGIN
        and the write lock, one INSERT that also checks that head (and the rest of a batch in
        one more round trip), COMMIT. Sinks are delivered by the transaction's commit hook, as
        for an entry in a caller's transaction (withdrawn by it when the COMMIT fails: nothing
        for `delivered`)."""
        if not self.store.bridged_writes:
            first: int = await self.store.write(
                functools.partial(_append_sync, entries=entries, key=key, sinks=self.sinks,
                                  delivered=delivered),
                durable=durable, blocking=self.sinks is not None)
            return first
        known, self._head = self._head, None  # set again only by a commit that succeeds
        async with self.store.transaction(durable=durable) as tx:
            positions, head = await self._append_rows(tx, entries, key, known)
        self._head = head
        return positions[0]

    async def _append(self, tx: Transaction, entries: list[Fields], key: MacKey) -> list[int]:
        return (await self._append_rows(tx, entries, key, None))[0]

    async def _append_rows(self, tx: Transaction, entries: list[Fields], key: MacKey,
                           known: Row | None) -> tuple[list[int], Row]:
        """Chain `entries` after the head and insert them in `tx`; their positions, and the new
        head. With `known` (what the head was at this process's last commit), the first row is
        chained onto it and inserted only if it still is the head, checked by the INSERT itself
        under the write lock (another instance may have appended since): else the head is read
        and the entries chained again onto it."""
        rows: list[tuple[Any, ...]] = []
        first = 0
        if known is not None:
            rows, first = _chain(known, entries, key)
            guard = (known["seq"], known["hash"])
            if await tx.execute(_GUARDED_INSERT_SQL, (*rows[0], *guard)) == 1:
                await tx.execute_many(_INSERT_SQL, rows[1:])
            else:
                rows = []
        if not rows:
            rows, first = _chain(await tx.fetch_one(_HEAD_SQL), entries, key)
            await tx.execute_many(_INSERT_SQL, rows)
        if self.sinks is not None:  # delivered when the block ends, before its commit
            sinks = self.sinks
            tx.hook(self, lambda: _SinkDelivery(sinks)).rows.extend(map(_sink_row, rows))
        last = rows[-1]
        head: Row = {"seq": last[0], "hash": last[-2], "mac_version": last[-1]}
        return [int(row[0]) for row in rows[first:]], head

    async def _withdraw(self, delivered: list[Row]) -> None:
        """The sinks took `delivered` but the store's commit failed: say so to them."""
        if delivered and self.sinks is not None:
            await asyncio.to_thread(self.sinks.withdraw, delivered)

    def _withdraw_later(self, delivered: list[Row]) -> None:
        """`_withdraw` for a write whose caller was cancelled (a task: `close` waits for it)."""
        if delivered and self.sinks is not None:
            task = asyncio.get_running_loop().create_task(self._withdraw(delivered))
            self._withdrawing.add(task)
            task.add_done_callback(self._withdrawing.discard)

    async def close(self) -> None:
        """Let pending entries finish (those whose callers were cancelled too, and the
        withdrawal of their lines if they failed), then refuse new ones."""
        self._closed = True
        if self._flusher is not None:  # its failures (a cancellation too) are its callers'
            await asyncio.wait([self._flusher])
        while self._writes:  # their done callbacks start a failed one's withdrawal
            await asyncio.wait(set(self._writes))
        if self._withdrawing:
            await asyncio.wait(set(self._withdrawing))

    # -- reading -----------------------------------------------------------------------------

    async def head(self) -> tuple[int, str] | None:
        """The chain's head (position and MAC), None while the log is empty: one indexed read
        (what `serve`'s anchors write)."""
        row = await self.store.fetch_one(_HEAD_SQL)
        return (int(row["seq"]), str(row["hash"])) if row is not None else None

    async def page(self, *, after: int = 0, limit: int = 100,
                   descending: bool = False, before: int | None = None) -> list[dict[str, Any]]:
        """Entries by position: ascending after `after`, or descending before `before`."""
        limit = max(1, min(int(limit), 1000))
        if descending:
            bound = before if before is not None else 2**62
            rows = await self.store.fetch_all(
                "SELECT * FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT ?", (bound, limit))
        else:
            rows = await self.store.fetch_all(
                "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [public_entry(row) for row in rows]

    async def verify(self, *, full: bool = True, chunk: int = 5000) -> Verification:
        """Check the chain: all of it (`full`), or from the newest `audit.verified` marker.
        Unseals the keyring if needed (every audit key is needed)."""
        from appliance.audit.verification import verify_store

        try:
            keys = await self._find_keys(False)
        except _NoKeys as exc:
            raise ServiceUnavailable(f"the audit chain cannot be verified ({exc.why})",
                                     code="keyring_unavailable") from None
        return await verify_store(self.store, keys, full=full, chunk=chunk)


Row = dict[str, Any]


class _SinkDelivery:
    """The commit hook of a caller's transaction (`Transaction.hook`): its entries go to the
    sinks once the block ended well, just before COMMIT, in a worker thread (a journal or syslog
    sink may wait up to its timeout for a full socket; the event loop never does). A required
    sink's failure rolls the transaction back as `AuditUnavailable`; a failed COMMIT withdraws
    the lines."""

    __slots__ = ("rows", "sinks")

    def __init__(self, sinks: Sinks) -> None:
        self.sinks = sinks
        self.rows: list[Row] = []

    async def prepare(self) -> None:
        try:
            await asyncio.to_thread(self.sinks.deliver, self.rows)
        except SinkFailed:
            log.error("audit write failed", extra={"action": self.rows[0]["action"],
                                                   "exception": "SinkFailed"})
            raise AuditUnavailable() from None

    async def undo(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.sinks.withdraw, self.rows)


def _sink_row(row: tuple[Any, ...]) -> Row:
    """A chained row as the sinks take it: the stored columns by name (`seq` as `position`)."""
    return dict(zip(ENTRY_FIELDS, row, strict=True))


def public_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as the API and the CLI show it (details decoded)."""
    entry = dict(row)
    try:
        entry["details"] = json.loads(entry["details"])
    except (TypeError, ValueError):
        pass
    entry["position"] = entry.pop("seq")
    return entry


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _now() -> str:
    """The time in UTC as `datetime.isoformat` writes it (`2026-01-31T12:00:00.123456+00:00`),
    the whole second formatted once per second."""
    global _second
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    second = _second
    if second[0] != seconds:  # replaced whole, so another thread never sees half of it
        second = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{second[1]}.{nanoseconds // 1000:06d}+00:00"


def _clip(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:_MAX_FIELD]


def _fields(*, action: str, actor: str, target: str, outcome: str, client: str,
            request_id: str, details: Mapping[str, Any] | None) -> Fields:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    return (
        _now(),
        _clip(actor),
        _clip(action),
        _clip(target),
        outcome,
        _clip(client),
        _clip(request_id),
        encode_details(redact(details) if details else {}),
    )


_HEAD_SQL = "SELECT seq, hash, mac_version FROM audit_log ORDER BY seq DESC LIMIT 1"
_COLUMNS = ("seq, time, actor, action, target, outcome, client, request_id, details, prev_hash,"
            " hash, mac_version")
_INSERT_SQL = f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# One row, inserted only if the head (as `_HEAD_SQL` reads it: one step down the primary key,
# whatever plan a prepared statement settles on) is the entry whose seq and hash are the last two
# parameters. Under the write lock, so no other instance's append can come between the check and
# the insert.
_GUARDED_INSERT_SQL = (
    f"INSERT INTO audit_log ({_COLUMNS})"
    " SELECT CAST(? AS BIGINT), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS BIGINT)"
    " WHERE EXISTS (SELECT 1 FROM (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1)"
    " AS head WHERE head.seq = ? AND head.hash = ?)"
)


def _boundary(head: Any) -> Fields:
    """The upgrade boundary: the first keyed entry after legacy ones, naming the legacy head."""
    return (_now(), "system", KEYED_ACTION, "", "ok", "", "", encode_details(
        {"legacy_head": {"position": int(head["seq"]), "hash": str(head["hash"])}}))


def _chain(head: Any, entries: list[Fields], key: MacKey) -> tuple[list[tuple[Any, ...]], int]:
    """The rows that append `entries` after `head` (the last entry's seq, hash and key version,
    or None), each linked by its MAC under `key`; and the index of the first of `entries` among
    them (1 when the upgrade boundary goes first: the head is a legacy entry)."""
    seq = int(head["seq"]) if head else 0
    prev = str(head["hash"]) if head else GENESIS
    first = 0
    if head and head["mac_version"] is None:
        entries, first = [_boundary(head), *entries], 1
    version, secret = key
    rows = []
    for fields in entries:
        seq += 1
        hashed = (seq, *fields, prev)  # HASHED_FIELDS, in order: the table's columns
        prev = mac_values(hashed, version, secret)
        rows.append((*hashed, prev, version))
    return rows, first


def _append_sync(step: Step, entries: list[Fields], key: MacKey, sinks: Sinks | None = None,
                 delivered: list[Row] | None = None) -> int:
    """`_append` for `Store.write`, inside the store's transaction: the entries take the
    positions from the one returned on, in order. With `sinks`, the rows go to them last, just
    before the store commits (`SinkFailed` rolls it back); those the sinks took are added to
    `delivered`, for the caller to withdraw if the commit then fails."""
    rows, first = _chain(step.fetch_one(_HEAD_SQL), entries, key)
    step.execute_many(_INSERT_SQL, rows)
    if sinks is not None:
        lines = [_sink_row(row) for row in rows]
        sinks.deliver(lines)
        if delivered is not None:
            delivered.extend(lines)
    return int(rows[first][0])
