"""The authentication service: logins (password, TOTP, throttling), 2FA enrolment, logout.

Owns the login flow and its audit entries. Never reveals which of user, password or code was
wrong, and never logs or audits a password, code, session id or token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from appliance import metrics
from appliance.audit import AuditLog, Context
from appliance.auth.passwords import Passwords
from appliance.auth.sessions import Sessions, label
from appliance.auth.throttle import Keys, Throttle, Throttled
from appliance.auth.tokens import API, TokenInfo, Tokens
from appliance.auth.totp import TwoFactor, Vault, looks_like_recovery_code
from appliance.auth.users import User, Users
from appliance.errors import BadRequest, Conflict, Forbidden, ServiceUnavailable, Unauthorized
from appliance.roles import Principal, at_least
from appliance.secret import Secret
from appliance.settings import AuthSettings
from appliance.store import Store

GENERIC_FAILURE = "invalid username, password or code"


class LoginFailed(Unauthorized):
    def __init__(self) -> None:
        super().__init__(GENERIC_FAILURE, code="invalid_credentials")


class CodeRequired(Unauthorized):
    def __init__(self) -> None:
        super().__init__("a TOTP code (or a recovery code) is required", code="totp_required")


@dataclass(frozen=True)
class LoginResult:
    session: Secret[str]
    user: User
    enrolment_required: bool
    method: str


@dataclass(frozen=True)
class TwoFactorReset:
    """What `AuthService.reset_2fa` did: the user now, the sessions it ended, the API tokens it
    revoked."""

    user: User
    sessions_ended: int
    revoked_tokens: tuple[str, ...]


class AuthService:
    """Everything about who a request is: users, sessions, tokens, 2FA, throttling."""

    def __init__(self, store: Store, audit: AuditLog, settings: AuthSettings,
                 passwords: Passwords | None = None,
                 vault: Callable[[], Awaitable[Vault]] | None = None) -> None:
        self.store = store
        self._vault_provider = vault
        self.audit = audit
        self.settings = settings
        self.passwords = passwords or Passwords()
        self.users = Users(store, audit, self.passwords)
        self.groups = self.users.groups
        self.sessions = Sessions(store, settings)
        self.tokens = Tokens(store, audit)
        self.throttle = Throttle(store)
        self.two_factor = TwoFactor(store)

    async def vault(self) -> Vault:
        """The keyring's vault (TOTP secrets are sealed there)."""
        if self._vault_provider is None:
            raise ServiceUnavailable("the keyring is not available", code="keyring_unavailable")
        return await self._vault_provider()

    # -- login / logout ----------------------------------------------------------------------

    async def login(self, username: str, password: Secret[str], code: str | None, *,
                    context: Context) -> LoginResult:
        name = username.strip()[:64]
        keys = Keys.of(name, context.client)
        watched = await self.throttle.watched(keys)
        async with self.throttle.serialised(watched):
            try:
                await self.throttle.check([keys.pair])
            except Throttled as exc:
                await self._record_throttled(name, exc, context)
                raise
            # A lock on the account or the address may be others' doing: it refuses everything
            # but a full login (the password and a second factor), and says nothing about
            # which part of a lesser attempt was wrong.
            shared = await self.throttle.locked([key for key in watched if key != keys.pair])
            user = await self.users.get(name) if name else None
            usable = user is not None and not user.disabled
            ok = await self.passwords.verify(user.password_hash if usable and user else None,
                                             password)
            full = ok and user is not None and user.totp_enabled and bool(code)
            if shared is not None and not full:
                async with self.store.transaction() as tx:
                    await self.throttle.failure(tx, keys)
                await self._record_throttled(name, shared, context)
                raise shared
            if ok and user is not None and user.totp_enabled and not code:
                raise CodeRequired()
            vault = await self.vault() if ok and user is not None and user.totp_enabled else None
            async with self.store.transaction() as tx:
                method = "password"
                if ok and user is not None and user.totp_enabled:
                    assert vault is not None
                    method = await self.two_factor.check(tx, vault, user, code or "") or ""
                    ok = bool(method)
                if not ok or user is None:
                    await self.throttle.failure(tx, keys)
                    reason = ("bad code" if usable and method == "" and user
                              and user.totp_enabled else "bad credentials")
                    await self.audit.record(
                        tx, action="session.create", outcome="failed",
                        target=await self._target(name, tx), details={"reason": reason},
                        context=_anonymous(context))
                    metrics.login_failed(reason.replace(" ", "_"))
                    failed = True
                else:
                    failed = False
                    await self.throttle.success(tx, keys)
                    if self.passwords.needs_rehash(user.password_hash):
                        new_hash = await self.passwords.hash(password)
                        await self.users.set_password_hash(tx, user.id, new_hash)
                    if method == "recovery":
                        await self.audit.record(tx, action="2fa.recovery_code_used",
                                                target=f"user:{user.username}",
                                                context=_as(user, context))
                    mfa_state = self.sessions.mfa_state(user.role, user.totp_enabled)
                    raw, id_hash = await self.sessions.create(tx, user_id=user.id,
                                                              role=user.role,
                                                              mfa_state=mfa_state)
                    await self.audit.record(
                        tx, action="session.create", target=f"user:{user.username}",
                        details={"method": "password" if method == "password"
                                 else f"password+{method}", "session": label(id_hash)},
                        context=_as(user, context))
            if failed:
                if shared is not None:
                    raise shared  # the same answer as any lesser attempt during the lock
                raise LoginFailed()
            assert user is not None
            return LoginResult(session=raw, user=user, method=method,
                               enrolment_required=mfa_state == "enrol")

    async def _record_throttled(self, name: str, exc: Throttled, context: Context) -> None:
        metrics.login_throttled()
        async with self.store.transaction() as tx:
            await self.audit.record(tx, action="session.create", outcome="denied",
                                    target=await self._target(name, tx),
                                    details={"reason": "throttled", "limit": exc.limit},
                                    context=_anonymous(context))

    async def _target(self, name: str, tx: object = None) -> str:
        # An unknown name may be a password typed into the wrong field: never audit it.
        user = await self.users.get(name) if name else None
        return f"user:{user.username}" if user else "user:<unknown>"

    async def logout(self, principal: Principal, raw: str, *, context: Context) -> None:
        async with self.store.transaction() as tx:
            await self.sessions.delete(tx, raw)
            await self.audit.record(tx, action="session.delete",
                                    target=f"user:{principal.username}",
                                    details={"session": principal.credential_id},
                                    context=context)

    async def end_session(self, raw: str) -> None:
        """End the session with this id, if there is one (no audit: it is not a logout)."""
        async with self.store.transaction() as tx:
            await self.sessions.delete(tx, raw)

    async def rotate(self, principal: Principal, raw: str, *, context: Context,
                     reason: str) -> Secret[str]:
        """A new session id for the same user (privilege change); the old one ends."""
        user = await self.users.get_by_id(principal.user_id)
        if user is None or user.disabled:
            raise Unauthorized("the session has ended", code="session_ended")
        async with self.store.transaction() as tx:
            await self.sessions.delete(tx, raw)
            new_raw, id_hash = await self.sessions.create(
                tx, user_id=user.id, role=user.role,
                mfa_state=self.sessions.mfa_state(user.role, user.totp_enabled))
            await self.audit.record(tx, action="session.rotate", target=f"user:{user.username}",
                                    details={"reason": reason, "session": label(id_hash)},
                                    context=context)
        return new_raw

    def authenticate_bearer(self, raw: str,
                            scope: str = API) -> Coroutine[Any, Any, Principal | None]:
        return self.tokens.authenticate(raw, scope)  # its coroutine, awaited by the caller

    async def create_token(self, owner: User, *, name: str, role: str | None,
                           expires_days: float | None, context: Context, scope: str = API,
                           allow_without_2fa: bool = False) -> tuple[Secret[str], TokenInfo]:
        """A new token (see `Tokens.create`). An API token whose role requires two-factor login,
        for an owner who has not enrolled, would act without the second factor: refused unless
        `allow_without_2fa` (the CLI's explicit flag; recorded in the audit). A metrics token
        reaches no API and needs no second factor."""
        token_role = role or owner.role
        missing = (scope == API and token_role in self.settings.require_2fa
                   and not owner.totp_enabled)
        if missing and not at_least(owner.role, token_role):
            missing = False  # a role above the owner's: `Tokens.create` refuses it, saying so
        if missing and not allow_without_2fa:
            raise Forbidden(
                f"{owner.username} has not enrolled two-factor login, which the {token_role} "
                f"role requires, and a token would act without it: enrol first (log in and set "
                f"up TOTP), or choose a role that does not require it; from the CLI, "
                f"--allow-without-2fa creates it anyway", code="2fa_enrolment_required")
        return await self.tokens.create(owner, name=name, role=role, expires_days=expires_days,
                                        context=context, scope=scope, without_2fa=missing)

    async def authenticate_session(self, raw: str) -> Principal | None:
        return await self.sessions.lookup(raw)

    # -- 2FA ---------------------------------------------------------------------------------

    async def begin_enrolment(self, principal: Principal, *,
                              context: Context) -> tuple[str, str]:
        user = await self._user(principal)
        vault = await self.vault()
        if user.totp_enabled:
            raise Conflict("two-factor login is already enabled; ask an admin to reset it",
                           code="2fa_enabled")
        uri, svg = await self.two_factor.begin(vault, user)
        async with self.store.transaction() as tx:
            await self.audit.record(tx, action="2fa.enrol_start", target=f"user:{user.username}",
                                    context=context)
        return uri, svg

    async def confirm_enrolment(self, principal: Principal, code: str, raw: str,
                                *, context: Context) -> tuple[list[Secret[str]], Secret[str]]:
        """Enable 2FA with the first code; returns (recovery codes, the new session id)."""
        if not isinstance(code, str) or not code:
            raise BadRequest("code is required", code="bad_code")
        user = await self._user(principal)
        if user.totp_enabled:
            raise Conflict("two-factor login is already enabled", code="2fa_enabled")
        vault = await self.vault()
        async with self.store.transaction() as tx:
            codes = await self.two_factor.confirm(tx, vault, user, code)
            if codes is not None:
                await self.audit.record(tx, action="2fa.enable", target=f"user:{user.username}",
                                        details={"recovery_codes": len(codes)}, context=context)
        if codes is None:
            async with self.store.transaction() as tx:
                await self.audit.record(tx, action="2fa.enable", outcome="failed",
                                        target=f"user:{user.username}", context=context)
            raise BadRequest("the code does not match; check the device's clock and try again",
                             code="bad_code")
        new_raw = await self.rotate(principal, raw, context=context, reason="2fa enabled")
        return codes, new_raw

    async def regenerate_recovery_codes(self, principal: Principal, password: Secret[str],
                                        code: str, *, context: Context) -> list[Secret[str]]:
        """New recovery codes for the caller, the old ones dead in the same transaction: only
        with the account's password and a current code from the authenticator (a recovery code
        cannot renew the others). Audited either way; the codes are returned once."""
        user = await self._user(principal)
        if not user.totp_enabled:
            raise Conflict("two-factor login is not enabled: set it up first",
                           code="2fa_not_enabled")
        if looks_like_recovery_code(code):
            raise BadRequest("enter the code your authenticator app shows now, not a recovery "
                             "code", code="bad_code", field="code")
        action = "2fa.recovery_codes_regenerate"
        async with self._password_guess(user, action, context) as keys:
            ok = await self.passwords.verify(user.password_hash, password)
            vault = await self.vault()
            async with self.store.transaction() as tx:
                method = await self.two_factor.check(tx, vault, user, code) if ok else None
                if method == "totp":
                    codes = await self.two_factor.replace_recovery_codes(tx, user)
                    await self.audit.record(tx, action=action, target=f"user:{user.username}",
                                            details={"count": len(codes)}, context=context)
                    return codes
            async with self.store.transaction() as tx:
                await self.throttle.failure(tx, keys)
                await self.audit.record(tx, action=action, outcome="failed",
                                        target=f"user:{user.username}", context=context)
        raise Unauthorized("the password or the code is wrong", code="invalid_credentials")

    @contextlib.asynccontextmanager
    async def _password_guess(self, user: User, action: str,
                              context: Context) -> AsyncIterator[Keys]:
        """Around a signed-in user's password check (new recovery codes, a password change): a
        stolen session must not make it a guessing oracle. It is throttled as a login of the
        same account from the same address is, on the same counters (the caller counts a
        failure with `throttle.failure` on the keys it is given): a locked pair is refused
        (429, audited as `action` denied) before any check. Like a full login, it is not refused
        by others' locks on the account or the address."""
        keys = Keys.of(user.username, context.client)
        async with self.throttle.serialised(await self.throttle.watched(keys)):
            try:
                await self.throttle.check([keys.pair])
            except Throttled as exc:
                async with self.store.transaction() as tx:
                    await self.audit.record(tx, action=action, outcome="denied",
                                            target=f"user:{user.username}",
                                            details={"reason": "throttled", "limit": exc.limit},
                                            context=context)
                raise
            yield keys

    async def reset_2fa(self, username: str, *, context: Context) -> TwoFactorReset:
        """An administrator's reset of a user's second factor (a lost authenticator): the TOTP
        secret and recovery codes gone, every session of the user ended and every live API
        token revoked (each was made with the old factor, and whoever holds that factor may
        hold them too), audited as `2fa.reset`, all in one transaction."""
        vault = await self.vault()
        async with self.store.transaction() as tx:
            user = await self.users.require(username, tx)
            await self.two_factor.reset(tx, vault, user.id)
            ended = await self.sessions.delete_for_user(tx, user.id)
            revoked = await self.users.revoke_tokens(tx, user.id)
            await self.audit.record(tx, action="2fa.reset", target=f"user:{user.username}",
                                    details={"sessions_ended": ended,
                                             **({"revoked": list(revoked)} if revoked else {})},
                                    context=context)
            return TwoFactorReset(await self.users.require(username, tx), ended, revoked)

    async def change_own_password(self, principal: Principal, current: Secret[str],
                                  new: Secret[str], *, context: Context) -> None:
        user = await self._user(principal)
        async with self._password_guess(user, "user.password_change", context) as keys:
            if not await self.passwords.verify(user.password_hash, current):
                async with self.store.transaction() as tx:
                    await self.throttle.failure(tx, keys)
                    await self.audit.record(tx, action="user.password_change",
                                            outcome="failed", target=f"user:{user.username}",
                                            context=context)
                raise Unauthorized("the current password is wrong", code="invalid_credentials")
        self.passwords.check_policy(new, field="new_password")  # named as the request names it
        await self.users.update(user.username, password=new, must_change_password=False,
                                context=context)

    async def _user(self, principal: Principal) -> User:
        user = await self.users.get_by_id(principal.user_id)
        if user is None or user.disabled:
            raise Unauthorized("the session has ended", code="session_ended")
        return user


def _anonymous(context: Context) -> Context:
    return Context(actor="anonymous", client=context.client, request_id=context.request_id)


def _as(user: User, context: Context) -> Context:
    return Context(actor=user.username, client=context.client, request_id=context.request_id)
