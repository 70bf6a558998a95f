"""The keyring: versioned 256-bit data keys and which one is active, and the audit log's MAC
keys (`audit`, newest in use), sealed by the root key.

Owns its plaintext layout and its sealing. Never logs or reprs a key; never retires an audit key
(old entries verify with the key of their time).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from dataclasses import dataclass, field

from appliance.keyring.sealing import KEY_BYTES, FormatError, unwrap, wrap


@dataclass(frozen=True)
class DataKey:
    version: int
    key: bytes = field(repr=False)
    created_at: float


@dataclass(frozen=True)
class Keyring:
    """One generation of the keyring. A new generation is written on every change."""

    generation: int
    active: int
    keys: dict[int, DataKey] = field(repr=False)
    # The audit log's MAC keys by version (none in a keyring written before they existed).
    audit: dict[int, DataKey] = field(default_factory=dict, repr=False)

    @classmethod
    def first(cls) -> Keyring:
        now = time.time()
        return cls(1, 1, {1: DataKey(1, os.urandom(KEY_BYTES), now)},
                   {1: DataKey(1, os.urandom(KEY_BYTES), now)})

    @property
    def active_key(self) -> DataKey:
        return self.keys[self.active]

    @functools.cached_property
    def audit_key(self) -> DataKey | None:
        """The audit MAC key new entries use (the newest), or None before the first. Computed
        once per generation (read on the audit log's hot path)."""
        return self.audit[max(self.audit)] if self.audit else None

    def with_new_key(self) -> Keyring:
        """A new active data key, and a new audit key beside it (the audit keys rotate with the
        data keys)."""
        version = max(self.keys) + 1
        keys = dict(self.keys)
        keys[version] = DataKey(version, os.urandom(KEY_BYTES), time.time())
        return Keyring(self.generation + 1, version, keys, _with_one_more(self.audit))

    def with_audit_key(self) -> Keyring:
        """The same data keys and one more audit key (an upgraded keyring's first)."""
        return Keyring(self.generation + 1, self.active, dict(self.keys),
                       _with_one_more(self.audit))

    def without(self, versions: set[int]) -> Keyring:
        """Data keys `versions` retired; every audit key is kept."""
        if self.active in versions:
            raise ValueError("the active key cannot be retired")
        keys = {v: k for v, k in self.keys.items() if v not in versions}
        return Keyring(self.generation + 1, self.active, keys, dict(self.audit))

    def seal(self, root_key: bytes) -> bytes:
        plain = json.dumps({
            "active": self.active,
            "keys": [_key_item(k) for k in self.keys.values()],
            "audit": [_key_item(k) for k in self.audit.values()],
        }).encode()
        return wrap(root_key, plain, _aad(self.generation))

    @classmethod
    def open(cls, root_key: bytes, generation: int, blob: bytes) -> Keyring:
        """`FormatError` if the blob does not open or is not a keyring."""
        plain = unwrap(root_key, blob, _aad(generation))
        try:
            data = json.loads(plain)
            keys = _read_keys(data["keys"])
            audit = _read_keys(data.get("audit", []))  # none before audit keys existed
            active = int(data["active"])
            if active not in keys:
                raise ValueError("active key missing")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"not a keyring ({type(exc).__name__})") from None
        return cls(generation, active, keys, audit)


def _with_one_more(keys: dict[int, DataKey]) -> dict[int, DataKey]:
    out = dict(keys)
    version = max(keys, default=0) + 1
    out[version] = DataKey(version, os.urandom(KEY_BYTES), time.time())
    return out


def _key_item(key: DataKey) -> dict[str, object]:
    return {"version": key.version, "key": base64.b64encode(key.key).decode(),
            "created_at": key.created_at}


def _read_keys(items: list[dict[str, object]]) -> dict[int, DataKey]:
    keys = {}
    for item in items:
        key = base64.b64decode(str(item["key"]), validate=True)
        if len(key) != KEY_BYTES:
            raise ValueError("bad key length")
        version = int(str(item["version"]))
        keys[version] = DataKey(version, key, float(str(item["created_at"])))
    return keys


def _aad(generation: int) -> bytes:
    return b"appliance/keyring/v1/generation/" + str(generation).encode()
