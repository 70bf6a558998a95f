"""Password hashing with Argon2id: policy (length), hashing, verification and rehash checks.

Owns `users.password_hash` values. Never logs or returns a password; hashing runs off the loop.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from appliance.errors import Unprocessable
from appliance.secret import Secret

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MIN_LENGTH = 12
MAX_LENGTH = 1024


@functools.cache
def default_hasher() -> PasswordHasher:
    """RFC 9106's second recommended option (64 MiB, t=3, p=4): argon2-cffi's default profile.
    argon2 is imported at the first password operation, not when the server starts."""
    from argon2 import PasswordHasher, Type

    return PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, hash_len=32,
                          salt_len=16, type=Type.ID)


class Passwords:
    """Hash and check passwords with one set of Argon2id parameters."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher
        self._dummy: str | None = None

    @property
    def hasher(self) -> PasswordHasher:
        if self._hasher is None:
            self._hasher = default_hasher()
        return self._hasher

    @staticmethod
    def check_policy(password: Secret[str], *, field: str = "password") -> None:
        """Refuse a password too short or too long; `field`: the request key it came in."""
        value = password.reveal()
        if len(value) < MIN_LENGTH:
            raise Unprocessable(f"a password must have at least {MIN_LENGTH} characters",
                                code="weak_password", field=field)
        if len(value) > MAX_LENGTH:
            raise Unprocessable(f"a password must have at most {MAX_LENGTH} characters",
                                code="weak_password", field=field)

    async def hash(self, password: Secret[str]) -> str:
        self.check_policy(password)
        return await asyncio.to_thread(self.hasher.hash, password.reveal())

    async def verify(self, stored: str | None, password: Secret[str]) -> bool:
        """True if `password` matches `stored`. With no stored hash, spend the same time anyway."""
        if stored is None:
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(self.hasher.hash, "not-a-real-password")
            stored = self._dummy
            await asyncio.to_thread(self._verify, stored, password.reveal())
            return False
        return await asyncio.to_thread(self._verify, stored, password.reveal())

    def _verify(self, stored: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return self.hasher.verify(stored, password[:MAX_LENGTH])
        except (VerificationError, InvalidHashError):  # VerifyMismatchError is one
            return False

    def needs_rehash(self, stored: str) -> bool:
        from argon2.exceptions import InvalidHashError

        try:
            return self.hasher.check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return True
