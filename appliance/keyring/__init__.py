"""The encrypted credential store: instance secret -> (scrypt) unseal key -> root key -> keyring of
versioned data keys -> sealed fields (AES-256-GCM). Never logs, prints or returns a plaintext.

The public face is small: `open_vault(settings, store)` gives a `SecretVault` with `put`, `get`,
`delete` and `fields`; values come out as `Secret[bytes]`.
"""

from appliance.keyring.errors import (
    BackupError,
    BoundElsewhere,
    InstanceSecretMissing,
    KeyringCorrupted,
    KeyringError,
    SealedFieldError,
    WrongInstanceSecret,
)
from appliance.keyring.kdf import DEFAULT_TUNING, KdfTuning
from appliance.keyring.vault import SecretVault, open_vault
from appliance.secret import Secret

__all__ = [
    "DEFAULT_TUNING",
    "BackupError",
    "BoundElsewhere",
    "InstanceSecretMissing",
    "KdfTuning",
    "KeyringCorrupted",
    "KeyringError",
    "SealedFieldError",
    "Secret",
    "SecretVault",
    "WrongInstanceSecret",
    "open_vault",
]
