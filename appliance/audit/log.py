"""The audit log: append-only, hash-chained entries, written in the caller's transaction.

Owns `audit_log` rows and the group commit of high-rate entries (query runs). Fail-closed: when an
entry cannot be written the caller's transaction is rolled back and the request fails. Never
records a secret value, a query parameter value or a result (details pass through `redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import time
from collections.abc import Coroutine, Mapping
from typing import Any, NamedTuple

from appliance import compact_json
from appliance.audit.chain import GENESIS, Verification, hash_values, verify
from appliance.audit.redact import redact
from appliance.errors import ApplianceError, ServiceUnavailable
from appliance.store import Store, Transaction

log = logging.getLogger("appliance.audit")
RUN_ACTION = "query.run"
RUN_START_ACTION = "query.run.start"  # a stream's entry, written before its first row leaves
_RUN_ACTIONS = frozenset({RUN_ACTION, RUN_START_ACTION})

OUTCOMES = ("ok", "denied", "failed", "error")
_MAX_FIELD = 500


class AuditUnavailable(ServiceUnavailable):
    """The audit entry could not be written, so the action it describes did not happen."""

    code = "audit_unavailable"

    def __init__(self) -> None:
        super().__init__("the audit log cannot be written; the action was not performed")


class Context(NamedTuple):
    """Who and where, for entries written on behalf of a request (or the CLI). A named tuple:
    made for every request, and a tuple is quicker to make than a frozen dataclass."""

    actor: str = "system"
    client: str = ""
    request_id: str = ""


# An entry before it is chained: the columns between `seq` and `prev_hash`, in table order
# (time, actor, action, target, outcome, client, request_id, details).
Fields = tuple[str, str, str, str, str, str, str, str]
_ACTION = 2
_action_of = operator.itemgetter(_ACTION)


class AuditLog:
    """`record` inside a transaction; `record_run` for the query-run hot path (group commit)."""

    def __init__(self, store: Store, *, gather_turns: int = 6, max_batch: int = 512) -> None:
        self.store = store
        self.gather_turns = gather_turns
        self.max_batch = max_batch
        # Query runs started and not yet recorded, counted by whoever runs them (`Runner`
        # counts its answers): each will submit an entry soon, so a batch waits for them.
        self.runs_in_flight = 0
        self._entries: list[Fields] = []  # waiting for the next batch, in order
        self._waiters: list[asyncio.Future[int]] = []  # each entry's caller, at its index
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # -- writing -----------------------------------------------------------------------------

    async def record(
        self,
        tx: Transaction,
        *,
        action: str,
        actor: str = "system",
        target: str = "",
        outcome: str = "ok",
        client: str = "",
        request_id: str = "",
        details: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> int:
        """Append one entry inside `tx`; return its position.

        Raises `AuditUnavailable` if it cannot be written: let it propagate out of the
        transaction so the action is rolled back with it.
        """
        if context is not None:
            actor, client, request_id = context.actor, context.client, context.request_id
        fields = _fields(action=action, actor=actor, target=target, outcome=outcome,
                         client=client, request_id=request_id, details=details)
        try:
            return (await self._append(tx, [fields]))[0]
        except ApplianceError:
            raise
        except Exception as exc:
            log.error("audit write failed", extra={"action": action,
                                                   "exception": type(exc).__qualname__})
            raise AuditUnavailable() from None

    def record_run(
        self,
        *,
        actor: str,
        query_id: str,
        datasource: str,
        mode: str,
        duration_ms: float,
        row_count: int,
        outcome: str = "ok",
        truncated: bool = False,
        error: str | None = None,
        client: str = "",
        request_id: str = "",
        alone: bool = False,
    ) -> Coroutine[Any, Any, int]:
        """Record a query run (metadata only: its details are `datasource`, `mode`,
        `duration_ms`, `row_count`, `truncated` and `error` when there is one); await what it
        returns to know the entry is committed, without an fsync of its own (a power failure may
        lose the newest run entries, never half of one).

        Entries arriving while a batch is being committed are written together in the next one
        (group commit). Raises `AuditUnavailable` if the batch cannot be committed. Never call it
        while holding a store transaction: it needs the writer itself. `alone`: the caller knows
        no other entry is on its way (see `submit`). A plain function returning the commit's
        coroutine (one coroutine less on the hot path): a bad `outcome` raises at the call.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        duration = round(float(duration_ms), 3)
        if -_INFINITY < duration < _INFINITY:
            # `_DETAILS_JSON` of these details, written directly (keys in their sorted order).
            details = (
                f'{{"datasource":{_json_string(str(datasource))},"duration_ms":{duration!r},'
                + (f'"error":{_json_string(str(error))},' if error is not None else "")
                + f'"mode":{_json_string(str(mode))},"row_count":{int(row_count)!r},'
                  f'"truncated":{"true" if truncated else "false"}}}')
        else:  # NaN or infinite, as json writes them
            details = _DETAILS_JSON({"datasource": str(datasource), "duration_ms": duration,
                                     "mode": str(mode), "row_count": int(row_count),
                                     "truncated": bool(truncated),
                                     **({"error": str(error)} if error is not None else {})})
        # The entry built here in one step (the hot path): `_fields`' columns, in its order.
        return self._submit((
            _now(), str(actor)[:_MAX_FIELD], RUN_ACTION, f"query:{query_id}"[:_MAX_FIELD],
            outcome, str(client)[:_MAX_FIELD], str(request_id)[:_MAX_FIELD], details),
            alone=alone)

    async def record_run_start(self, *, actor: str, query_id: str, client: str = "",
                               request_id: str = "",
                               details: Mapping[str, Any] | None = None) -> int:
        """Record that a streamed run is about to send rows (metadata only), before the first
        row leaves; its `record_run` follows when it ends. Same durability as `record_run`."""
        return await self._submit(_fields(action=RUN_START_ACTION, actor=actor,
                                          target=f"query:{query_id}", outcome="ok",
                                          client=client, request_id=request_id,
                                          details=details))

    async def submit(self, *, action: str, actor: str = "system", target: str = "",
                     outcome: str = "ok", client: str = "", request_id: str = "",
                     details: Mapping[str, Any] | None = None, alone: bool = False) -> int:
        """Append one entry in its own (group-committed) transaction; return its position.

        `alone=True` (the caller knows no other entry is on its way, e.g. the only query run in
        flight) commits the entry at once in the caller's task when no batch is forming: there is
        nothing to group it with, so it skips the batch's task and loop turns."""
        return await self._submit(_fields(action=action, actor=actor, target=target,
                                          outcome=outcome, client=client,
                                          request_id=request_id, details=details),
                                  alone=alone)

    async def _submit(self, fields: Fields, *, alone: bool = False) -> int:
        if self._closed:
            raise AuditUnavailable()
        flusher = self._flusher
        if alone and not self._entries and (flusher is None or flusher.done()):
            action = fields[_ACTION]
            try:
                first = await self.store.write(
                    functools.partial(_append_sync, entries=[fields]),
                    durable=action not in _RUN_ACTIONS)
            except Exception as exc:  # not CancelledError: a BaseException, it propagates
                log.error("audit write failed", extra={"action": action,
                                                       "exception": type(exc).__qualname__})
                raise AuditUnavailable() from None
            return int(first)
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
        # fewer entries wait than query runs are in flight (each of which submits one when it
        # ends), it gives the loop up to `gather_turns` more turns to gather them: under load a
        # commit then serves many runs instead of a few (its fixed cost, SQLite's locks and
        # WAL write, is most of an entry's), and a run never waits more than those few turns.
        pending, waiting = self._entries, self._waiters  # parallel lists: entry, its future
        while pending:
            waiters: list[asyncio.Future[int]] = []
            try:
                turns = self.gather_turns
                while turns and len(pending) < min(self.runs_in_flight, self.max_batch):
                    await asyncio.sleep(0)
                    turns -= 1
                count = min(len(pending), self.max_batch)
                entries, waiters = pending[:count], waiting[:count]
                del pending[:count], waiting[:count]
                # Query-run metadata may skip the flush to disk (atomic all the same, and still
                # written before the caller answers); any other entry makes the batch durable.
                durable = not _RUN_ACTIONS.issuperset(map(_action_of, entries))
                # The whole batch is one store step: read the head, chain, insert, commit.
                first = await self.store.write(functools.partial(_append_sync,
                                                                 entries=entries),
                                               durable=durable)
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
            for position, done in enumerate(waiters, int(first)):
                if not done.done():
                    done.set_result(position)

    async def _append(self, tx: Transaction, entries: list[Fields]) -> list[int]:
        head = await tx.fetch_one(_HEAD_SQL)
        rows = _chain(head, entries)
        for row in rows:
            await tx.execute(_INSERT_SQL, row)
        return [int(row[0]) for row in rows]

    async def close(self) -> None:
        """Let pending entries finish, then refuse new ones."""
        self._closed = True
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    # -- reading -----------------------------------------------------------------------------

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

    async def verify(self, *, chunk: int = 5000) -> Verification:
        """Check the whole chain, reading it in chunks."""
        return await verify_store(self.store, chunk=chunk)


async def verify_store(store: Store, *, chunk: int = 5000) -> Verification:
    """Check the chain of the log in `store`; the first broken link with its position."""

    async def rows() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        last = -1
        while True:
            batch = await store.fetch_all(
                "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (last, chunk))
            out.extend(batch)
            if len(batch) < chunk:
                return out
            last = int(batch[-1]["seq"])

    return verify(await rows())


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
        _DETAILS_JSON(
            details if details and details.keys() <= _RUN_DETAIL_KEYS  # type: ignore[operator]
            else redact(dict(details or {}))),
    )


# The details a query run's entry is made of: written by the runner, none secret-looking, so they
# skip `redact` (any other key takes it).
_RUN_DETAIL_KEYS = frozenset({"datasource", "mode", "truncated", "error", "duration_ms",
                              "row_count"})
_DETAILS_JSON = compact_json.encoder(sort_keys=True)
_json_string = json.encoder.encode_basestring  # a JSON string, as `_DETAILS_JSON` writes one
_INFINITY = float("inf")
_HEAD_SQL = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
_INSERT_SQL = (
    "INSERT INTO audit_log (seq, time, actor, action, target, outcome, client,"
    " request_id, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _chain(head: Any, entries: list[Fields]) -> list[tuple[Any, ...]]:
    """The rows that append `entries` after `head` (the last entry's seq and hash, or None)."""
    seq = int(head["seq"]) if head else 0
    prev = str(head["hash"]) if head else GENESIS
    rows = []
    for fields in entries:
        seq += 1
        hashed = (seq, *fields, prev)  # HASHED_FIELDS, in order: the table's columns
        prev = hash_values(hashed)
        rows.append((*hashed, prev))
    return rows


def _append_sync(conn: Any, entries: list[Fields]) -> int:
    """`_append` for `Store.write`, on the store's connection inside its transaction: the
    entries take the positions from the one returned on, in order."""
    rows = _chain(conn.execute(_HEAD_SQL).fetchone(), entries)
    conn.executemany(_INSERT_SQL, rows)
    return int(rows[0][0])
