"""Fail-closed audit over a real server: when the audit entry cannot be written, the request
fails with 503 and the action it describes did not happen."""

from __future__ import annotations

from pathlib import Path

from tests.support.app import Appliance, running


def count(appliance: Appliance, sql: str) -> int:
    return int(appliance.query(sql)[0][0])


async def test_actions_do_not_happen_when_the_audit_cannot_be_written(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        viewer = appliance.client()
        assert (await viewer.login("viewer")).status == 201
        entries_before = count(appliance, "SELECT COUNT(*) FROM audit_log")
        appliance.outside.refuse_audit()

        created = await admin.request("POST", "/api/v1/users", {
            "username": "ghost", "role": "viewer", "password": "ghost-password-0123"})
        assert created.status == 503 and created.code == "audit_unavailable"
        disabled = await admin.request("PATCH", "/api/v1/users/viewer", {"disabled": True})
        assert disabled.status == 503
        promoted = await admin.request("PATCH", "/api/v1/users/viewer", {"role": "admin"})
        assert promoted.status == 503
        token = await viewer.request("POST", "/api/v1/users/me/tokens", {"name": "t"})
        assert token.status == 503 and "token" not in (token.body or {})
        login = await appliance.client().login("developer")
        assert login.status == 503 and login.session_cookie() is None
        logout = await viewer.request("DELETE", "/api/v1/session")
        assert logout.status == 503

        appliance.outside.allow_audit()
        assert count(appliance, "SELECT COUNT(*) FROM users WHERE username = 'ghost'") == 0
        row = appliance.query("SELECT role, disabled FROM users WHERE username = 'viewer'")[0]
        assert (row["role"], row["disabled"]) == ("viewer", 0)
        assert count(appliance, "SELECT COUNT(*) FROM api_tokens WHERE name = 't'") == 0
        assert count(appliance, "SELECT COUNT(*) FROM sessions") == 1  # the viewer's, still live
        assert (await viewer.request("GET", "/api/v1/session")).status == 200
        assert count(appliance, "SELECT COUNT(*) FROM audit_log") == entries_before
        # With the audit log writable again, the same request works and is recorded.
        again = await admin.request("POST", "/api/v1/users", {
            "username": "ghost", "role": "viewer", "password": "ghost-password-0123"})
        assert again.status == 201
        assert appliance.audit_actions()[-1] == "user.create"
        assert (await admin.request("GET", "/api/v1/audit/verify")).body["ok"] is True


async def test_failed_logins_are_not_counted_without_their_audit_entry(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        appliance.outside.refuse_audit()
        resp = await appliance.client().login("viewer", "wrong-password-0000")
        assert resp.status == 503
        appliance.outside.allow_audit()
        assert count(appliance, "SELECT COUNT(*) FROM login_throttle") == 0
