"""Where ACME state lives: account URLs, certificate chains and the renewal schedule in the store;
the account key and certificate keys sealed by the keyring (`SecretVault`).

Owns the `acme_accounts`, `acme_certificates` and `acme_challenges` tables and the sealed fields
of kinds `acme_account` and `acme_certificate`. Never writes a private key anywhere but the vault
(`acme_challenges` holds HTTP-01 answers: a token and the account key's public thumbprint).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.keyring import SecretVault
from appliance.secret import Secret
from appliance.store import Store, Transaction

ACCOUNT_KIND = "acme_account"
CERT_KIND = "acme_certificate"
KEY_FIELD = "private_key"

AuditProvider = Callable[[], Any]  # returns an AuditLog or None


def names_key(names: tuple[str, ...]) -> str:
    return ",".join(sorted(set(names)))


def _ts(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(float(value), dt.UTC) if value is not None else None


def _epoch(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class CertRecord:
    """One row of `acme_certificates`: what we hold for a set of names and its schedule."""

    names: str
    directory: str
    chain_pem: bytes | None
    not_after: dt.datetime | None
    renew_at: dt.datetime | None
    ari_next_check: dt.datetime | None
    failures: int
    next_attempt: dt.datetime | None
    last_attempt: dt.datetime | None
    last_error: str | None
    last_success: dt.datetime | None
    orders: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CertRecord:
        chain = row["chain_pem"]
        return cls(
            names=str(row["names"]), directory=str(row["directory"]),
            chain_pem=chain.encode() if chain else None,
            not_after=_ts(row["not_after"]), renew_at=_ts(row["renew_at"]),
            ari_next_check=_ts(row["ari_next_check"]), failures=int(row["failures"]),
            next_attempt=_ts(row["next_attempt"]), last_attempt=_ts(row["last_attempt"]),
            last_error=row["last_error"], last_success=_ts(row["last_success"]),
            orders=int(row["orders"]),
        )


class ACMEStorage:
    """Reads and writes the ACME state; every write is one transaction (audited when asked)."""

    def __init__(self, store: Store, vault: SecretVault, audit: AuditProvider | None = None
                 ) -> None:
        self.store = store
        self.vault = vault
        self._audit = audit or (lambda: None)

    # -- account --------------------------------------------------------------------------------

    async def account(self, directory: str) -> tuple[Secret[bytes] | None, str | None]:
        row = await self.store.fetch_one("SELECT uri FROM acme_accounts WHERE directory = ?",
                                         (directory,))
        key = await self.vault.get(ACCOUNT_KIND, directory, KEY_FIELD)
        return key, (row["uri"] if row else None)

    async def create_account_key(self, directory: str, make_key: Callable[[], bytes]
                                 ) -> Secret[bytes]:
        """The account key for `directory`, generated and sealed the first time only."""
        async with self.store.transaction() as tx:
            existing = await self.vault.get(ACCOUNT_KIND, directory, KEY_FIELD, tx=tx)
            if existing is not None:
                return existing
            pem = make_key()
            now = time.time()
            await tx.execute(
                "INSERT INTO acme_accounts (directory, uri, created_at, updated_at) "
                "VALUES (?, NULL, ?, ?) ON CONFLICT (directory) DO NOTHING",
                (directory, now, now))
            await self.vault.put(tx, ACCOUNT_KIND, directory, KEY_FIELD, pem)
        return Secret(pem)

    async def save_account_uri(self, directory: str, uri: str | None) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE acme_accounts SET uri = ?, updated_at = ? WHERE directory = ?",
                (uri, time.time(), directory))

    # -- certificates ---------------------------------------------------------------------------

    async def certificate(self, names: str) -> CertRecord | None:
        row = await self.store.fetch_one("SELECT * FROM acme_certificates WHERE names = ?",
                                         (names,))
        return CertRecord.from_row(row) if row else None

    async def certificate_version(self, names: str) -> float | None:
        """The record's `updated_at` (one indexed read): it changes with every write to it, by
        any instance."""
        row = await self.store.fetch_one(
            "SELECT updated_at FROM acme_certificates WHERE names = ?", (names,))
        return float(row["updated_at"]) if row else None

    async def certificate_key(self, names: str) -> Secret[bytes] | None:
        return await self.vault.get(CERT_KIND, names, KEY_FIELD)

    async def ensure_record(self, names: str, directory: str) -> CertRecord:
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO acme_certificates (names, directory, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (names) DO NOTHING", (names, directory, time.time()))
        found = await self.certificate(names)
        assert found is not None
        return found

    async def create_certificate_key(self, names: str, make_key: Callable[[], bytes]
                                     ) -> Secret[bytes]:
        """The certificate key for `names`, generated and sealed the first time only."""
        async with self.store.transaction() as tx:
            existing = await self.vault.get(CERT_KIND, names, KEY_FIELD, tx=tx)
            if existing is not None:
                return existing
            pem = make_key()
            await self.vault.put(tx, CERT_KIND, names, KEY_FIELD, pem)
        return Secret(pem)

    async def record_success(self, names: str, *, directory: str, chain_pem: bytes,
                             not_after: dt.datetime, renew_at: dt.datetime,
                             ari_next_check: dt.datetime | None, orders: int,
                             action: str, details: Mapping[str, Any], actor: str = "system"
                             ) -> None:
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE acme_certificates SET directory = ?, chain_pem = ?, not_after = ?, "
                "renew_at = ?, ari_next_check = ?, failures = 0, next_attempt = NULL, "
                "last_attempt = ?, last_error = NULL, last_success = ?, orders = orders + ?, "
                "updated_at = ? WHERE names = ?",
                (directory, chain_pem.decode(), not_after.timestamp(), renew_at.timestamp(),
                 _epoch(ari_next_check), now, now, orders, now, names))
            await self._record(tx, action=action, target=names, outcome="ok", details=details,
                               actor=actor)

    async def record_failure(self, names: str, *, error: str, failures: int,
                             next_attempt: dt.datetime, orders: int, action: str,
                             details: Mapping[str, Any], actor: str = "system") -> None:
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE acme_certificates SET failures = ?, next_attempt = ?, last_attempt = ?, "
                "last_error = ?, orders = orders + ?, updated_at = ? WHERE names = ?",
                (failures, next_attempt.timestamp(), now, error, orders, now, names))
            await self._record(tx, action=action, target=names, outcome="failed",
                               details={**details, "error": error[:500]}, actor=actor)

    async def save_schedule(self, names: str, *, renew_at: dt.datetime | None,
                            ari_next_check: dt.datetime | None) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE acme_certificates SET renew_at = ?, ari_next_check = ?, updated_at = ? "
                "WHERE names = ?",
                (_epoch(renew_at), _epoch(ari_next_check), time.time(), names))

    # -- HTTP-01 answers shared by every instance -------------------------------------------------

    async def put_challenge(self, token: str, key_authorization: str, expires_at: float) -> None:
        """Publish an answer (and forget expired ones: a holder that died leaves its own)."""
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM acme_challenges WHERE expires_at <= ?", (time.time(),))
            await tx.execute(
                "INSERT INTO acme_challenges (token, key_authorization, expires_at) "
                "VALUES (?, ?, ?) ON CONFLICT (token) DO UPDATE SET "
                "key_authorization = excluded.key_authorization, "
                "expires_at = excluded.expires_at", (token, key_authorization, expires_at))

    async def delete_challenge(self, token: str) -> None:
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM acme_challenges WHERE token = ?", (token,))

    async def challenge(self, token: str) -> str | None:
        """The answer for `token` if one is published and not expired."""
        row = await self.store.fetch_one(
            "SELECT key_authorization FROM acme_challenges WHERE token = ? AND expires_at > ?",
            (token, time.time()))
        return str(row["key_authorization"]) if row else None

    async def _record(self, tx: Transaction, *, action: str, target: str, outcome: str,
                      details: Mapping[str, Any], actor: str) -> None:
        audit = self._audit()
        if audit is not None:
            await audit.record(tx, action=action, actor=actor, target=f"tls:{target}",
                               outcome=outcome, details=dict(details))
