"""Verifying the audit chain in the store: all of it, or from the newest `audit.verified`
marker; the background verifier of a serving process; the chain's status.

Owns how a walk reads the store (by position, in chunks), the marker lookups (migration 12's
partial indexes: the actions are literals in the SQL so both planners use them), the lease
`audit.verify` (one verifier across instances) and what the verifier reports (a log line, two
metrics, its marker). Never writes anything but the verifier's marker (through
`AuditLog.record`); never logs a key or an entry's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance import metrics
from appliance.audit.chain import (
    VERIFIED_ACTION,
    WALK_COLUMNS,
    Start,
    Verification,
    Walk,
    authentic,
    check_checkpoint,
    check_marker,
    details_of,
)
from appliance.audit.keys import MacKeys
from appliance.store import Store
from appliance.store.lease import Lease, instance_id

if TYPE_CHECKING:
    from appliance.audit.log import AuditLog

log = logging.getLogger("appliance.audit.verify")

LEASE_NAME = "audit.verify"
_NEWEST_GOOD_MARKER = ("SELECT * FROM audit_log WHERE action = 'audit.verified' AND outcome = 'ok'"
                       " ORDER BY seq DESC LIMIT 1")
_NEWEST_MARKER = ("SELECT * FROM audit_log WHERE action = 'audit.verified'"
                  " ORDER BY seq DESC LIMIT 1")
_BOUNDARY = ("SELECT seq FROM audit_log WHERE action = 'audit.chain.keyed'"
             " ORDER BY seq LIMIT 1")
_NEWEST_CHECKPOINT = ("SELECT * FROM audit_log WHERE action = 'audit.checkpoint'"
                      " ORDER BY seq DESC LIMIT 1")
_HEAD = "SELECT seq, time FROM audit_log ORDER BY seq DESC LIMIT 1"
_FIRST = "SELECT seq, mac_version FROM audit_log ORDER BY seq LIMIT 1"
# The walk reads only its columns, as tuples (`chain.WALK_COLUMNS`), in large keyset chunks.
_WALK = (f"SELECT {', '.join(WALK_COLUMNS)} FROM audit_log WHERE seq > ? ORDER BY seq"
         " LIMIT ?")
_VERSION = WALK_COLUMNS.index("mac_version")


async def verify_store(store: Store, keys: MacKeys, *, full: bool = True,
                       chunk: int = 20000) -> Verification:
    """Check the chain in `store`: from its first entry (`full`), or from the newest good
    `audit.verified` marker (trusted: it is keyed; none yet means from the first entry). The
    first broken link with its position; `rows_read` counts every row fetched."""
    start, mode, read = Start(), "full" if full else "incremental", 0
    if not full:
        marker = await store.fetch_one(_NEWEST_GOOD_MARKER)
        if marker is not None:
            read = 1
            await _know_versions(keys, [marker])
            found = check_marker(marker, keys.mac_key_of)
            if found is None:
                return Verification(False, 0, int(marker["seq"]),
                                    "the newest audit.verified marker does not match its MAC "
                                    "(forged or edited): run a full verification",
                                    mode="incremental", rows_read=read)
            start = found
    if start.marker is None:
        start, fetched = await retained_start(store, keys)
        read += fetched
    walk = Walk(keys.mac_key_of, start, mode)
    walk.rows_read = read
    # The next chunk is read (the store's reader thread, or PostgreSQL) while this one is
    # checked on the loop: about a third less time for a full walk (bench/audit_chain.py).
    reading = asyncio.ensure_future(store.fetch_tuples(_WALK, (start.position, chunk)))
    try:
        while True:
            batch = await reading
            if len(batch) == chunk:
                reading = asyncio.ensure_future(
                    store.fetch_tuples(_WALK, (int(batch[-1][0]), chunk)))
            await _know_versions(keys, batch)
            if not walk.feed(batch) or len(batch) < chunk:
                return walk.result()
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading


async def retained_start(store: Store, keys: MacKeys) -> tuple[Start, int]:
    """Where a walk of the whole retained chain starts, and the rows read to know it: position 1
    when nothing was pruned; else after the position the newest checkpoint names (retention),
    if its MAC holds. A checkpoint that does not hold, or none, leaves the beginning: the walk
    then reports the pruned entries as missing from position 1."""
    first = await store.fetch_one(_FIRST)
    if first is None or int(first["seq"]) == 1:
        return Start(), 1
    checkpoint = await store.fetch_one(_NEWEST_CHECKPOINT)
    if checkpoint is None:
        return Start(), 2
    await _know_versions(keys, [checkpoint])
    return check_checkpoint(checkpoint, keys.mac_key_of) or Start(), 2


async def _know_versions(keys: MacKeys,
                         rows: Sequence[Mapping[str, Any] | tuple[Any, ...]]) -> None:
    """Re-read the keyring once if a row (a mapping, or a tuple of `WALK_COLUMNS`) names an
    audit key it does not hold yet (another instance rotated a moment ago)."""
    versions = {int(version) for row in rows
                if (version := row[_VERSION] if isinstance(row, tuple) else row["mac_version"])
                is not None}
    if any(keys.mac_key_of(version) is None for version in versions):
        await keys.refresh()


async def chain_status(store: Store, keys: MacKeys | None) -> dict[str, Any]:
    """The head, the newest verification marker, the chain's kind and the audit key in use:
    five indexed lookups (six after pruning), whatever the log's length."""
    head = await store.fetch_one(_HEAD)
    newest = await store.fetch_one(_NEWEST_MARKER)
    boundary = await store.fetch_one(_BOUNDARY)
    first = await store.fetch_one(_FIRST)
    legacy, keyed_from = 0, None
    if boundary is not None:
        keyed_from = int(boundary["seq"])
        legacy = keyed_from - 1
    elif first is not None and first["mac_version"] is not None:
        keyed_from = int(first["seq"])
        if keyed_from > 1:  # pruned (retention): what the newest checkpoint says of the chain
            checkpoint = await store.fetch_one(_NEWEST_CHECKPOINT)
            said = details_of(checkpoint) if checkpoint is not None else {}
            if isinstance(said.get("keyed_from"), int):
                keyed_from, legacy = said["keyed_from"], int(said.get("legacy") or 0)
    elif first is not None and head is not None:
        legacy = int(head["seq"]) - int(first["seq"]) + 1
    kind = Verification(True, 0, legacy=legacy, keyed_from=keyed_from)
    verified = None
    if newest is not None:
        details = details_of(newest)
        verified = {"position": details.get("through"), "marker": int(newest["seq"]),
                    "time": str(newest["time"]), "ok": newest["outcome"] == "ok",
                    "broken_at": details.get("broken_at")}
    key = keys.mac_key() if keys is not None else None
    return {
        "head": None if head is None else {"position": int(head["seq"]),
                                           "time": str(head["time"])},
        "verified": verified,
        "chain": {"legacy": legacy, "keyed_from": keyed_from,
                  "summary": kind.describe_chain()},
        "audit_key_version": key[0] if key is not None else None,
    }


class BackgroundVerifier:
    """Every `interval` seconds, on one instance at a time (the lease `audit.verify`): verify
    the entries written since the newest good marker and record the result as a marker
    (`audit.verified`: through which position, its MAC, entries checked, ok). Writes nothing
    when nothing but the previous marker is new, nor the same failure twice."""

    def __init__(self, audit: AuditLog, *, interval: float) -> None:
        self.audit = audit
        self.interval = interval
        self._lease = Lease(audit.store, LEASE_NAME, instance_id(), max(30.0, 3 * interval))
        self.last: Verification | None = None

    async def run_once(self) -> Verification | None:
        """One round: the verification, or None when there was nothing to do (or another
        instance holds the lease)."""
        holding = await self._lease.acquire()
        if holding.holder != self._lease.holder:
            return None
        store = self.audit.store
        head = await store.fetch_one(_HEAD)
        if head is None:
            return None
        keys = await self.audit.mac_keys()
        newest = await store.fetch_one(_NEWEST_MARKER)
        if (newest is not None and int(newest["seq"]) == int(head["seq"])
                and authentic(newest, keys.mac_key_of)):
            return None  # idle: nothing but our own previous marker is new (a copy would not do)
        result = await verify_store(store, keys, full=False)
        self.last = result
        details: dict[str, Any] = {
            "through": result.through, "mac": result.head, "entries": result.entries,
            "from": result.start.position, "ok": result.ok, "legacy": result.legacy,
            "keyed_from": result.keyed_from}
        if result.ok:
            metrics.audit_verified(result.through)
        else:
            metrics.audit_verify_failed()
            log.error("audit chain broken", extra={"position": result.position,
                                                   "reason": result.reason})
            if (newest is not None and newest["outcome"] != "ok"
                    and details_of(newest).get("broken_at") == result.position):
                return result  # already recorded
            details |= {"broken_at": result.position, "reason": result.reason}
        await self.audit.record(action=VERIFIED_ACTION, outcome="ok" if result.ok else "failed",
                                details=details)
        return result

    async def release(self) -> None:
        """Give the lease up (at shutdown: another instance takes the work over at once)."""
        await self._lease.release()

    async def run_forever(self) -> None:
        """`run_once` every `interval` seconds until cancelled (then the lease is released); a
        failed round is logged (no content) and retried at the next."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.run_once()
                except Exception as exc:  # the store away, the keyring unreadable: next round
                    log.warning("audit verification round failed",
                                extra={"exception": type(exc).__qualname__})
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())
