"""Where the instance secret comes from, in order: a systemd credential, the password + salt
pair from the environment (snapshot in settings), or the 0600 file `init` created. Never logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance import state_dir
from appliance.keyring.errors import InstanceSecretMissing
from appliance.secret import Secret
from appliance.settings import Settings

CREDENTIAL_NAME = "encryption-key"
MIN_SECRET_BYTES = 16

SOURCE_CREDENTIAL = "credential"
SOURCE_PASSWORD = "password"  # noqa: S105 - a source name
SOURCE_FILE = "file"


@dataclass(frozen=True)
class InstanceSecret:
    """The secret the root key is unsealed with, and a description of where it came from."""

    source: str
    where: str
    material: Secret[bytes]


def secret_file(settings: Settings) -> Path:
    return settings.server.state_dir.absolute() / state_dir.INSTANCE_SECRET_FILE


def password_material(password: str, salt: str) -> bytes:
    """The instance secret of the password source: both values, framed so neither can bleed."""
    parts = [b"appliance/password/v1", password.encode(), salt.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def read_secret_file(path: Path, what: str) -> bytes:
    """Raw bytes of a secret file; refuses a short one and one others can read."""
    try:
        data = state_dir.read_private(path)
    except ValueError as exc:
        raise InstanceSecretMissing(f"{what} {exc}") from None
    if len(data) < MIN_SECRET_BYTES:
        raise InstanceSecretMissing(
            f"{what} {path} holds {len(data)} bytes, at least {MIN_SECRET_BYTES} are needed")
    return data


def resolve(settings: Settings) -> InstanceSecret:
    """The first source that is present; `InstanceSecretMissing` says what was looked at."""
    env = settings.environment
    looked: list[str] = []
    if env.credentials_directory is not None:
        path = env.credentials_directory / CREDENTIAL_NAME
        if path.exists():
            return InstanceSecret(SOURCE_CREDENTIAL, f"systemd credential {path}",
                                  Secret(_read_credential(path)))
        looked.append(f"systemd credential {path} (absent)")
    else:
        looked.append("systemd credential (CREDENTIALS_DIRECTORY unset)")
    if env.encryption_password is not None and env.encryption_salt is not None:
        return InstanceSecret(
            SOURCE_PASSWORD, "APPLIANCE_ENCRYPTION_PASSWORD + APPLIANCE_ENCRYPTION_SALT",
            Secret(password_material(env.encryption_password.reveal(),
                                     env.encryption_salt.reveal())))
    looked.append("APPLIANCE_ENCRYPTION_PASSWORD/SALT (unset)")
    path = secret_file(settings)
    if path.exists():
        return InstanceSecret(SOURCE_FILE, f"instance secret file {path}",
                              Secret(read_secret_file(path, "instance secret file")))
    looked.append(f"{path} (absent)")
    raise InstanceSecretMissing(
        "no instance secret: looked at " + ", ".join(looked)
        + "; restore instance.key from your backup, or set the source this store was created with"
    )


def _read_credential(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InstanceSecretMissing(
            f"systemd credential {path} cannot be read: {exc.strerror}") from None
    if len(data) < MIN_SECRET_BYTES:
        raise InstanceSecretMissing(
            f"systemd credential {path} holds {len(data)} bytes, at least "
            f"{MIN_SECRET_BYTES} are needed")
    return data
