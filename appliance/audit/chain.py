"""The hash chain of the audit log: how an entry is encoded and hashed, and how the chain is
checked.

Owns the canonical form of an entry and the one JSON encoder of the audit log (orjson). Never
reads or writes the store itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64

# The fields covered by an entry's hash, in order.
HASHED_FIELDS = ("seq", "time", "actor", "action", "target", "outcome", "client",
                 "request_id", "details", "prev_hash")


def encode_details(details: Mapping[str, Any]) -> str:
    """An entry's details (already redacted: str keys, JSON values) as compact JSON, keys sorted.

    The stored text is what the chain hashes, so entries written with an earlier encoder keep
    verifying whatever this one writes. orjson writes non-finite floats as `null`.
    """
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the hashed fields (including `prev_hash`)."""
    return hash_values([entry[name] for name in HASHED_FIELDS])


def hash_values(values: Sequence[Any]) -> str:
    """`entry_hash` of the values of HASHED_FIELDS, in that order.

    The canonical JSON is a compact array of the values (an int and strings), written as
    `json.dumps(values, ensure_ascii=False, separators=(",", ":"))` writes it: orjson writes the
    same bytes for ints and strings (tests/test_audit_chain.py checks it against the standard
    library and against a hash written by the earlier encoder), so every stored entry verifies.
    """
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    position: int | None = None
    reason: str = ""
    head: str = GENESIS

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "first_broken": None if self.ok else {"position": self.position,
                                                  "reason": self.reason},
        }


def verify(rows: Iterable[Mapping[str, Any]]) -> Verification:
    """Walk rows in `seq` order; report the first position where the chain breaks.

    Positions are 1-based sequence numbers. Detects an edited entry (its hash no longer matches),
    a deleted one (a gap, or a `prev_hash` that does not match) and reordered ones.
    """
    expected_prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        count += 1
        seq = row["seq"]
        if seq != expected_seq:
            return Verification(False, count - 1, expected_seq,
                                f"entry {expected_seq} is missing (next is {seq})", expected_prev)
        if row["prev_hash"] != expected_prev:
            return Verification(False, count - 1, seq,
                                "previous-entry hash does not match: an entry before it was "
                                "changed, removed or moved", expected_prev)
        if entry_hash(row) != row["hash"]:
            return Verification(False, count - 1, seq, "entry content does not match its hash",
                                expected_prev)
        expected_prev = row["hash"]
        expected_seq += 1
    return Verification(True, count, head=expected_prev)
