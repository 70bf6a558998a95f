"""Anchors of the audit chain's head: written regularly where the store's writer cannot rewrite
them, and compared with the store to detect a cut tail or a rolled-back store.

Owns the anchor schedule (`Anchorer`), the anchor's log line (logger `appliance.audit.anchor`,
message `audit anchor`), the reading of anchors from sink files, the appliance's JSON log and
`journalctl -o json` (`parse_anchors`, `read_anchor_file`, `read_journal_anchors`), and the
comparison (`check_anchors`, pure; `check_store_anchors` reads the positions it needs). Never
writes the store, never logs anything of an entry but its position and MAC, and never raises on
a malformed line (it is counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.audit.sinks import IDENTIFIER, Sinks
from appliance.errors import ApplianceError
from appliance.store import Store

log = logging.getLogger("appliance.audit.anchor")
# An anchor is written whatever `log.level` says: it is evidence, not chatter.
log.setLevel(logging.INFO)

ANCHOR_MESSAGE = "audit anchor"
_HASH = re.compile(r"[0-9a-f]{64}")

Head = Callable[[], Awaitable[tuple[int, str] | None]]
UNIT = "appliance.service"  # whose log lines `--anchors journal` reads besides the sink's


class AnchorSourceError(ApplianceError):
    """The anchors cannot be read at all (a file that is not there or not readable, no
    journal): nothing was compared."""

    code = "anchors_unreadable"
    exit_code = 2


class Anchorer:
    """Writes the chain's head (`head()`: position and MAC, None while the log is empty) as a
    log line and to every sink: every `interval` seconds when it moved, and once at `stop`."""

    def __init__(self, head: Head, sinks: Sinks, *, interval: float, instance: str) -> None:
        self.head = head
        self.sinks = sinks
        self.interval = interval
        self.instance = instance
        self.last: tuple[int, str] | None = None  # the head last anchored
        self._task: asyncio.Task[None] | None = None
        self._head_failed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-anchor")

    async def stop(self) -> None:
        """End the schedule, then anchor the head once more (if it moved)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.anchor()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.anchor()

    async def anchor(self) -> tuple[int, str] | None:
        """Anchor the head now if it moved since the last anchor; the head anchored, or None."""
        try:
            head = await self.head()
        except Exception as exc:  # the store is away: anchor at the next turn
            if not self._head_failed:
                log.warning("audit anchor skipped: the head cannot be read",
                            extra={"exception": type(exc).__qualname__})
            self._head_failed = True
            return None
        self._head_failed = False
        if head is None or head == self.last:
            return None
        position, mac = head
        stamp = _utc_now()
        log.info(ANCHOR_MESSAGE, extra={"position": position, "hash": mac,
                                        "instance": self.instance})
        if self.sinks:
            missed = await asyncio.to_thread(self.sinks.anchor, position, mac, stamp,
                                             self.instance)
            if missed:
                log.error("audit anchor did not reach every sink", extra={"sinks": missed})
        self.last = head
        return head


@dataclass(frozen=True)
class Anchor:
    """A position and the MAC the chain had there, as seen outside the store. `entry` is true
    when it comes from an entry's own line (a sink), which a later `withdrawn` line may cancel."""

    position: int
    hash: str
    time: str = ""
    entry: bool = False


@dataclass(frozen=True)
class Anchors:
    """What `parse_anchors` read: the anchors in order, and how many lines it could not read."""

    anchors: tuple[Anchor, ...]
    malformed: int = 0
    lines: int = 0


def parse_anchors(lines: Iterable[str | bytes]) -> Anchors:
    """Anchors from any mix of: a file sink's JSON lines (entry, anchor and withdrawn records),
    the appliance's JSON log (`audit anchor` lines) and `journalctl -o json` output (the journal
    sink's records, the unit's log lines). Other JSON objects are ignored; a line that is not a
    JSON object, or a record with a bad position or hash, is counted as malformed."""
    found: list[Anchor] = []
    malformed = total = 0
    for raw in lines:
        total += 1
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            malformed += 1
            continue
        if not isinstance(value, dict) or not _read(value, found):
            malformed += 1
    return Anchors(tuple(found), malformed, total)


def _read(value: Mapping[str, Any], found: list[Anchor], depth: int = 0) -> bool:
    """Add what `value` says to `found`; False if it is a record of ours that is malformed."""
    if depth < 2 and ("__CURSOR" in value or "SYSLOG_IDENTIFIER" in value):
        inner = value.get("APPLIANCE_AUDIT_JSON") or value.get("MESSAGE")
        if not isinstance(inner, str):  # another program's line, or a field too big to show
            return "APPLIANCE_AUDIT_JSON" not in value
        try:
            parsed = orjson.loads(inner)
        except orjson.JSONDecodeError:
            return "APPLIANCE_AUDIT_JSON" not in value  # a text line of another program
        return not isinstance(parsed, dict) or _read(parsed, found, depth + 1)
    record = value.get("record")
    if record == "withdrawn":
        first, last = value.get("from"), value.get("to")
        if not (_is_position(first) and _is_position(last)):
            return False
        assert isinstance(first, int) and isinstance(last, int)
        found[:] = [a for a in found if not (a.entry and first <= a.position <= last)]
        return True
    if record == "anchor" or value.get("message") == ANCHOR_MESSAGE:
        return _add(found, value.get("position"), value.get("hash"), value.get("time"), False)
    if "prev_hash" in value and "position" in value:  # an entry's line: an anchor of itself
        return _add(found, value.get("position"), value.get("hash"), value.get("time"), True)
    return True  # another log line


def _add(found: list[Anchor], position: Any, mac: Any, stamp: Any, entry: bool) -> bool:
    if not _is_position(position) or not isinstance(mac, str) or not _HASH.fullmatch(mac):
        return False
    found.append(Anchor(position, mac, stamp if isinstance(stamp, str) else "", entry))
    return True


def _is_position(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class AnchorResult:
    """The anchors against the store: `ok`, or the first bad position and why."""

    ok: bool
    checked: int  # anchors compared with an entry of the store
    pruned: int = 0  # anchors before the first retained entry: skipped
    malformed: int = 0
    position: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "pruned": self.pruned,
                "malformed": self.malformed,
                "first_broken": None if self.ok else {"position": self.position,
                                                      "reason": self.reason}}


def check_anchors(anchors: Anchors, lookup: Callable[[int], str | None], *,
                  head: tuple[int, str] | None, first: int = 1) -> AnchorResult:
    """Compare every anchor with the store: `lookup(position)` is the stored MAC there (None if
    there is no such entry), `head` the store's last entry (None: empty), `first` its first
    retained position (earlier anchors were pruned: skipped and counted). Reports the lowest bad
    position: an entry that differs from its anchor (rolled back or rewritten), an anchored
    entry that is missing, or an anchor beyond the head (the log was cut)."""
    end = head[0] if head else 0
    checked = pruned = 0
    worst: tuple[int, str] | None = None  # (bad position, reason)
    beyond: Anchor | None = None
    for anchor in anchors.anchors:
        if anchor.position < first:
            pruned += 1
            continue
        if anchor.position > end:
            if beyond is None or anchor.position > beyond.position:
                beyond = anchor
            continue
        checked += 1
        stored = lookup(anchor.position)
        if stored == anchor.hash:
            continue
        if stored is None:
            problem = (anchor.position, f"entry {anchor.position} is missing from the store but "
                                        f"was anchored{_at(anchor)}")
        else:
            problem = (anchor.position, f"entry {anchor.position} differs from its anchor"
                                        f"{_at(anchor)}: the store was rolled back or rewritten")
        if worst is None or problem[0] < worst[0]:
            worst = problem
    if beyond is not None and (worst is None or end + 1 < worst[0]):
        worst = (end + 1, f"the log was cut: anchor at {beyond.position}{_at(beyond)} but the "
                          f"log ends at {end}")
    if worst is None:
        return AnchorResult(True, checked, pruned, anchors.malformed)
    return AnchorResult(False, checked, pruned, anchors.malformed, worst[0], worst[1])


def _at(anchor: Anchor) -> str:
    return f" ({anchor.time})" if anchor.time else ""


def _utc_now() -> str:
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{nanoseconds // 1000:06d}+00:00")


def read_anchor_file(path: str) -> Anchors:
    """The anchors of a file (a file sink, the appliance's JSON log, saved `journalctl -o json`
    output). Raises `AnchorSourceError` if it cannot be read."""
    try:
        with open(path, "rb") as file:
            return parse_anchors(file)
    except OSError as exc:
        raise AnchorSourceError(f"cannot read anchors from {path}: "
                                f"{exc.strerror or type(exc).__name__}") from None


def read_journal_anchors(*, namespace: str | None = None, unit: str = UNIT) -> Anchors:
    """The anchors in the systemd journal: the journal sink's records and the unit's `audit
    anchor` log lines (`journalctl -a -o json`). Raises `AnchorSourceError` without a journal."""
    command = ["journalctl", "--all", "--output=json", "--no-pager", "--quiet"]
    if namespace is not None:
        command.append(f"--namespace={namespace}")
    command += [f"SYSLOG_IDENTIFIER={IDENTIFIER}", "+", f"_SYSTEMD_UNIT={unit}"]
    try:
        done = subprocess.run(command, capture_output=True, check=False, timeout=600)
    except FileNotFoundError:
        raise AnchorSourceError("--anchors journal: journalctl is not installed here (no "
                                "systemd journal); give a file of anchors instead") from None
    except subprocess.TimeoutExpired:
        raise AnchorSourceError("--anchors journal: journalctl did not finish in 10 "
                                "minutes") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise AnchorSourceError(f"--anchors journal: journalctl failed: "
                                f"{said[0] if said else f'exit {done.returncode}'}")
    return parse_anchors(done.stdout.splitlines())


async def check_store_anchors(store: Store, anchors: Anchors, *, chunk: int = 500
                              ) -> AnchorResult:
    """`check_anchors` against the audit log of `store`: reads its head, its first retained
    position and the MACs at the anchored positions (in chunks), nothing else."""
    head_row = await store.fetch_one("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    first_row = await store.fetch_one("SELECT seq FROM audit_log ORDER BY seq LIMIT 1")
    head = (int(head_row["seq"]), str(head_row["hash"])) if head_row else None
    first = int(first_row["seq"]) if first_row else 1
    end = head[0] if head else 0
    wanted = sorted({a.position for a in anchors.anchors if first <= a.position <= end})
    stored: dict[int, str] = {}
    for start in range(0, len(wanted), chunk):
        part = wanted[start:start + chunk]
        rows = await store.fetch_all(
            "SELECT seq, hash FROM audit_log WHERE seq IN "
            f"({', '.join('?' * len(part))})", tuple(part))
        stored.update((int(row["seq"]), str(row["hash"])) for row in rows)
    return check_anchors(anchors, stored.get, head=head, first=first)
