"""Every error the keyring raises: a missing or wrong instance secret, a damaged keyring, a
sealed field that will not open, a bad backup. Messages name records and sources, never values.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class KeyringError(ApplianceError):
    """Root of the keyring's errors."""

    status = 503
    code = "keyring_error"


class InstanceSecretMissing(KeyringError):
    """No source gave an instance secret (or the one found is unusable)."""

    code = "instance_secret_missing"
    exit_code = 2


class WrongInstanceSecret(KeyringError):
    """The instance secret does not open this store's keyring (the verifier does not match)."""

    code = "wrong_instance_secret"
    exit_code = 2


class KeyringCorrupted(KeyringError):
    """The key matched its verifier but a sealed key record does not open: damage, not a key."""

    code = "keyring_corrupted"


class SealedFieldError(KeyringError):
    """One sealed field cannot be opened: tampered, truncated, copied, or an unknown format."""

    status = 500
    code = "sealed_field_unreadable"

    def __init__(self, kind: str, record_id: str, field: str, reason: str) -> None:
        super().__init__(f"sealed field {kind}/{record_id}/{field} cannot be opened: {reason}")
        self.kind = kind
        self.record_id = record_id
        self.field = field
        self.reason = reason


class BoundElsewhere(SealedFieldError):
    """A sealed field was entered for another destination than the one its record names now
    (its binding differs): it is not opened for this one. Enter the secret again."""

    status = 409
    code = "secrets_required"

    def __init__(self, kind: str, record_id: str, field: str) -> None:
        super().__init__(kind, record_id, field, "it was entered for another destination")


class BackupError(ApplianceError):
    """A backup cannot be written, or a file is not a backup this appliance can restore."""

    status = 400
    code = "backup_error"
