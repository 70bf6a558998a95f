"""Sessions over a real TLS server: cookie attributes, hashing at rest, fixation, rotation on
privilege change, logout, idle and absolute expiry, disabled users."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from appliance.auth.sessions import COOKIE_NAME
from tests.support.app import PASSWORDS, running


async def test_login_sets_a_strict_cookie_stored_only_as_a_hash(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        resp = await client.login("viewer")
        assert resp.status == 201, resp.body
        assert resp.body["user"]["username"] == "viewer"
        header = next(h for h in resp.set_cookies if h.startswith(COOKIE_NAME + "="))
        attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
        assert {"httponly", "secure", "path"} <= attributes
        assert "samesite=strict" in header.lower().replace(" ", "")
        raw = resp.session_cookie()
        assert raw is not None and len(raw) >= 22  # >= 128 bits in URL-safe base64
        stored = [row["id_hash"] for row in appliance.query("SELECT id_hash FROM sessions")]
        assert stored == [hashlib.sha256(raw.encode()).hexdigest()]
        assert raw.encode() not in appliance.stored_bytes()
        me = await client.request("GET", "/api/v1/session")
        assert me.status == 200 and me.body["username"] == "viewer" and me.body["role"] == "viewer"


async def test_session_fixation_a_preset_id_is_never_adopted(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        victim = appliance.client()
        first = await victim.login("viewer")
        assert first.status == 201
        old = victim.cookie
        # An attacker-chosen value sent along with the login is not adopted...
        attacker = appliance.client()
        attacker.cookie = "attacker-chosen-session-id-0000000000000"
        resp = await attacker.login("viewer")
        assert resp.status == 201
        assert resp.session_cookie() not in (None, "attacker-chosen-session-id-0000000000000")
        stranger = appliance.client()
        stranger.cookie = "attacker-chosen-session-id-0000000000000"
        assert (await stranger.request("GET", "/api/v1/session")).status == 401
        # ... and logging in again with a live session gives a new id and ends the old one.
        again = await victim.login("viewer")
        assert again.status == 201 and victim.cookie != old
        stale = appliance.client()
        stale.cookie = old
        assert (await stale.request("GET", "/api/v1/session")).status == 401
        assert (await victim.request("GET", "/api/v1/session")).status == 200


async def test_delete_ends_the_session_server_side(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        await client.login("developer")
        kept = client.cookie
        resp = await client.request("DELETE", "/api/v1/session")
        assert resp.status == 204
        assert any(h.startswith(COOKIE_NAME + '=""') or h.startswith(COOKIE_NAME + "=;")
                   for h in resp.set_cookies)
        replay = appliance.client()
        replay.cookie = kept
        assert (await replay.request("GET", "/api/v1/session")).status == 401
        assert appliance.query("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 0
        assert "session.delete" in appliance.audit_actions()


async def test_idle_and_absolute_timeouts(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        idle, absolute = appliance.client(), appliance.client()
        await idle.login("viewer")
        await absolute.login("developer")
        assert (await idle.request("GET", "/api/v1/session")).status == 200
        timeout = appliance.settings.auth.session_idle_timeout
        assert timeout == 1800
        appliance.execute("UPDATE sessions SET last_seen = ? WHERE user_id = "
                          "(SELECT id FROM users WHERE username = 'viewer')",
                          (time.time() - timeout - 1,))
        appliance.execute("UPDATE sessions SET expires_at = ? WHERE user_id = "
                          "(SELECT id FROM users WHERE username = 'developer')",
                          (time.time() - 1,))
        resp = await idle.request("GET", "/api/v1/session")
        assert resp.status == 401 and resp.code == "unauthenticated"
        assert (await absolute.request("GET", "/api/v1/session")).status == 401
        # Expired sessions are removed, not just refused.
        assert appliance.query("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 0


async def test_absolute_timeout_is_set_from_settings(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        before = time.time()
        await client.login("viewer")
        row = appliance.query("SELECT created_at, expires_at FROM sessions")[0]
        assert row["expires_at"] - row["created_at"] == 43200
        assert row["created_at"] >= before - 1


async def test_privilege_change_and_disable_end_sessions(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        admin, viewer, dev = appliance.client(), appliance.client(), appliance.client()
        assert (await admin.login("admin")).status == 201
        await viewer.login("viewer")
        await dev.login("developer")
        resp = await admin.request("PATCH", "/api/v1/users/viewer", {"role": "developer"})
        assert resp.status == 200 and resp.body["role"] == "developer"
        assert (await viewer.request("GET", "/api/v1/session")).status == 401
        relog = await viewer.login("viewer")
        assert relog.status == 201 and relog.body["user"]["role"] == "developer"
        resp = await admin.request("PATCH", "/api/v1/users/developer", {"disabled": True})
        assert resp.status == 200 and resp.body["disabled"] is True
        assert (await dev.request("GET", "/api/v1/session")).status == 401
        failed = await dev.login("developer")
        assert failed.status == 401 and failed.code == "invalid_credentials"


async def test_password_change_ends_the_session_and_needs_the_current_one(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        await client.login("viewer")
        wrong = await client.request("POST", "/api/v1/users/me/password",
                                     {"current_password": "not-the-password-123",
                                      "new_password": "a-new-password-456"})
        assert wrong.status == 401
        short = await client.request("POST", "/api/v1/users/me/password",
                                     {"current_password": PASSWORDS["viewer"],
                                      "new_password": "short"})
        assert short.status == 422 and short.code == "weak_password"
        ok = await client.request("POST", "/api/v1/users/me/password",
                                  {"current_password": PASSWORDS["viewer"],
                                   "new_password": "a-new-password-456"})
        assert ok.status == 200
        assert (await client.request("GET", "/api/v1/session")).status == 401
        assert (await appliance.client().login("viewer")).status == 401
        assert (await appliance.client().login("viewer", "a-new-password-456")).status == 201
