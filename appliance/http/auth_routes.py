"""HTTP routes for sessions, users, 2FA enrolment, API tokens and the audit log.

Thin handlers: parse, authorise (declared with `access`), call the auth service, serialise.
Never echoes a password, code, TOTP secret (after enrolment), token (after creation) or session id.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.audit import chain_status, reading
from appliance.auth import COOKIE_NAME, AuthService, Principal, User
from appliance.errors import BadRequest, Forbidden, Unauthorized
from appliance.http import access
from appliance.http.access import SESSION_RAW
from appliance.http.app_keys import CORE
from appliance.http.json_body import read_object
from appliance.secret import Secret


def _string(body: dict[str, Any], key: str, *, required: bool = True,
            max_length: int = 1024) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{key!r} must be a non-empty string", code="bad_field", field=key)
    if len(value) > max_length:
        raise BadRequest(f"{key!r} is too long", code="bad_field", field=key)
    return value


def _secret(body: dict[str, Any], key: str) -> Secret[str]:
    value = _string(body, key, max_length=4096)
    assert value is not None
    return Secret(value)


def _set_session_cookie(response: web.StreamResponse, raw: Secret[str]) -> None:
    response.set_cookie(COOKIE_NAME, raw.reveal(), path="/", secure=True, httponly=True,
                        samesite="Strict")


def _clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict")


def _principal_view(found: Principal) -> dict[str, Any]:
    return {"username": found.username, "role": found.role, "via": found.via,
            "2fa_enrolment_required": found.enrolment_required,
            "password_change_required": found.password_change_required}


async def _user_view(auth: AuthService, user: User) -> dict[str, Any]:
    """A user as the API shows it: the public fields and the user's groups."""
    return dict(user.public(), groups=list(await auth.groups.of(user.id)))


# -- session ---------------------------------------------------------------------------------


@access.public
async def create_session(request: web.Request) -> web.Response:
    body = await read_object(request)
    username = _string(body, "username", max_length=64)
    password = _secret(body, "password")
    code = _string(body, "totp", required=False, max_length=64)
    assert username is not None
    auth = request.app[CORE].auth
    result = await auth.login(username, password, code, context=access.context(request))
    previous = request.cookies.get(COOKIE_NAME)
    if previous:
        # Never keep a session id that existed before the login (session fixation).
        await auth.end_session(previous)
    response = web.json_response({
        "user": result.user.public(),
        "2fa_enrolment_required": result.enrolment_required,
        "password_change_required": result.user.must_change_password,
    }, status=201)
    _set_session_cookie(response, result.session)
    return response


@access.requires("viewer", during_enrolment=True, during_password_change=True)
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_principal_view(access.require_principal(request)))


@access.requires("viewer", during_enrolment=True, during_password_change=True)
async def delete_session(request: web.Request) -> web.Response:
    found = access.require_principal(request)
    raw = request.get(SESSION_RAW)
    if found.via != "session" or raw is None:
        raise BadRequest("only a session can be ended here; revoke tokens instead",
                         code="not_a_session")
    await request.app[CORE].auth.logout(found, raw, context=access.context(request))
    response = web.Response(status=204)
    _clear_session_cookie(response)
    return response


# -- users (admin) ---------------------------------------------------------------------------


@access.admin
async def list_users(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    users = await auth.users.list()
    return web.json_response({"users": [await _user_view(auth, user) for user in users]})


@access.admin
async def create_user(request: web.Request) -> web.Response:
    body = await read_object(request)
    username = _string(body, "username", max_length=64)
    role = _string(body, "role", max_length=16)
    password = _secret(body, "password")
    assert username is not None and role is not None
    auth = request.app[CORE].auth
    # The administrator chose this password: the user chooses their own at the first login.
    user = await auth.users.create(username=username, role=role, password=password,
                                   must_change_password=True, groups=_groups(body) or (),
                                   context=access.context(request))
    return web.json_response(await _user_view(auth, user), status=201)


def _groups(body: dict[str, Any]) -> list[str] | None:
    """The body's `groups` (checked by the service), or None when it has none."""
    value = body.get("groups")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("'groups' must be a list of group names", code="bad_group",
                         field="groups")
    return value


@access.admin
async def get_user(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    user = await auth.users.require(request.match_info["name"])
    return web.json_response(await _user_view(auth, user))


@access.admin
async def update_user(request: web.Request) -> web.Response:
    body = await read_object(request)
    unknown = set(body) - {"role", "disabled", "password", "groups"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}", code="bad_field")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadRequest("'disabled' must be true or false", code="bad_field")
    role = _string(body, "role", required=False, max_length=16)
    password = _secret(body, "password") if "password" in body else None
    auth = request.app[CORE].auth
    # A password an administrator sets is one to change at the next login.
    change = await auth.users.change(request.match_info["name"], role=role, disabled=disabled,
                                     password=password, groups=_groups(body),
                                     must_change_password=True if password else None,
                                     context=access.context(request))
    # Disabling (or enabling) revokes the user's live API tokens for good: say which.
    return web.json_response(dict(await _user_view(auth, change.user),
                                  tokens_revoked=list(change.revoked_tokens)))


@access.admin
async def reset_user_2fa(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    reset = await auth.reset_2fa(request.match_info["name"], context=access.context(request))
    return web.json_response(dict(await _user_view(auth, reset.user),
                                  sessions_ended=reset.sessions_ended,
                                  tokens_revoked=list(reset.revoked_tokens)))


@access.admin
async def list_user_tokens(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    user = await auth.users.require(request.match_info["name"])
    tokens = await auth.tokens.list(user.id)
    return web.json_response({"tokens": [token.public() for token in tokens]})


@access.admin
async def revoke_user_token(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    user = await auth.users.require(request.match_info["name"])
    info = await auth.tokens.revoke(request.match_info["token_id"], owner_id=user.id,
                                    context=access.context(request))
    return web.json_response(info.public())


# -- the caller's own account ----------------------------------------------------------------


@access.requires("viewer", during_enrolment=True, during_password_change=True)
async def get_me(request: web.Request) -> web.Response:
    auth = request.app[CORE].auth
    found = access.require_principal(request)
    user = await auth.users.get_by_id(found.user_id)
    if user is None:
        raise Unauthorized("the session has ended", code="session_ended")
    out = await _user_view(auth, user)  # the own groups: read-only here
    out["recovery_codes_left"] = await auth.two_factor.remaining_recovery_codes(user.id)
    out["2fa_enrolment_required"] = found.enrolment_required
    return web.json_response(out)


@access.requires("viewer", during_password_change=True)
async def change_my_password(request: web.Request) -> web.Response:
    found = _session_only(request, "change the password")
    body = await read_object(request)
    await request.app[CORE].auth.change_own_password(
        found, _secret(body, "current_password"), _secret(body, "new_password"),
        context=access.context(request))
    response = web.json_response({"status": "changed", "relogin": True})
    _clear_session_cookie(response)
    return response


@access.requires("viewer", during_enrolment=True)
async def begin_2fa(request: web.Request) -> web.Response:
    found = _session_only(request, "enrol in two-factor login")
    uri, svg = await request.app[CORE].auth.begin_enrolment(found, context=access.context(request))
    return web.json_response({"otpauth_uri": uri, "qr_svg": svg}, status=201)


@access.requires("viewer", during_enrolment=True)
async def confirm_2fa(request: web.Request) -> web.Response:
    found = _session_only(request, "enrol in two-factor login")
    body = await read_object(request)
    code = _string(body, "code", max_length=64)
    assert code is not None
    codes, new_session = await request.app[CORE].auth.confirm_enrolment(
        found, code, request[SESSION_RAW], context=access.context(request))
    response = web.json_response({"enabled": True,
                                  "recovery_codes": [c.reveal() for c in codes]})
    _set_session_cookie(response, new_session)
    return response


@access.viewer
async def regenerate_recovery_codes(request: web.Request) -> web.Response:
    found = _session_only(request, "renew recovery codes")
    body = await read_object(request)
    code = _string(body, "code", max_length=64)
    assert code is not None
    codes = await request.app[CORE].auth.regenerate_recovery_codes(
        found, _secret(body, "password"), code, context=access.context(request))
    return web.json_response({"recovery_codes": [c.reveal() for c in codes]}, status=201)


@access.viewer
async def list_my_tokens(request: web.Request) -> web.Response:
    found = access.require_principal(request)
    tokens = await request.app[CORE].auth.tokens.list(found.user_id)
    return web.json_response({"tokens": [token.public() for token in tokens]})


@access.viewer
async def create_my_token(request: web.Request) -> web.Response:
    found = _session_only(request, "create tokens")
    body = await read_object(request)
    name = _string(body, "name", max_length=100)
    role = _string(body, "role", required=False, max_length=16)
    scope = _string(body, "scope", required=False, max_length=16) or "api"
    expires = body.get("expires_days")
    auth = request.app[CORE].auth
    owner = await auth.users.get_by_id(found.user_id)
    if owner is None:
        raise Unauthorized("the session has ended", code="session_ended")
    assert name is not None
    raw, info = await auth.create_token(owner, name=name, role=role, expires_days=expires,
                                        scope=scope, context=access.context(request))
    return web.json_response(dict(info.public(), token=raw.reveal()), status=201)


@access.viewer
async def revoke_my_token(request: web.Request) -> web.Response:
    found = access.require_principal(request)
    info = await request.app[CORE].auth.tokens.revoke(request.match_info["token_id"],
                                                 owner_id=found.user_id,
                                                 context=access.context(request))
    return web.json_response(info.public())


def _session_only(request: web.Request, what: str) -> Principal:
    found = access.require_principal(request)
    if found.via != "session":
        raise Forbidden(f"an API token cannot {what}; log in", code="session_required")
    return found


# -- audit (admin) ---------------------------------------------------------------------------


@access.admin
async def list_audit(request: web.Request) -> web.Response:
    """Entries matching the filters, newest first (`order=asc`: oldest first), one page at a
    time with an opaque `cursor`; `before`/`after` still start from a position. The parameters
    and the bounded scan: `audit.reading` and docs/audit.md#reading-the-log."""
    query = reading.parse_query(request.query, [key for key, _ in request.query.items()])
    page = await reading.search(request.app[CORE].store, query)
    return web.json_response(page.as_dict())


@access.admin
async def verify_audit(request: web.Request) -> web.Response:
    """Check the chain from the newest verified marker; everything with `?full=1`."""
    full = request.query.get("full", "")
    if full not in ("", "0", "1"):
        raise BadRequest("full must be 0 or 1", code="bad_query")
    result = await request.app[CORE].audit.verify(full=full == "1")
    return web.json_response(result.as_dict())


@access.admin
async def audit_status(request: web.Request) -> web.Response:
    """The head, the last verification (position, time, ok), the chain's kind, the audit key
    version in use."""
    audit = request.app[CORE].audit
    return web.json_response(await chain_status(audit.store, audit.keys))


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/api/v1/session", create_session)
    router.add_get("/api/v1/session", get_session)
    router.add_delete("/api/v1/session", delete_session)
    # /me before /{name}: "me" is a reserved user name.
    router.add_get("/api/v1/users/me", get_me)
    router.add_post("/api/v1/users/me/password", change_my_password)
    router.add_post("/api/v1/users/me/2fa", begin_2fa)
    router.add_post("/api/v1/users/me/2fa/confirm", confirm_2fa)
    router.add_post("/api/v1/users/me/2fa/recovery-codes", regenerate_recovery_codes)
    router.add_get("/api/v1/users/me/tokens", list_my_tokens)
    router.add_post("/api/v1/users/me/tokens", create_my_token)
    router.add_delete("/api/v1/users/me/tokens/{token_id}", revoke_my_token)
    router.add_get("/api/v1/users", list_users)
    router.add_post("/api/v1/users", create_user)
    router.add_get("/api/v1/users/{name}", get_user)
    router.add_patch("/api/v1/users/{name}", update_user)
    router.add_post("/api/v1/users/{name}/2fa/reset", reset_user_2fa)
    router.add_get("/api/v1/users/{name}/tokens", list_user_tokens)
    router.add_delete("/api/v1/users/{name}/tokens/{token_id}", revoke_user_token)
    router.add_get("/api/v1/audit", list_audit)
    router.add_get("/api/v1/audit/verify", verify_audit)
    router.add_get("/api/v1/audit/status", audit_status)
