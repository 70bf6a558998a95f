"""The chain of the audit log: how an entry is encoded and linked (an HMAC under an audit key
from the keyring; plain SHA-256 before the upgrade), and how a run of entries is checked.

Owns the canonical form of an entry, the one JSON encoder of the audit log (orjson), the marker
actions the chain itself writes, and the rules of a walk (where it may start, what breaks it).
Never reads or writes the store, and never logs: a key reaches it only as an argument.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64

# The fields covered by an entry's link, in order (a keyed entry's MAC adds its key version).
HASHED_FIELDS = ("seq", "time", "actor", "action", "target", "outcome", "client",
                 "request_id", "details", "prev_hash")

# Entries the chain writes about itself.
KEYED_ACTION = "audit.chain.keyed"  # the first keyed entry after legacy ones (the boundary)
VERIFIED_ACTION = "audit.verified"  # a verification's result: through which position, its MAC
CHECKPOINT_ACTION = "audit.checkpoint"  # the first entry kept after pruning (retention)

KeyLookup = Callable[[int], bytes | None]  # an audit key by version (None: not held)


def encode_details(details: Mapping[str, Any]) -> str:
    """An entry's details (already redacted: str keys, JSON values) as compact JSON, keys sorted.

    The stored text is what the chain hashes, so entries written with an earlier encoder keep
    verifying whatever this one writes. orjson writes non-finite floats as `null`.
    """
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """A legacy entry's link: SHA-256 over the canonical JSON of the hashed fields."""
    return hash_values([entry[name] for name in HASHED_FIELDS])


def hash_values(values: Sequence[Any]) -> str:
    """`entry_hash` of the values of HASHED_FIELDS, in that order (the legacy, unkeyed link).

    The canonical JSON is a compact array of the values (an int and strings), written as
    `json.dumps(values, ensure_ascii=False, separators=(",", ":"))` writes it: orjson writes the
    same bytes for ints and strings (tests/test_audit_chain.py checks it against the standard
    library and against a hash written by the earlier encoder), so every stored entry verifies.
    """
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


def mac_values(values: Sequence[Any], version: int, key: bytes) -> str:
    """A keyed entry's link: HMAC-SHA256 under audit key `version` over the canonical array of
    HASHED_FIELDS' values followed by `version` (so an entry cannot claim another key), hex.
    `hmac.digest` is OpenSSL's one-shot HMAC (bench: about 1 µs for an entry)."""
    return hmac.digest(key, orjson.dumps([*values, version]), "sha256").hex()


def entry_mac(entry: Mapping[str, Any], key: bytes) -> str:
    return mac_values([entry[name] for name in HASHED_FIELDS], int(entry["mac_version"]), key)


class MacState:
    """HMAC-SHA256 (RFC 2104) under one key with its inner and outer states computed once: each
    MAC then costs two hash copies (bench/audit_chain.py: about 2.5x faster than `hmac.digest`,
    which hashes both key blocks again for every entry; `hmac.new(...).copy()` is slower still
    on 3.11, its copy being Python). Gives exactly `hmac.digest(key, data, "sha256")`
    (tests/test_audit_chain.py checks it). Holds the key's derived states: never repr'd."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:  # a longer key would be hashed first; audit keys are 32 B
            raise ValueError("an audit key is at most 64 bytes")
        block = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __repr__(self) -> str:
        return "<MacState>"

    def mac(self, values: Sequence[Any]) -> str:
        """`mac_values(values[:-1], values[-1], key)`: the MAC over HASHED_FIELDS' values
        followed by the key version, hex."""
        inner = self._inner.copy()
        inner.update(orjson.dumps(values))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


_SHA256_BLOCK = 64
# A row's values as the walk's hot loop reads them: the MAC's input (HASHED_FIELDS, then the key
# version: `values[:11]`), then the stored link. A store reads them in this order as tuples.
WALK_COLUMNS = (*HASHED_FIELDS, "mac_version", "hash")
_MAC_INPUT = operator.itemgetter(*WALK_COLUMNS)


@dataclass(frozen=True)
class Start:
    """Where a walk begins: after `position`, whose link is `link`, with what the chain was
    there (legacy entries before it, keyed from which position). The beginning of the log by
    default; else what a trusted keyed entry says (an `audit.verified` marker, a checkpoint)."""

    position: int = 0
    link: str = GENESIS
    legacy: int = 0
    keyed_from: int | None = None
    marker: int | None = None  # the position of the entry that said so
    marker_time: str = ""


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int  # entries checked and intact (before the first broken one)
    position: int | None = None  # the first broken position
    reason: str = ""
    head: str = GENESIS  # the last intact link
    through: int = 0  # the last intact position
    legacy: int = 0  # legacy (plain SHA-256) entries in the chain, as far as known
    keyed_from: int | None = None  # the first keyed position, as far as known
    start: Start = Start()  # where the walk began
    mode: str = "full"  # or "incremental" (from start.marker)
    rows_read: int = 0  # rows fetched from the store (the markers included)

    def describe_chain(self) -> str:
        """What kind of chain the walk saw: "12 legacy entries, then keyed from position 13"."""
        if self.keyed_from is None:
            return f"{self.legacy} legacy entries, not keyed"
        if self.legacy == 0:
            return f"keyed from position {self.keyed_from}"
        return f"{self.legacy} legacy entries, then keyed from position {self.keyed_from}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "through": self.through,
            "mode": self.mode,
            "start": {"position": self.start.position, "marker": self.start.marker,
                      "verified_at": self.start.marker_time or None},
            "chain": {"legacy": self.legacy, "keyed_from": self.keyed_from,
                      "summary": self.describe_chain()},
            "first_broken": None if self.ok else {"position": self.position,
                                                  "reason": self.reason},
        }


class Walk:
    """One walk along the chain in `seq` order, fed in chunks (`feed`); `result()` at the end.

    Positions are 1-based sequence numbers. Finds an edited entry (its link no longer matches,
    also when every later link was recomputed without the key), a deleted one (a gap, or a
    `prev_hash` that does not match), reordered ones, a keyed entry under a key version the
    keyring does not hold, and a legacy (unkeyed) entry after the chain became keyed. The first
    row may be a checkpoint (retention): a keyed entry naming the position and link before it.
    """

    def __init__(self, keys: KeyLookup, start: Start = Start(), mode: str = "full") -> None:
        self._keys = keys
        self._start = start
        self._mode = mode
        self._seq = start.position
        self._prev = start.link
        self._legacy = start.legacy
        self._keyed_from = start.keyed_from
        self._count = 0
        self._broken: tuple[int, str] | None = None
        self._states: dict[Any, MacState] = {}  # by key version, made at first use
        self.rows_read = 0

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def feed(self, rows: Iterable[Mapping[str, Any] | tuple[Any, ...]]) -> bool:
        """Check `rows` (the next ones in order): mappings of the columns, or tuples of
        `WALK_COLUMNS` (a store's `fetch_tuples`: no dict made per row). False once the chain
        is broken.

        The hot loop: an entry that is plainly good (the next position, linked to the previous
        one, keyed under a key already in hand while the chain is keyed, its MAC holding) is
        taken here, its MAC from the key's precomputed state (`MacState`). Anything else, good
        or bad, is decided by `_step`, the one statement of the rules, which also names the
        reason of a break."""
        values_of, states, keys = _MAC_INPUT, self._states, self._keys
        for row in rows:
            self.rows_read += 1
            if self._broken is not None:
                return False
            values = row if isinstance(row, tuple) else values_of(row)  # WALK_COLUMNS
            version = values[10]
            if (version is not None and self._keyed_from is not None
                    and values[0] == self._seq + 1 and values[9] == self._prev):
                state = states.get(version)
                if state is None and (key := keys(version)) is not None:
                    state = states[version] = MacState(key)
                if state is not None and hmac.compare_digest(state.mac(values[:11]),
                                                             values[11]):
                    self._seq, self._prev = values[0], values[11]
                    self._count += 1
                    continue
            if self._step(dict(zip(WALK_COLUMNS, row, strict=True)) if isinstance(row, tuple)
                          else row) is not None:
                return False
        return self._broken is None

    def _fail(self, position: int, reason: str) -> str:
        self._broken = (position, reason)
        return reason

    def _step(self, row: Mapping[str, Any]) -> str | None:
        seq = int(row["seq"])
        if self._count == 0 and self._seq == 0 and seq > 1 and _is_checkpoint(row, self._keys):
            details = details_of(row)
            self._seq, self._prev = seq - 1, str(row["prev_hash"])
            self._legacy = int(details.get("legacy", 0))
            keyed_from = details.get("keyed_from")
            self._keyed_from = int(keyed_from) if keyed_from is not None else seq
        expected = self._seq + 1
        if seq != expected:
            return self._fail(expected, f"entry {expected} is missing (next is {seq})")
        if row["prev_hash"] != self._prev:
            return self._fail(seq, "previous-entry link does not match: an entry before it was "
                                   "changed, removed or moved")
        version = row.get("mac_version")
        if version is None:
            if self._keyed_from is not None:
                return self._fail(seq, f"an unkeyed entry after the chain became keyed at "
                                       f"position {self._keyed_from} (written without the "
                                       "audit key: forged or by an old version)")
            if entry_hash(row) != row["hash"]:
                return self._fail(seq, "entry content does not match its hash")
            self._legacy += 1
        else:
            key = self._keys(int(version))
            if key is None:
                return self._fail(seq, f"keyed with audit key v{int(version)}, which the keyring "
                                       "does not hold")
            if not hmac.compare_digest(entry_mac(row, key), str(row["hash"])):
                return self._fail(seq, "entry content does not match its MAC")
            if self._keyed_from is None:
                if seq != 1 and not _is_boundary(row, self._legacy):
                    return self._fail(seq, "a keyed entry where the chain has no upgrade "
                                           "boundary (audit.chain.keyed) before it")
                self._keyed_from = seq
        self._seq = seq
        self._prev = str(row["hash"])
        self._count += 1
        return None

    def result(self) -> Verification:
        position, reason = self._broken if self._broken is not None else (None, "")
        return Verification(self._broken is None, self._count, position, reason, self._prev,
                            through=self._seq, legacy=self._legacy, keyed_from=self._keyed_from,
                            start=self._start, mode=self._mode, rows_read=self.rows_read)


def verify(rows: Iterable[Mapping[str, Any]], keys: KeyLookup = lambda version: None,
           start: Start = Start()) -> Verification:
    """Walk `rows` (in `seq` order) from `start`; the first position where the chain breaks."""
    walk = Walk(keys, start)
    walk.feed(rows)
    return walk.result()


def authentic(row: Mapping[str, Any], keys: KeyLookup) -> bool:
    """Whether `row` is a keyed entry whose MAC holds (written by a holder of the key)."""
    if row.get("mac_version") is None:
        return False
    key = keys(int(row["mac_version"]))
    return key is not None and hmac.compare_digest(entry_mac(row, key), str(row["hash"]))


def check_marker(row: Mapping[str, Any], keys: KeyLookup) -> Start | None:
    """The start an `audit.verified` marker (ok) vouches for, if it is keyed and its MAC holds:
    its details' `through` position and `mac`, and the chain's kind there. None otherwise."""
    if row["action"] != VERIFIED_ACTION or row["outcome"] != "ok" or not authentic(row, keys):
        return None
    details = details_of(row)
    try:
        keyed_from = details.get("keyed_from")
        return Start(int(details["through"]), str(details["mac"]), int(details.get("legacy", 0)),
                     int(keyed_from) if keyed_from is not None else None, int(row["seq"]),
                     str(row["time"]))
    except (KeyError, TypeError, ValueError):
        return None


def check_checkpoint(row: Mapping[str, Any], keys: KeyLookup) -> Start | None:
    """The start a checkpoint (retention) vouches for, if it is keyed and its MAC holds: right
    after the last pruned position its details name, whose MAC they give, with the chain's kind
    there. The checkpoint itself comes later in the chain (it is written before the entries it
    covers are deleted), so a walk from this start also checks its own link. None otherwise."""
    if row["action"] != CHECKPOINT_ACTION or not authentic(row, keys):
        return None
    details = details_of(row)
    try:
        position, keyed_from = int(details["position"]), details.get("keyed_from")
        if not 0 < position < int(row["seq"]):
            return None
        return Start(position, str(details["mac"]), int(details.get("legacy", 0)),
                     int(keyed_from) if keyed_from is not None else None, int(row["seq"]),
                     str(row["time"]))
    except (KeyError, TypeError, ValueError):
        return None


def details_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's details decoded; {} when they are not a JSON object."""
    try:
        value = json.loads(row["details"])
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_boundary(row: Mapping[str, Any], legacy: int) -> bool:
    """The upgrade boundary: the first keyed entry, naming the legacy head right before it."""
    if row["action"] != KEYED_ACTION:
        return False
    head = details_of(row).get("legacy_head") or {}
    return (isinstance(head, dict) and head.get("position") == int(row["seq"]) - 1 == legacy
            and head.get("hash") == row["prev_hash"])


def _is_checkpoint(row: Mapping[str, Any], keys: KeyLookup) -> bool:
    """A chain's first row after pruning: a keyed checkpoint whose MAC holds and whose details
    name the last pruned entry (its position and link, which are its own `prev_hash`)."""
    if row["action"] != CHECKPOINT_ACTION or not authentic(row, keys):
        return False
    details = details_of(row)
    return (details.get("position") == int(row["seq"]) - 1
            and details.get("mac") == row["prev_hash"])
