"""TOTP two-factor login (RFC 6238 via pyotp) and single-use recovery codes.

Owns enrolment (the otpauth URI and its QR code), code checks with replay refusal and the
`recovery_codes` table. The TOTP secret lives only sealed in the keyring's vault; never logged,
audited or returned after enrolment.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time
from typing import Any, Protocol

import pyotp

from appliance.auth.users import User
from appliance.secret import Secret
from appliance.store import Store, Transaction

ISSUER = "Appliance"
VAULT_KIND = "user"
FIELD_SECRET = "totp"  # noqa: S105 - a field name
FIELD_PENDING = "totp_pending"
RECOVERY_CODES = 10
_STEP = 30
_DRIFT_STEPS = 1  # accept the previous and the next 30-second step too
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_RECOVERY_GROUPS = 4
_RECOVERY_GROUP_LEN = 4


class Vault(Protocol):
    async def put(self, tx: Transaction, kind: str, record_id: str, field: str,
                  value: bytes) -> None: ...

    async def get(self, kind: str, record_id: str, field: str, *,
                  tx: Transaction | None = None) -> Secret[bytes] | None: ...

    async def delete(self, tx: Transaction, kind: str, record_id: str,
                     field: str | None = None) -> None: ...


def new_secret() -> Secret[str]:
    return Secret(pyotp.random_base32(length=32))  # 160 bits


def provisioning(secret: Secret[str], username: str) -> tuple[str, str]:
    """(otpauth:// URI, QR code as SVG) for an authenticator app."""
    uri = pyotp.TOTP(secret.reveal(), interval=_STEP).provisioning_uri(
        name=username, issuer_name=ISSUER)
    buffer = io.BytesIO()
    import segno  # only at enrolment: keeps it out of the idle process

    segno.make(uri, error="m").save(buffer, kind="svg", scale=4, xmldecl=False,
                                   svgns=True, border=2)
    return uri, buffer.getvalue().decode()


def _normalise_code(code: str) -> str:
    return "".join(code.split())


def matching_step(secret: Secret[str], code: str, *, after: int,
                  now: float | None = None) -> int | None:
    """The time step `code` is valid for, if it is within drift and later than `after`."""
    code = _normalise_code(code)
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret.reveal(), interval=_STEP)
    current = int((time.time() if now is None else now) // _STEP)
    found = None
    for step in range(current - _DRIFT_STEPS, current + _DRIFT_STEPS + 1):
        # Compare against every step in the window, in constant time, before deciding.
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()) and step > after:
            found = step
    return found


def looks_like_recovery_code(code: str) -> bool:
    return len(_normalise_code(code).replace("-", "")) == _RECOVERY_GROUPS * _RECOVERY_GROUP_LEN


def new_recovery_codes() -> list[Secret[str]]:
    out = []
    for _ in range(RECOVERY_CODES):
        groups = ["".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LEN))
                  for _ in range(_RECOVERY_GROUPS)]
        out.append(Secret("-".join(groups)))
    return out


def recovery_hash(user_id: str, code: str) -> str:
    normal = _normalise_code(code).replace("-", "").lower()
    return hashlib.sha256(f"appliance-recovery:{user_id}:{normal}".encode()).hexdigest()


class TwoFactor:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def begin(self, vault: Vault, user: User) -> tuple[str, str]:
        """Start (or restart) enrolment: a new pending secret; returns (URI, SVG)."""
        secret = new_secret()
        async with self.store.transaction() as tx:
            await vault.put(tx, VAULT_KIND, user.id, FIELD_PENDING, secret.reveal().encode())
        return provisioning(secret, user.username)

    async def confirm(self, tx: Transaction, vault: Vault, user: User,
                      code: str) -> list[Secret[str]] | None:
        """Enable 2FA if `code` matches the pending secret; returns the new recovery codes."""
        pending = await vault.get(VAULT_KIND, user.id, FIELD_PENDING, tx=tx)
        if pending is None:
            return None
        secret = Secret(pending.reveal().decode())
        step = matching_step(secret, code, after=0)
        if step is None:
            return None
        await vault.put(tx, VAULT_KIND, user.id, FIELD_SECRET, pending.reveal())
        await vault.delete(tx, VAULT_KIND, user.id, FIELD_PENDING)
        await tx.execute("UPDATE users SET totp_enabled = 1, totp_last_step = ?, updated_at = ?"
                         " WHERE id = ?", (step, time.time(), user.id))
        return await self.replace_recovery_codes(tx, user)

    async def replace_recovery_codes(self, tx: Transaction, user: User) -> list[Secret[str]]:
        codes = new_recovery_codes()
        await tx.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user.id,))
        for code in codes:
            await tx.execute("INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                             (user.id, recovery_hash(user.id, code.reveal())))
        return codes

    async def check(self, tx: Transaction, vault: Vault, user: User, code: str) -> str | None:
        """'totp' or 'recovery' when `code` is good (and now spent), else None."""
        code = _normalise_code(code)[:64]
        if looks_like_recovery_code(code):
            used = await tx.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ?"
                " AND used_at IS NULL", (time.time(), user.id, recovery_hash(user.id, code)))
            return "recovery" if used else None
        stored = await vault.get(VAULT_KIND, user.id, FIELD_SECRET, tx=tx)
        row = await tx.fetch_one("SELECT totp_last_step FROM users WHERE id = ?", (user.id,))
        if stored is None or row is None:
            return None
        step = matching_step(Secret(stored.reveal().decode()), code,
                             after=int(row["totp_last_step"]))
        if step is None:
            return None
        await tx.execute("UPDATE users SET totp_last_step = ? WHERE id = ?", (step, user.id))
        return "totp"

    async def reset(self, tx: Transaction, vault: Vault, user_id: str) -> None:
        await vault.delete(tx, VAULT_KIND, user_id, FIELD_SECRET)
        await vault.delete(tx, VAULT_KIND, user_id, FIELD_PENDING)
        await tx.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
        await tx.execute("UPDATE users SET totp_enabled = 0, totp_last_step = 0, updated_at = ?"
                         " WHERE id = ?", (time.time(), user_id))

    async def remaining_recovery_codes(self, user_id: str) -> int:
        row: dict[str, Any] | None = await self.store.fetch_one(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
            (user_id,))
        return int(row["n"]) if row else 0
