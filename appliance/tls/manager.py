"""The live TLS state of the process: one server context, kept current while connections stay open.

Owns loading certificates into the live `SSLContext` (new handshakes get the new certificate,
open connections keep theirs) and the periodic check. Never logs key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from appliance import state_dir
from appliance.errors import TLSError
from appliance.settings import TLSSettings
from appliance.tls import local_ca
from appliance.tls.certificates import CertificateInfo, load_pair
from appliance.tls.policy import server_context

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

    # -- loading -----------------------------------------------------------------------------

    def load_initial(self) -> None:
        """Load the first certificate; raise `TLSError` if there is none to serve."""
        if self.settings.mode == "acme":
            raise TLSError(
                "tls.mode 'acme' is not available in this version; use 'local' or 'files'"
            )
        self.check()
        if self.info is None:
            raise TLSError(self.last_error or "no certificate could be loaded")

    def check(self) -> bool:
        """Refresh from the source; return True if a new certificate was installed."""
        self.last_check = dt.datetime.now(dt.UTC)
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
        log.info(
            "tls certificate installed",
            extra={
                "names": list(info.names),
                "issuer": info.issuer,
                "not_after": info.not_after.isoformat(),
                "replaced": replaced,
            },
        )

    # -- the maintenance loop ----------------------------------------------------------------

    async def maintain(self) -> None:
        """Check every `check_interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.check_interval)
            self.check()

    # -- status ------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.info is None:
            return False, "no certificate loaded"
        days = self.info.days_left()
        if days < READY_MIN_DAYS:
            return False, f"certificate expires in {days:.1f} days"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        info = self.info
        next_renewal = None
        if info is not None and self.settings.mode == "local":
            next_renewal = info.renewal_due_at().isoformat()
        return {
            "mode": self.settings.mode,
            "names": list(info.names if info else self.settings.names),
            "issuer": info.issuer if info else None,
            "not_after": info.not_after.isoformat() if info else None,
            "fingerprint_sha256": info.fingerprint_sha256 if info else None,
            "next_renewal": next_renewal,
            "last_check": self.last_check.isoformat() if self.last_check else None,
            "last_error": self.last_error,
        }


def _file_identity(path: Path) -> tuple[int, int, int]:
    info = os.stat(path)
    return (info.st_ino, info.st_size, info.st_mtime_ns)
