"""Where the audit log takes its MAC keys: the keyring's audit keys, as the vault holds them.

Owns the shape of that seam (`MacKeys`) and a fixed set of keys for tools and tests
(`FixedMacKeys`). Never logs, reprs or stores a key.
"""

from __future__ import annotations

import os
from typing import Protocol

KEY_BYTES = 32


class MacKeys(Protocol):
    """The audit keys of an unsealed keyring (`keyring.SecretVault` is one)."""

    def mac_key(self) -> tuple[int, bytes] | None:
        """The key new entries use, as (version, key); None if the keyring has none yet."""

    def mac_key_of(self, version: int) -> bytes | None:
        """Key `version`, whatever its age; None if the keyring does not hold it."""

    async def refresh(self) -> bool:
        """Re-read the keyring if another process changed it; True if it changed."""


class FixedMacKeys:
    """Audit keys held in memory, for a tool or a test that has no keyring: `generate()`."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys or any(len(key) != KEY_BYTES for key in keys.values()):
            raise ValueError(f"audit keys are {KEY_BYTES} bytes, at least one")
        self._keys = dict(keys)

    @classmethod
    def generate(cls, versions: int = 1) -> FixedMacKeys:
        return cls({v: os.urandom(KEY_BYTES) for v in range(1, versions + 1)})

    def __repr__(self) -> str:
        return f"<FixedMacKeys versions={sorted(self._keys)}>"

    def mac_key(self) -> tuple[int, bytes] | None:
        version = max(self._keys)
        return version, self._keys[version]

    def mac_key_of(self, version: int) -> bytes | None:
        return self._keys.get(version)

    async def refresh(self) -> bool:
        return False
