"""Every route of the real application by every role (and anonymous): each route declares a role,
the declaration is enforced, and a route without one stops the application from starting."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from appliance import roles
from appliance.http import access
from appliance.http.access import UndeclaredRoute
from appliance.http.app import build_app
from appliance.tls import TLSManager
from tests.support.app import fill_path, make_settings, running

IDENTITIES = ("anonymous", "viewer", "developer", "admin")
RANK = {"public": 0, "viewer": 1, "developer": 2, "admin": 3}
DENIALS = {"unauthenticated", "forbidden_role", "undeclared_route", "csrf",
           "2fa_enrolment_required"}

# The roles this issue's own routes must declare (other routes are checked for having one and
# for its enforcement, whatever it is).
EXPECTED = {
    ("POST", "/api/v1/session"): "public",
    ("GET", "/api/v1/session"): "viewer",
    ("DELETE", "/api/v1/session"): "viewer",
    ("GET", "/api/v1/users/me"): "viewer",
    ("POST", "/api/v1/users/me/password"): "viewer",
    ("POST", "/api/v1/users/me/2fa"): "viewer",
    ("POST", "/api/v1/users/me/2fa/confirm"): "viewer",
    ("POST", "/api/v1/users/me/2fa/recovery-codes"): "viewer",
    ("GET", "/api/v1/users/me/tokens"): "viewer",
    ("POST", "/api/v1/users/me/tokens"): "viewer",
    ("DELETE", "/api/v1/users/me/tokens/{token_id}"): "viewer",
    ("GET", "/api/v1/users"): "admin",
    ("POST", "/api/v1/users"): "admin",
    ("GET", "/api/v1/users/{name}"): "admin",
    ("PATCH", "/api/v1/users/{name}"): "admin",
    ("POST", "/api/v1/users/{name}/2fa/reset"): "admin",
    ("GET", "/api/v1/users/{name}/tokens"): "admin",
    ("DELETE", "/api/v1/users/{name}/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/audit/verify"): "admin",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/api/v1/keys"): "admin",
    ("GET", "/api/v1/instances"): "admin",
    ("GET", "/api/v1/openapi.json"): "public",
    ("GET", "/api/v1/kinds"): "developer",
    ("GET", "/api/v1/roles"): "viewer",
    ("POST", "/api/v1/queries/{id}/secret-findings/{fingerprint}/allow"): "admin",
    ("DELETE", "/api/v1/queries/{id}/secret-findings/{fingerprint}/allow"): "admin",
}


def real_app(tmp_path: Path) -> web.Application:
    settings = make_settings(tmp_path / "state")
    return build_app(settings, TLSManager(settings.tls, tmp_path / "state"))


def test_every_route_of_the_real_app_declares_a_role(tmp_path: Path) -> None:
    table = access.route_table(real_app(tmp_path))
    assert table, "the application has no routes"
    undeclared = [(method, path) for method, path, rule in table if rule is None]
    assert undeclared == []
    declared = {(method, path): rule.role for method, path, rule in table if rule}
    for key, role in EXPECTED.items():
        assert declared.get(key) == role, key
    access.check_routes(real_app(tmp_path))  # does not raise


async def test_a_route_without_a_declaration_stops_the_start(tmp_path: Path) -> None:
    app = real_app(tmp_path)

    async def forgotten(request: web.Request) -> web.Response:
        return web.json_response({"secret": "data"})

    app.router.add_get("/api/v1/forgotten", forgotten)
    with pytest.raises(UndeclaredRoute, match="GET /api/v1/forgotten"):
        access.check_routes(app)
    runner = web.AppRunner(app)
    with pytest.raises(UndeclaredRoute):
        await runner.setup()  # nothing was opened before the check
    await runner.cleanup()


def test_the_declaration_vocabulary_is_closed() -> None:
    with pytest.raises(ValueError):
        access.requires("superuser")


async def test_route_role_table_is_enforced(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        # /metrics is public to the guard and checks its own rule (tests/test_metrics.py).
        table = [(m, p, r) for m, p, r in access.route_table(appliance.app)
                 if m != "HEAD" and p != "/metrics"]
        assert all(rule is not None for _, _, rule in table)
        clients = {"anonymous": appliance.client()}
        for role in ("viewer", "developer", "admin"):
            clients[role] = appliance.client(token=appliance.tokens[role])
        failures = []
        for method, path, rule in table:
            assert rule is not None
            for identity in IDENTITIES:
                resp = await clients[identity].request(method, fill_path(path), {},
                                                       csrf=False)
                allowed = rule.role == "public" or (
                    identity != "anonymous" and RANK[identity] >= RANK[rule.role])
                if allowed:
                    if resp.code in DENIALS:
                        failures.append(f"{identity} refused on {method} {path}: {resp.code}")
                elif identity == "anonymous":
                    if (resp.status, resp.code) != (401, "unauthenticated"):
                        failures.append(f"anonymous got {resp.status} on {method} {path}")
                elif (resp.status, resp.code) != (403, "forbidden_role"):
                    failures.append(f"{identity} got {resp.status} {resp.code} on "
                                    f"{method} {path} (needs {rule.role})")
        assert failures == []


async def test_cookie_sessions_get_the_same_answers(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        viewer = appliance.client()
        await viewer.login("viewer")
        assert (await viewer.request("GET", "/api/v1/users")).code == "forbidden_role"
        assert (await viewer.request("GET", "/api/v1/audit")).code == "forbidden_role"
        assert (await viewer.request("GET", "/api/v1/users/me")).status == 200
        admin = appliance.client()
        await admin.login("admin")
        assert (await admin.request("GET", "/api/v1/audit")).status == 200
        assert (await admin.request("GET", "/api/v1/audit/verify")).body["ok"] is True


async def test_the_roles_are_served_lowest_first_even_before_2fa_is_set_up(tmp_path: Path) -> None:
    """The console spells no role: it reads the names and their order here, also on the page
    where an admin who must enrol first lands (the only page such a session may open)."""
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        admin = appliance.client()
        assert (await admin.login("admin")).body["2fa_enrolment_required"] is True
        resp = await admin.request("GET", "/api/v1/roles")
        assert resp.status == 200, resp.body
        assert resp.body["roles"] == list(roles.LOWEST_FIRST) == ["viewer", "developer", "admin"]
        assert [roles.rank(role) for role in resp.body["roles"]] == [1, 2, 3]
        # Each signed-in route with the least role its declaration names: what the console opens
        # a page by (it names no role itself).
        routes = resp.body["routes"]
        assert {route: routes.get(route) for route in (
            "GET /api/v1/queries", "POST /api/v1/queries", "GET /api/v1/datasources",
            "GET /api/v1/users", "GET /api/v1/users/me", "PUT /api/v1/egress")} == {
            "GET /api/v1/queries": "viewer", "POST /api/v1/queries": "developer",
            "GET /api/v1/datasources": "developer", "GET /api/v1/users": "admin",
            "GET /api/v1/users/me": "viewer", "PUT /api/v1/egress": "admin"}
        assert set(routes.values()) == set(roles.LOWEST_FIRST)
        assert not any(route.startswith(("HEAD ", "GET /healthz")) for route in routes)
        assert (await appliance.client().request("GET", "/api/v1/roles")).status == 401


def test_a_route_declares_its_role_once(tmp_path: Path) -> None:
    """`declare` gives a role to a route whose handler cannot carry one (static files), and
    refuses a route whose handler already declares one: a route never has two rules, so the
    order in which `rule_of` looks cannot matter."""
    app = web.Application()
    static = app.router.add_static("/files/", tmp_path)
    bare = next(iter(static))
    assert access.rule_of(bare) is None
    access.declare(bare, "admin")
    assert access.rule_of(bare) == access.Rule("admin")

    @access.viewer
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    decorated = app.router.add_get("/viewer", handler)
    with pytest.raises(ValueError, match="already declares"):
        access.declare(decorated, "public")
    assert access.rule_of(decorated) == access.Rule("viewer")
    with pytest.raises(ValueError, match="already declares"):
        access.declare(bare, "viewer")
