"""CSRF: cookie-authenticated state-changing requests need a same-origin Origin and the custom
header; bearer requests are exempt; a login from a foreign origin is refused."""

from __future__ import annotations

from pathlib import Path

from tests.support.app import running

NEW_USER = {"username": "carol", "role": "viewer", "password": "carol-password-0123"}


async def test_cookie_requests_need_origin_and_header(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        admin = appliance.client()
        assert (await admin.login("admin")).status == 201

        cases = {
            "no origin, no header": dict(csrf=False),
            "no origin": dict(csrf=False, headers={"X-Appliance-CSRF": "1"}),
            "foreign origin": dict(origin="https://evil.example", csrf=True),
            "origin with other port": dict(origin="https://127.0.0.1:1", csrf=True),
            "plain-http origin": dict(origin=appliance.origin.replace("https:", "http:")),
            "null origin": dict(origin="null"),
            "no custom header": dict(csrf=False, headers={"Origin": appliance.origin}),
            "wrong header value": dict(csrf=False, headers={"Origin": appliance.origin,
                                                            "X-Appliance-CSRF": "0"}),
        }
        for name, kwargs in cases.items():
            resp = await admin.request("POST", "/api/v1/users", NEW_USER, **kwargs)
            assert resp.status == 403, name
            assert resp.code == "csrf", name
        # Nothing was created by any of the refused requests.
        assert appliance.query("SELECT COUNT(*) AS n FROM users WHERE username = 'carol'"
                               )[0]["n"] == 0
        ok = await admin.request("POST", "/api/v1/users", NEW_USER)
        assert ok.status == 201, ok.body
        # Safe methods need neither.
        assert (await admin.request("GET", "/api/v1/users", csrf=False)).status == 200


async def test_bearer_requests_are_exempt(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        bearer = appliance.client(token=appliance.tokens["admin"])
        resp = await bearer.request("POST", "/api/v1/users", NEW_USER, csrf=False)
        assert resp.status == 201, resp.body


async def test_logout_is_protected_too(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        await client.login("viewer")
        resp = await client.request("DELETE", "/api/v1/session", origin="https://evil.example")
        assert resp.status == 403 and resp.code == "csrf"
        assert (await client.request("GET", "/api/v1/session")).status == 200


async def test_login_from_a_foreign_origin_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        resp = await client.request("POST", "/api/v1/session",
                                    {"username": "viewer", "password": "viewer-password-0123"},
                                    origin="https://evil.example")
        assert resp.status == 403 and resp.code == "csrf"
        assert resp.session_cookie() is None
        # A form post (not JSON) cannot log in either.
        form = await client.request("POST", "/api/v1/session", csrf=False,
                                    raw_body=b"username=viewer&password=viewer-password-0123",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status == 415
