"""The live TLS state of the process: one server context, kept current while connections stay open.

Owns loading certificates into the live `SSLContext` (new handshakes get the new certificate,
open connections keep theirs), the periodic check, and, in `acme` mode, the HTTP-01 responder
(shared with every instance through the store), the issuer and its following of the store.
Never logs key material; ACME keys reach OpenSSL through memory files only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from appliance import state_dir
from appliance.errors import TLSError
from appliance.secret import Secret
from appliance.settings import TLSSettings
from appliance.timestamps import rfc3339
from appliance.tls import local_ca
from appliance.tls.certificates import (
    CertificateInfo,
    describe,
    load_pair,
    temporary_self_signed,
)
from appliance.tls.http01 import HTTP01Responder
from appliance.tls.server_context import server_context

if TYPE_CHECKING:
    from appliance.egress import Dialer
    from appliance.keyring import SecretVault
    from appliance.store import Store
    from appliance.tls.issuance import ACMEIssuer
    from appliance.tls.storage import AuditProvider

log = logging.getLogger("appliance.tls")

# /readyz fails when the served certificate has fewer days left than this.
READY_MIN_DAYS = 7


class TLSManager:
    """Serves one live context; `check()` refreshes it from the configured source."""

    def __init__(self, settings: TLSSettings, state: Path) -> None:
        self.settings = settings
        self.state = state
        self.context: ssl.SSLContext = server_context()
        self.info: CertificateInfo | None = None
        self.ca: local_ca.LocalCA | None = None
        self.last_check: dt.datetime | None = None
        self.last_error: str | None = None
        self._files_seen: tuple[Any, ...] | None = None
        self.http01 = HTTP01Responder()
        self.acme: ACMEIssuer | None = None
        self.temporary = False  # serving the throwaway self-signed certificate (acme mode)

    # -- loading -----------------------------------------------------------------------------

    def load_initial(self) -> None:
        """Load the first certificate; raise `TLSError` if there is none to serve."""
        if self.settings.mode == "acme":
            if self.info is None:
                chain_pem, key_pem = temporary_self_signed(self.settings.names)
                self.install_pem(chain_pem, Secret(key_pem), temporary=True)
            return
        self.check()
        if self.info is None:
            raise TLSError(self.last_error or "no certificate could be loaded")

    def check(self) -> bool:
        """Refresh from the source; return True if a new certificate was installed."""
        self.last_check = dt.datetime.now(dt.UTC)
        if self.settings.mode == "acme":
            return False  # the issuer keeps its own schedule
        try:
            if self.settings.mode == "local":
                installed = self._check_local()
            else:
                installed = self._check_files()
        except TLSError as exc:
            self.last_error = exc.message
            log.warning("tls check failed", extra={"error": exc.message})
            return False
        self.last_error = None
        return installed

    def _check_local(self) -> bool:
        self.ca = local_ca.ensure_ca(self.state)
        leaf = local_ca.ensure_leaf(self.state, self.settings.names)
        if self.info and self.info.fingerprint_sha256 == leaf.info.fingerprint_sha256:
            return False
        self._install(leaf.cert_path, leaf.key_path, leaf.info)
        return True

    def _check_files(self) -> bool:
        cert_path, key_path = self.settings.cert_file, self.settings.key_file
        assert cert_path is not None and key_path is not None  # settings guarantee it
        try:
            seen = tuple(_file_identity(p) for p in (cert_path, key_path))
        except OSError as exc:
            raise TLSError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if seen == self._files_seen and self.info is not None:
            return False
        try:
            chain_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        except OSError as exc:
            raise TLSError(f"cannot read {exc.filename}: {exc.strerror}") from None
        info = load_pair(chain_pem, key_pem, origin=f"{cert_path} + {key_path}")
        # Load exactly the bytes that were checked, from private copies in the state dir.
        tls_dir = state_dir.ensure_subdir(self.state, state_dir.TLS_DIR)
        copy_cert, copy_key = tls_dir / ".files-cert.pem", tls_dir / ".files-key.pem"
        try:
            state_dir.write_private(copy_cert, chain_pem)
            state_dir.write_private(copy_key, key_pem)
            self._install(copy_cert, copy_key, info)
        finally:
            for path in (copy_cert, copy_key):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._files_seen = seen
        return True

    def _install(self, cert_path: Path, key_path: Path, info: CertificateInfo) -> None:
        # Try a scratch context first: a failure there leaves the live context untouched.
        try:
            server_context().load_cert_chain(cert_path, key_path)
            self.context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"cannot load certificate {cert_path}: {exc}") from None
        replaced = self.info is not None
        self.info = info
        self.temporary = False
        log.info(
            "tls certificate installed",
            extra={
                "names": list(info.names),
                "issuer": info.issuer,
                "not_after": info.not_after.isoformat(),
                "replaced": replaced,
            },
        )

    def install_pem(self, chain_pem: bytes, key_pem: Secret[bytes],
                    info: CertificateInfo | None = None, *, temporary: bool = False) -> None:
        """Install a chain and key held in memory (never written to disk where memfd exists)."""
        with _memory_files(self.state, chain_pem, key_pem.reveal()) as (cert_path, key_path):
            self._install(cert_path, key_path,
                          info or describe(_first_certificate(chain_pem)))
        self.temporary = temporary

    # -- acme ----------------------------------------------------------------------------------

    async def open_acme(self, store: Store, vault: SecretVault, dialer: Dialer, *,
                        audit: AuditProvider | None = None, check_interval: float = 600.0,
                        has_http_listener: bool = True) -> None:
        """Acme mode: create the issuer and serve the stored certificate if it is valid."""
        from appliance.store.lease import Lease, instance_id
        from appliance.tls.issuance import ACMEIssuer
        from appliance.tls.storage import ACMEStorage, names_key

        storage = ACMEStorage(store, vault, audit)
        # Any instance on this store may be the one the CA reaches for an HTTP-01 answer.
        self.http01.share(storage, asyncio.get_running_loop())
        lease = Lease(store, f"acme:{names_key(self.settings.names)}", instance_id(),
                      self.settings.order_lease)
        self.acme = ACMEIssuer(
            self.settings, storage, dialer, self.http01,
            lambda chain, key, info: self.install_pem(chain, key, info), lease,
            check_interval=check_interval, has_http_listener=has_http_listener)
        if not await self.acme.load() and self.info is None:
            self.load_initial()

    def listeners_ready(self) -> None:
        """The listeners accept connections: ACME issuance may begin."""
        if self.acme is not None:
            self.acme.listeners_ready()

    # -- the maintenance loop ----------------------------------------------------------------

    async def maintain(self) -> None:
        """Check every `check_interval` seconds until cancelled."""
        if self.settings.mode == "acme":
            if self.acme is not None:
                await asyncio.gather(self.acme.run(), self.acme.follow(),
                                     self._keep_temporary_fresh())
            return
        while True:
            await asyncio.sleep(self.settings.check_interval)
            self.check()

    async def _keep_temporary_fresh(self, every: float = 3600.0) -> None:
        """While no ACME certificate has arrived, never let the temporary one expire."""
        while True:
            await asyncio.sleep(every)
            if self.temporary and self.info is not None and self.info.days_left() < 1:
                chain_pem, key_pem = temporary_self_signed(self.settings.names)
                self.install_pem(chain_pem, Secret(key_pem), temporary=True)

    # -- status ------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.info is None:
            return False, "no certificate loaded"
        if self.temporary:
            return False, "serving a temporary self-signed certificate until the ACME one arrives"
        days = self.info.days_left()
        if days < READY_MIN_DAYS:
            return False, f"certificate expires in {days:.1f} days"
        return True, "ok"

    def times(self) -> tuple[dt.datetime | None, dt.datetime | None, dt.datetime | None]:
        """The served certificate's expiry, its next renewal (local CA and ACME modes) and the
        last successful ACME order: what metrics graph."""
        info = None if self.temporary else self.info
        next_renewal = last_success = None
        if info is not None and self.settings.mode == "local":
            next_renewal = info.renewal_due_at()
        if self.acme is not None:
            next_renewal = self.acme.next_renewal()
            record = self.acme.record
            last_success = record.last_success if record is not None else None
        return (info.not_after if info is not None else None), next_renewal, last_success

    def status(self) -> dict[str, Any]:
        info = self.info
        next_renewal = None
        if info is not None and self.settings.mode == "local":
            next_renewal = rfc3339(info.renewal_due_at())
        acme = self.acme.status() if self.acme is not None else {}
        out = {
            "mode": self.settings.mode,
            "names": list(info.names if info else self.settings.names),
            "issuer": info.issuer if info else None,
            "not_after": rfc3339(info.not_after) if info else None,
            "fingerprint_sha256": info.fingerprint_sha256 if info else None,
            "next_renewal": next_renewal,
            "last_check": rfc3339(self.last_check),
            "last_error": self.last_error,
            "temporary": self.temporary,
        }
        if self.settings.mode == "acme":
            out.update(acme)
            out["names"] = list(self.settings.names)
            out["not_after"] = rfc3339(info.not_after) if info and not self.temporary else None
            out["issuer"] = info.issuer if info and not self.temporary else None
        return out


def _file_identity(path: Path) -> tuple[int, int, int]:
    info = os.stat(path)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _first_certificate(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain_pem)[0]


@contextlib.contextmanager
def _memory_files(state: Path, chain_pem: bytes, key_pem: bytes) -> Iterator[tuple[Path, Path]]:
    """Paths OpenSSL can read the chain and key from: anonymous memory files (memfd) where the
    kernel has them, else private files in the state dir removed right after loading."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fds: list[int] = []
        try:
            for name, data in (("appliance-chain", chain_pem), ("appliance-key", key_pem)):
                fd = memfd(name, os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield Path(f"/proc/self/fd/{fds[0]}"), Path(f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    tls_dir = state_dir.ensure_subdir(state, state_dir.TLS_DIR)
    cert_path, key_path = tls_dir / ".acme-cert.pem", tls_dir / ".acme-key.pem"
    try:
        state_dir.write_private(cert_path, chain_pem)
        state_dir.write_private(key_path, key_pem)
        yield cert_path, key_path
    finally:
        for path in (cert_path, key_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
