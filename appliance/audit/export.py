"""Exports of the audit log: a range of entries as JSON lines that can be checked on their own
(`appliance audit export`, `appliance audit verify --file`).

Owns the export's format: one header line (the range, the MAC of the entry before it, the
chain's kind there, the appliance's version; itself MAC'd under the audit key, so a cut or
edited header is found), then one line per entry exactly as the sinks write it
(`sinks.entry_line`: the stored columns, nothing else), then nothing. Owns how a range is found
(positions, or RFC 3339 times), writing the file whole or not at all (a temporary file linked
into place; an existing file only with `force`), and checking an export. Never exports a column
the store does not hold, never logs an entry's content, and never writes to the store.
"""

from __future__ import annotations

import datetime
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from appliance import __version__
from appliance.audit.chain import Start, Verification, Walk, check_checkpoint
from appliance.audit.keys import MacKeys
from appliance.audit.sinks import ENTRY_FIELDS, entry_line
from appliance.errors import ApplianceError
from appliance.store import Store

RECORD = "audit-export"
FORMAT = 1
CHUNK = 5000
_ENTRY_KEYS = frozenset(ENTRY_FIELDS) - {"mac_version"}  # an unkeyed (legacy) line may omit it
_HEADER_DOMAIN = b"appliance audit export header\n"  # never the input of an entry's MAC

_FIRST = "SELECT seq FROM audit_log ORDER BY seq LIMIT 1"
_HEAD = "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1"
_FIRST_SINCE = "SELECT seq FROM audit_log WHERE seq >= ? AND time >= ? ORDER BY seq LIMIT 1"
_LAST_UNTIL = "SELECT seq FROM audit_log WHERE seq <= ? AND time <= ? ORDER BY seq DESC LIMIT 1"
_ROW = "SELECT seq, hash, mac_version FROM audit_log WHERE seq = ?"
_BOUNDARY = "SELECT seq FROM audit_log WHERE action = 'audit.chain.keyed' ORDER BY seq LIMIT 1"
_NEWEST_CHECKPOINT = ("SELECT * FROM audit_log WHERE action = 'audit.checkpoint'"
                      " ORDER BY seq DESC LIMIT 1")
_RANGE = "SELECT * FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"


class ExportError(ApplianceError):
    """A bad range or output (exit 2): the message names the option and what to do."""

    status = 400
    code = "bad_export"


class NotAnExport(ApplianceError):
    """`verify --file` was given something that is not an export (exit 2): nothing checked."""

    status = 400
    code = "not_an_export"


@dataclass(frozen=True)
class Range:
    """Positions `first`..`last`, both included (empty when last < first)."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return max(0, self.last - self.first + 1)


def parse_time(option: str, text: str) -> str:
    """An RFC 3339 time (`2026-12-03T12:00:00Z`, an offset required) as the log stores times
    (UTC, microseconds: they compare as text); `ExportError` naming `option` otherwise."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"{option}: {text!r} is not an RFC 3339 time "
                          "(e.g. 2026-12-03T12:00:00Z)") from None
    if when.tzinfo is None or "T" not in text.upper():
        raise ExportError(f"{option}: {text!r} needs a date, a time and an offset "
                          "(e.g. 2026-12-03T12:00:00Z)")
    utc = when.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


def check_range(*, since: str | None = None, until: str | None = None,
                from_position: int | None = None, to_position: int | None = None) -> None:
    """Refuse a range that cannot hold an entry, before the store is opened."""
    if since is not None and until is not None and until < since:
        raise ExportError("--until is before --since")
    if from_position is not None and from_position < 1:
        raise ExportError("--from-position: positions start at 1")
    if (from_position is not None and to_position is not None
            and to_position < from_position):
        raise ExportError("--to-position is before --from-position")


async def find_range(store: Store, *, since: str | None = None, until: str | None = None,
                     from_position: int | None = None, to_position: int | None = None) -> Range:
    """The retained entries within the positions and times given (stored-form times, both
    ends included); times are found walking from the range's ends, so only what lies outside
    the range is read to find it."""
    check_range(since=since, until=until, from_position=from_position, to_position=to_position)
    first, head = await store.fetch_one(_FIRST), await store.fetch_one(_HEAD)
    if first is None or head is None:
        return Range(1, 0)
    low = max(int(first["seq"]), from_position or 1)
    high = min(int(head["seq"]), to_position if to_position is not None else int(head["seq"]))
    if since is not None:
        found = await store.fetch_one(_FIRST_SINCE, (low, since))
        low = int(found["seq"]) if found is not None else high + 1
    if until is not None and low <= high:
        found = await store.fetch_one(_LAST_UNTIL, (high, until))
        high = int(found["seq"]) if found is not None else low - 1
    return Range(low, high)


async def write_export(store: Store, keys: MacKeys, where: Range, out: IO[bytes], *,
                       since: str | None = None, until: str | None = None) -> int:
    """Write the header and the entries of `where` to `out`; the number of entries written."""
    header = await _header(store, keys, where, since=since, until=until)
    out.write(orjson.dumps(header) + b"\n")
    written, after = 0, where.first - 1
    while after < where.last:
        rows = await store.fetch_all(_RANGE, (after, where.last, CHUNK))
        if not rows:
            break
        out.write(b"".join(entry_line(row).json + b"\n" for row in rows))
        written += len(rows)
        after = int(rows[-1]["seq"])
    return written


async def _header(store: Store, keys: MacKeys, where: Range, *, since: str | None,
                  until: str | None) -> dict[str, Any]:
    key = keys.mac_key()
    if key is None:
        raise ExportError("the keyring has no audit key to sign the export's header with")
    last = await store.fetch_one(_ROW, (where.last,))
    start = await chain_before(store, keys, where.first)
    fields: dict[str, Any] = {
        "record": RECORD, "format": FORMAT, "appliance": __version__,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
        "from": where.first, "to": where.last, "entries": where.count,
        "since": since, "until": until,
        "prev_hash": start.link, "last_hash": str(last["hash"]) if last is not None else None,
        "legacy": start.legacy, "keyed_from": start.keyed_from, "mac_version": key[0]}
    fields["mac"] = header_mac(fields, key[1])
    return fields


async def chain_before(store: Store, keys: MacKeys, position: int) -> Start:
    """The chain right before `position`: that entry's link (the MAC of the entry before, or
    what the newest checkpoint names when it was pruned) and the chain's kind there."""
    if position <= 1:
        return Start()
    before = position - 1
    row = await store.fetch_one(_ROW, (before,))
    checkpoint = await store.fetch_one(_NEWEST_CHECKPOINT)
    named = check_checkpoint(checkpoint, keys.mac_key_of) if checkpoint is not None else None
    if row is not None:
        link = str(row["hash"])
    elif named is not None and named.position == before:
        link = named.link
    else:
        raise ExportError(f"entry {before}, before the range, was pruned and no checkpoint names "
                          f"it: export from the first retained entry")
    boundary = await store.fetch_one(_BOUNDARY)
    if boundary is not None:
        keyed_from: int | None = int(boundary["seq"])
        legacy = int(boundary["seq"]) - 1
    elif named is not None:
        keyed_from, legacy = named.keyed_from, named.legacy
    else:
        first = await store.fetch_one("SELECT seq, mac_version FROM audit_log ORDER BY seq "
                                      "LIMIT 1")
        keyed = first is not None and first["mac_version"] is not None
        keyed_from, legacy = (1, 0) if keyed else (None, 0)
    if keyed_from is None or keyed_from > before:
        return Start(before, link, legacy=before)
    return Start(before, link, legacy=legacy, keyed_from=keyed_from)


def header_mac(fields: Mapping[str, Any], key: bytes) -> str:
    """The header's MAC: HMAC-SHA256 over its fields (but `mac`) as sorted compact JSON, behind
    a prefix no entry's MAC input has (an entry's is a JSON array)."""
    body = {name: value for name, value in fields.items() if name != "mac"}
    return hmac.digest(key, _HEADER_DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                       "sha256").hex()


# -- the output file ---------------------------------------------------------------------------

class Output:
    """Where an export goes: `-` (stdout), or a file written whole or not at all: a temporary
    file beside it (0600), linked into place at the end; an existing file is refused unless
    `force` (then replaced). A missing or unwritable directory is an `ExportError`."""

    def __init__(self, target: str, *, force: bool = False) -> None:
        self.target = target
        self.force = force
        self._tmp: Path | None = None

    def check(self) -> None:
        """Refuse before any work: an existing file without force, a missing directory."""
        if self.target == "-":
            return
        path = Path(self.target)
        if path.is_dir():
            raise ExportError(f"--out: {path} is a directory")
        if path.exists() and not self.force:
            raise ExportError(f"--out: {path} exists (--force replaces it)")
        if not path.parent.is_dir():
            raise ExportError(f"--out: the directory {path.parent} does not exist")

    def open(self) -> IO[bytes]:
        self.check()
        if self.target == "-":
            return os.fdopen(os.dup(1), "wb")
        path = Path(self.target)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ExportError(f"--out: cannot write in {path.parent}: "
                              f"{exc.strerror or exc}") from None
        self._tmp = tmp
        return os.fdopen(fd, "wb")

    def commit(self, out: IO[bytes]) -> None:
        """Flush, then put the file in place (never half of it)."""
        out.flush()
        if self._tmp is None:
            out.close()
            return
        os.fsync(out.fileno())
        out.close()
        path = Path(self.target)
        try:
            if self.force:
                os.replace(self._tmp, path)
            else:
                os.link(self._tmp, path)  # refuses a file that appeared meanwhile
                os.unlink(self._tmp)
        except FileExistsError:
            raise ExportError(f"--out: {path} exists (--force replaces it)") from None
        finally:
            self.discard()

    def discard(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


# -- checking an export ------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportCheck:
    """An export's verification: the walk's result and the header's range."""

    result: Verification
    first: int
    last: int


def read_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("record") != RECORD:
        raise NotAnExport("not an audit export (its first line is not an export header)")
    if header.get("format") != FORMAT:
        raise NotAnExport(f"an audit export of format {header.get('format')!r}; this version "
                          f"reads format {FORMAT}")
    return header


def verify_export(lines: Iterable[bytes], keys: MacKeys) -> ExportCheck:
    """Check an export: its header's MAC, then every entry's MAC and link from the header's
    `prev_hash` on, then that it ends where its header says (a cut tail is found). The first
    bad position and why, as `audit verify` names them."""
    it = iter(lines)
    header = read_header(next(it, b""))
    try:
        first, last = int(header["from"]), int(header["to"])
        version = int(header["mac_version"])
        keyed_from = header.get("keyed_from")
        start = Start(first - 1, str(header["prev_hash"]), int(header.get("legacy", 0)),
                      int(keyed_from) if keyed_from is not None else None)
    except (KeyError, TypeError, ValueError):
        raise NotAnExport("the export's header lacks its range or link") from None
    key = keys.mac_key_of(version)
    if key is None:
        return ExportCheck(_broken(start, first, f"the header is keyed with audit key v{version}"
                                   ", which the keyring does not hold"), first, last)
    if not hmac.compare_digest(header_mac(header, key), str(header.get("mac", ""))):
        return ExportCheck(_broken(start, first, "the export's header does not match its MAC "
                                   "(edited)"), first, last)
    walk = Walk(keys.mac_key_of, start, mode="export")
    for number, row in enumerate(_rows(it), 2):
        if row is None:
            return ExportCheck(_broken(start, walk.result().through + 1,
                                       f"line {number} is not an entry"), first, last)
        if not walk.feed((row,)):
            break
    result = walk.result()
    if result.ok and result.through != last:
        result = Verification(False, result.entries, result.through + 1,
                              f"entry {result.through + 1} is missing (the export ends at "
                              f"{result.through}; its header says {last})", result.head,
                              result.through, result.legacy, result.keyed_from, start, "export")
    elif result.ok and result.head != header.get("last_hash") and last >= first:
        result = Verification(False, result.entries, last, "the last entry is not the one the "
                              "header names", result.head, result.through, result.legacy,
                              result.keyed_from, start, "export")
    return ExportCheck(result, first, last)


def _broken(start: Start, position: int, reason: str) -> Verification:
    return Verification(False, 0, position, reason, start.link, start.position, start=start,
                        mode="export")


def _rows(lines: Iterator[bytes]) -> Iterator[dict[str, Any] | None]:
    """Each line as a row the walk reads (`position` is `seq`); None for a line that is not
    an entry."""
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            yield None
            continue
        if not isinstance(value, dict) or not _ENTRY_KEYS <= value.keys():
            yield None
            continue
        value["seq"] = value.pop("position")
        value.setdefault("mac_version", None)
        yield value
