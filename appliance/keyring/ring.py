"""The keyring: versioned 256-bit data keys and which one is active, sealed by the root key.

Owns its plaintext layout and its sealing. Never logs or reprs a key.
"""

from __future__ import annotations

import base64
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

    @classmethod
    def first(cls) -> Keyring:
        return cls(1, 1, {1: DataKey(1, os.urandom(KEY_BYTES), time.time())})

    @property
    def active_key(self) -> DataKey:
        return self.keys[self.active]

    def with_new_key(self) -> Keyring:
        version = max(self.keys) + 1
        keys = dict(self.keys)
        keys[version] = DataKey(version, os.urandom(KEY_BYTES), time.time())
        return Keyring(self.generation + 1, version, keys)

    def without(self, versions: set[int]) -> Keyring:
        if self.active in versions:
            raise ValueError("the active key cannot be retired")
        keys = {v: k for v, k in self.keys.items() if v not in versions}
        return Keyring(self.generation + 1, self.active, keys)

    def seal(self, root_key: bytes) -> bytes:
        plain = json.dumps({
            "active": self.active,
            "keys": [{"version": k.version, "key": base64.b64encode(k.key).decode(),
                      "created_at": k.created_at} for k in self.keys.values()],
        }).encode()
        return wrap(root_key, plain, _aad(self.generation))

    @classmethod
    def open(cls, root_key: bytes, generation: int, blob: bytes) -> Keyring:
        """`FormatError` if the blob does not open or is not a keyring."""
        plain = unwrap(root_key, blob, _aad(generation))
        try:
            data = json.loads(plain)
            keys = {}
            for item in data["keys"]:
                key = base64.b64decode(item["key"], validate=True)
                if len(key) != KEY_BYTES:
                    raise ValueError("bad key length")
                keys[int(item["version"])] = DataKey(int(item["version"]), key,
                                                     float(item["created_at"]))
            active = int(data["active"])
            if active not in keys:
                raise ValueError("active key missing")
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"not a keyring ({type(exc).__name__})") from None
        return cls(generation, active, keys)


def _aad(generation: int) -> bytes:
    return b"appliance/keyring/v1/generation/" + str(generation).encode()
