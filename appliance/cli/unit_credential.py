"""Where the installed systemd unit reads the instance secret from: its `LoadCredential=` (or
`LoadCredentialEncrypted=`) line for `encryption-key`, in the unit and its drop-ins, under a
system root (`/`, or a temporary tree in tests).

Owns finding that file and replacing it (atomically, 0600). Never prints or logs the secret, and
never writes an encrypted credential (only systemd-creds can: it says what to run instead).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from appliance import state_dir
from appliance.keyring.sources import CREDENTIAL_NAME

UNIT_DIR = Path("etc/systemd/system")
UNIT_NAME = "appliance.service"
# systemd's search path for a credential named without a path (systemd 254 and later).
CREDSTORE_DIRS = (Path("etc/credstore"), Path("run/credstore"), Path("usr/lib/credstore"))
CREDSTORE_ENCRYPTED_DIRS = (Path("etc/credstore.encrypted"), Path("run/credstore.encrypted"),
                            Path("usr/lib/credstore.encrypted"))

_LINE = re.compile(r"^\s*(LoadCredential|LoadCredentialEncrypted)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class UnitCredential:
    """The file the unit hands the appliance as its `encryption-key` credential."""

    unit: Path        # the unit file or drop-in that names it (the last one wins)
    path: Path        # the file on this system (under the root)
    encrypted: bool   # LoadCredentialEncrypted=: only `systemd-creds encrypt` can write it

    def reads(self) -> bytes | None:
        """The credential's bytes, or None when it is absent or unreadable."""
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def replace(self, data: bytes) -> None:
        """Write `data` as the credential: a 0600 file, atomically (never half written)."""
        if self.encrypted:
            raise ValueError("an encrypted credential is written by systemd-creds")
        state_dir.write_private(self.path, data)

    def how_to_encrypt(self, source: Path) -> str:
        """The command that writes an encrypted credential from the secret in `source`."""
        return (f"systemd-creds encrypt --name={CREDENTIAL_NAME} {source} {self.path} && "
                "systemctl restart appliance")


def unit_files(root: Path) -> list[Path]:
    """The installed unit and its drop-ins, in the order systemd reads them."""
    unit = root / UNIT_DIR / UNIT_NAME
    if not unit.is_file():
        return []
    drop_ins = root / UNIT_DIR / f"{UNIT_NAME}.d"
    extra = sorted(drop_ins.glob("*.conf")) if drop_ins.is_dir() else []
    return [unit, *extra]


def find(root: Path = Path("/")) -> UnitCredential | None:
    """The unit's `encryption-key` credential file, or None when no unit is installed under
    `root` or it names no such credential."""
    found: UnitCredential | None = None
    for unit in unit_files(root):
        try:
            text = unit.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            name, _, where = match.group(2).partition(":")
            if name != CREDENTIAL_NAME:
                continue
            encrypted = match.group(1) == "LoadCredentialEncrypted"
            found = UnitCredential(unit, _locate(root, where or name, encrypted), encrypted)
    return found


def _locate(root: Path, where: str, encrypted: bool) -> Path:
    """An absolute path under the root; a bare name in the first credstore that holds it."""
    if where.startswith("/"):
        return root / where.lstrip("/")
    stores = CREDSTORE_ENCRYPTED_DIRS if encrypted else CREDSTORE_DIRS
    for folder in stores:
        if (root / folder / where).exists():
            return root / folder / where
    return root / stores[0] / where


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
