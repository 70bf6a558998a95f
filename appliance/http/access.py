"""Who may call what: the one place every route declares its role, and the guard enforcing it.

Owns authentication of each request (session cookie or bearer token), CSRF checks for cookie
requests, role checks, and the start-up refusal of any route without a declaration. Never logs a
cookie, a token or a session id.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from appliance.audit import AuditLog, Context
from appliance.auth import ADMIN, COOKIE_NAME, DEVELOPER, VIEWER, AuthService, Principal
from appliance.errors import ApplianceError, Forbidden, Unauthorized
from appliance.http import client_address
from appliance.http.app_keys import CORE, REQUEST_ID

PUBLIC = "public"
LEVELS = (PUBLIC, VIEWER, DEVELOPER, ADMIN)
CSRF_HEADER = "X-Appliance-CSRF"
# Request keys: typed where aiohttp has RequestKey, plain strings (the same at run time) before.
if TYPE_CHECKING or hasattr(web, "RequestKey"):
    PRINCIPAL = web.RequestKey("principal", Principal)
    SESSION_RAW = web.RequestKey("session_raw", str)
else:
    PRINCIPAL = "principal"
    SESSION_RAW = "session_raw"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_ATTR = "__appliance_access__"
F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Rule:
    """The role a route needs. `during_enrolment`: reachable before required 2FA is set up.
    `during_password_change`: reachable by a session whose user must first change the password
    an administrator reset (reading the own account, changing the password, logging out)."""

    role: str
    during_enrolment: bool = False
    during_password_change: bool = False


class UndeclaredRoute(ApplianceError):
    """A route has no access declaration: the application refuses to start."""

    code = "undeclared_route"
    exit_code = 1


def requires(role: str, *, during_enrolment: bool = False,
             during_password_change: bool = False) -> Callable[[F], F]:
    """Declare the role a handler needs: `public`, `viewer`, `developer` or `admin`."""
    if role not in LEVELS:
        raise ValueError(f"unknown access level {role!r}; use one of {', '.join(LEVELS)}")

    def decorate(handler: F) -> F:
        setattr(handler, _ATTR, Rule(role, during_enrolment, during_password_change))
        return handler

    return decorate


public = requires(PUBLIC)
viewer = requires(VIEWER)
developer = requires(DEVELOPER)
admin = requires(ADMIN)

# Routes whose handler cannot carry an attribute (static files): declared by route object.
_ROUTE_RULES: weakref.WeakKeyDictionary[web.AbstractRoute, Rule] = weakref.WeakKeyDictionary()


def declare(route: web.AbstractRoute, role: str, *, during_enrolment: bool = False) -> None:
    """Declare the role of a route whose handler cannot carry one. A route declares its role
    once: one whose handler already does is refused (so which `rule_of` reads first cannot
    matter)."""
    if role not in LEVELS:
        raise ValueError(f"unknown access level {role!r}")
    if rule_of(route) is not None:
        raise ValueError("this route already declares its access rule")
    _ROUTE_RULES[route] = Rule(role, during_enrolment)


def rule_of(route: web.AbstractRoute) -> Rule | None:
    handler: Any = route.handler
    rule = getattr(handler, _ATTR, None)  # a decorated handler: most routes, looked up first
    if isinstance(rule, Rule):
        return rule
    if route in _ROUTE_RULES:
        return _ROUTE_RULES[route]
    while True:
        rule = getattr(handler, _ATTR, None)
        if isinstance(rule, Rule):
            return rule
        if isinstance(handler, functools.partial):
            handler = handler.func
        elif hasattr(handler, "__wrapped__"):
            handler = handler.__wrapped__
        else:
            return None


def route_table(app: web.Application) -> list[tuple[str, str, Rule | None]]:
    """(method, path, rule) for every route of the application."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        path = resource.canonical if resource is not None else "?"
        out.append((route.method, path, rule_of(route)))
    return out


def check_routes(app: web.Application) -> None:
    """Raise `UndeclaredRoute` naming every route that declares no role."""
    missing = [f"{method} {path}" for method, path, rule in route_table(app) if rule is None]
    if missing:
        raise UndeclaredRoute(
            "routes without an access declaration: " + ", ".join(sorted(set(missing)))
            + " (decorate the handler with @access.public, @access.viewer, @access.developer "
              "or @access.admin from appliance.http.access)")


# -- per request ---------------------------------------------------------------------------


def principal(request: web.Request) -> Principal | None:
    found: Principal | None = request.get(PRINCIPAL)  # aiohttp types get() as Any, [] by key
    return found


def require_principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        raise Unauthorized("authentication required", code="unauthenticated")
    return found


def context(request: web.Request) -> Context:
    """Actor, client address and request id, for audit entries written for this request."""
    found: Principal | None = request.get(PRINCIPAL)
    return Context(actor=found.actor if found else "anonymous", client=client_address.of(request),
                   request_id=request.get(REQUEST_ID, ""))


def expected_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}".lower()


def _origin_ok(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is not None and origin.lower() == expected_origin(request)


async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, check CSRF for cookie requests, then check the route's role."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return await handler(request)  # 404/405: nothing to protect
    rule = rule_of(match_info.route)
    if rule is None:
        # check_routes refuses to start with such a route; this is the last line of defence.
        raise Forbidden("this route declares no access rule", code="undeclared_route")
    state_changing = request.method not in SAFE_METHODS
    if rule.role == PUBLIC:
        if state_changing and "Origin" in request.headers and not _origin_ok(request):
            raise Forbidden("cross-origin request refused", code="csrf")
        return await handler(request)

    auth = request.app[CORE].auth
    header = request.headers.get("Authorization")
    if header is not None:  # a bearer token (checked here: the hot path, one coroutine less)
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("unsupported Authorization scheme; use Bearer",
                               code="unauthenticated")
        found = await auth.authenticate_bearer(value)
        if found is None:
            raise Unauthorized("invalid, expired or revoked token", code="invalid_token")
    else:
        found = await _session(request, auth)
        if found is None:
            raise Unauthorized("authentication required", code="unauthenticated")
    if found.via == "session" and state_changing:
        if not _origin_ok(request) or request.headers.get(CSRF_HEADER) != "1":
            raise Forbidden(f"cross-site request refused: a cookie-authenticated "
                            f"{request.method} needs a same-origin Origin header and "
                            f"{CSRF_HEADER}: 1", code="csrf")
    request[PRINCIPAL] = found
    if found.password_change_required:
        # The password first (a route for it is one for this), then any 2FA enrolment.
        if not rule.during_password_change:
            raise Forbidden("your password was reset: change it first "
                            "(POST /api/v1/users/me/password)", code="password_change_required")
    elif found.enrolment_required and not rule.during_enrolment:
        raise Forbidden("your role requires two-factor login: enrol first "
                        "(POST /api/v1/users/me/2fa)", code="2fa_enrolment_required")
    if not found.at_least(rule.role):
        raise Forbidden(f"this needs the {rule.role} role", code="forbidden_role")
    return await handler(request)


async def _session(request: web.Request, auth: AuthService) -> Principal | None:
    """The principal of the request's session cookie, if it has a live one."""
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return None
    found = await auth.authenticate_session(raw)
    if found is not None:
        request[SESSION_RAW] = raw
    return found


def audit_of(request: web.Request) -> AuditLog:
    return request.app[CORE].audit
