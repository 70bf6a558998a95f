"""Which PostgreSQL authentication methods a connection may answer, and the guard that enforces it
by reading the server's messages before asyncpg does.

Owns the rule (a connection that is not TLS-verified never answers a cleartext-password request,
nor an MD5 one unless the datasource allows MD5) and the small parser of the backend messages
that come before authentication ends. Never sees or handles a password: a refused request is
dropped before asyncpg's protocol, which holds the password, can answer it.
"""

from __future__ import annotations

from typing import Final

from appliance.egress.asyncpg_hook import ProtocolGuard

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
