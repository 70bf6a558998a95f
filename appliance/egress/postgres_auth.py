"""How every PostgreSQL connection of the process is opened (a datasource's and the store's): the
TLS context of a mode, which authentication methods a connection may answer, and the guard that
enforces it by reading the server's messages before asyncpg does.

Owns the rule (a connection that is not TLS-verified never answers a cleartext-password request,
nor an MD5 one unless the datasource allows MD5), the small parser of the backend messages that
come before authentication ends, and `connect` (every parameter explicit, so asyncpg never reads
PG* variables or ~/.pgpass). Never sees or handles a password beyond passing it to asyncpg: a
refused request is dropped before asyncpg's protocol, which holds the password, can answer it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Final

from appliance.egress import asyncpg_hook
from appliance.egress.asyncpg_hook import ProtocolGuard
from appliance.egress.dialer import Dialer

TLS_MODES: Final = ("verify-full", "require", "disable")

# AuthenticationXXX request codes (the Int32 after 'R'); see the protocol's message formats.
AUTH_OK: Final = 0
CLEARTEXT: Final = 3
MD5: Final = 5
METHOD_NAMES: Final = {
    2: "Kerberos V5", CLEARTEXT: "cleartext password", MD5: "MD5 password",
    6: "SCM credential", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI",
    10: "SASL", 11: "SASL", 12: "SASL",
}
# Methods that never send the password or anything equivalent to it: SCRAM (SASL) and GSSAPI/SSPI.
# Kerberos V5 (2) and SCM credentials (6) are refused by asyncpg itself.
_ALWAYS_ALLOWED: Final = frozenset({AUTH_OK, 7, 8, 9, 10, 11, 12})
# Messages before authentication ends are small (an error, a notice, a SASL exchange).
MAX_MESSAGE: Final = 64 * 1024
_R, _E = ord("R"), ord("E")


class AuthMethodRefused(ConnectionError):
    """The server asked for an authentication method this connection may not answer; nothing of
    the password was sent. The message names the method, never a credential."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.method = METHOD_NAMES.get(code, f"code {code}") if code is not None else "malformed"


class AuthPolicy:
    """A guard factory for one datasource's connections (`EgressLoop(guard=...)`), and where the
    first refusal is kept for the engine to report."""

    def __init__(self, *, allow_md5: bool) -> None:
        self.allowed = (_ALWAYS_ALLOWED | {MD5}) if allow_md5 else _ALWAYS_ALLOWED
        self.refused: AuthMethodRefused | None = None

    def __call__(self) -> AuthGuard:
        return AuthGuard(self)

    def refuse(self, reason: AuthMethodRefused) -> None:
        if self.refused is None:
            self.refused = reason


def policy_for(tls: str, *, allow_md5: bool) -> AuthPolicy | None:
    """None when the server is authenticated (tls = verify-full): every method is answered."""
    if tls == "verify-full":
        return None
    return AuthPolicy(allow_md5=allow_md5)


class AuthGuard(ProtocolGuard):
    """Reads backend messages until AuthenticationOk or an ErrorResponse, passing allowed ones to
    asyncpg; a refused request aborts the connection before asyncpg sees it."""

    def __init__(self, policy: AuthPolicy) -> None:
        super().__init__()
        self._policy = policy
        self._passing = 0  # bytes of an allowed message still to pass on as they arrive

    def inspect(self, pending: bytearray) -> None:
        while self.active and pending:
            if self._passing:
                size = min(self._passing, len(pending))
                self._passing -= size
                self.forward(size)
                continue
            if len(pending) < 5:
                return
            kind = pending[0]
            length = int.from_bytes(pending[1:5], "big")
            if length < 4 or length > MAX_MESSAGE or (kind == _R and length < 8):
                self._refuse(AuthMethodRefused(None, "the server sent a malformed message "
                                                     "before authentication ended"))
                return
            if kind == _E:  # the server refused us: asyncpg reports its error
                self.step_out()
                return
            if kind == _R:
                if len(pending) < 9:
                    return
                code = int.from_bytes(pending[5:9], "big")
                if code not in self._policy.allowed:
                    self._refuse(AuthMethodRefused(code, _refusal_text(code)))
                    return
                if code == AUTH_OK:
                    self.step_out()
                    return
            self._passing = 1 + length  # an allowed request, a notice, a protocol negotiation

    def _refuse(self, reason: AuthMethodRefused) -> None:
        self._policy.refuse(reason)
        self.refuse(reason)


def _refusal_text(code: int) -> str:
    if code == CLEARTEXT:
        return ("the server asked for the password in cleartext; refused because the "
                "connection is not TLS-verified")
    if code == MD5:
        return ("the server asked for MD5 password authentication; refused because the "
                "connection is not TLS-verified")
    return f"the server asked for an unsupported authentication method (code {code})"


def tls_context(mode: str, ca_file: Path | None = None) -> ssl.SSLContext | bool:
    """The TLS of a mode: `verify-full` (the system's CAs, or `ca_file`; the name is checked),
    `require` (encrypted, not verified: libpq's sslmode=require) or `disable` (False)."""
    if mode == "disable":
        return False
    if mode == "require":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if mode != "verify-full":
        raise ValueError(f"unknown TLS mode {mode!r}")
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


async def connect(dialer: Dialer, *, host: str, port: int, user: str, password: str,
                  database: str, tls: str, purpose: str, timeout: float,
                  ca_file: Path | None = None, allow_md5: bool = False,
                  datasource: str | None = None, server_settings: dict[str, str] | None = None,
                  statement_cache_size: int = 256) -> Any:
    """An asyncpg connection through the dialer. Unless TLS is verified, a guard reads the
    server's authentication requests first and refuses a cleartext (or, without `allow_md5`, an
    MD5) one before the password is sent: `AuthMethodRefused` is raised then."""
    policy = policy_for(tls, allow_md5=allow_md5)
    try:
        return await asyncpg_hook.connect(
            dialer, host=host, port=port, purpose=purpose, datasource=datasource,
            timeout=timeout, guard=policy, user=user, password=password,
            passfile="/dev/null", database=database, ssl=tls_context(tls, ca_file),
            direct_tls=False, target_session_attrs="any", krbsrvname="postgres",
            gsslib="gssapi", server_settings=server_settings or {},
            statement_cache_size=statement_cache_size,
        )
    except Exception:
        if policy is not None and policy.refused is not None:
            raise policy.refused from None
        raise
