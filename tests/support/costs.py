"""The test cost of Argon2id and scrypt (no tests here): what the appliance's two deliberately
slow functions cost when a test is not about their cost.

Owns TEST_TUNING (scrypt n=2^10, for keyrings tests seal), TEST_PASSWORD_HASHER (Argon2id at the
smallest memory argon2 accepts for one lane) and `low_costs`, which makes the appliance's two
defaults (`passwords.default_hasher`, `kdf.default_tuning`) return them while open. The
production parameters are tested where they are the subject (tests/test_keyring.py checks
DEFAULT_TUNING is never weakened, tests/test_users_passwords.py that a login rehashes to the
production profile) and every `appliance` subprocess uses them. Never lowers them for a
subprocess: a state made at the test cost keeps its stored parameters, as one made before a
change of profile would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from argon2 import PasswordHasher, Type

from appliance.auth import passwords
from appliance.keyring import KdfTuning, kdf

TEST_TUNING = KdfTuning.fixed(log2_n=10)
# Argon2id still (same encoding, same verify path), about 1 ms instead of 0.22 s of CPU.
TEST_PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                      hash_len=32, salt_len=16, type=Type.ID)


@contextlib.contextmanager
def cheap_password_hashing() -> Iterator[None]:
    """While open, every `Passwords` made without a hasher in this process (the core's
    AuthService) uses TEST_PASSWORD_HASHER. The core takes no hasher (it takes a KDF `tuning`):
    this swaps the one function it asks, and puts it back."""
    original = passwords.default_hasher
    passwords.default_hasher = lambda: TEST_PASSWORD_HASHER
    try:
        yield
    finally:
        passwords.default_hasher = original


@contextlib.contextmanager
def low_costs() -> Iterator[None]:
    """While open, passwords are hashed with TEST_PASSWORD_HASHER and new scrypt parameters
    come from TEST_TUNING wherever the appliance takes its defaults (a CLI verb run in this
    process: tests/support/cli.py)."""
    original = kdf.default_tuning
    kdf.default_tuning = lambda: TEST_TUNING
    try:
        with cheap_password_hashing():
            yield
    finally:
        kdf.default_tuning = original
