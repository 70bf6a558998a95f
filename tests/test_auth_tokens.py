"""API tokens: shown once, stored hashed, never above the owner's role, revocable, expiring, and
revoked for good when the owner is disabled."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from appliance import timestamps
from tests.support.app import Client, Response, running


async def test_token_lifecycle(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        dev = appliance.client()
        await dev.login("developer")
        created = await dev.request("POST", "/api/v1/users/me/tokens",
                                    {"name": "ci", "expires_days": 30})
        assert created.status == 201, created.body
        raw = created.body["token"]
        assert raw.startswith("apl_") and created.body["role"] == "developer"
        assert timestamps.parse(created.body["expires_at"]) > time.time() + 29 * 86400
        # Shown once: never in a listing, stored only as a hash.
        listing = await dev.request("GET", "/api/v1/users/me/tokens")
        assert listing.status == 200 and raw not in str(listing.body)
        assert "token" not in listing.body["tokens"][0]
        secret = raw[len("apl_") + 16 + 1:]
        dump = appliance.stored_bytes()
        assert secret.encode() not in dump
        assert appliance.query("SELECT secret_hash FROM api_tokens")[0][0] == hashlib.sha256(
            secret.encode()).hexdigest()

        bearer = appliance.client(token=raw)
        me = await bearer.request("GET", "/api/v1/session")
        assert me.status == 200 and me.body["via"] == "token" and me.body["role"] == "developer"
        # A token cannot mint tokens or end a session.
        assert (await bearer.request("POST", "/api/v1/users/me/tokens", {"name": "x"})
                ).code == "session_required"
        # Revoked: dead at once.
        revoke = await dev.request("DELETE", f"/api/v1/users/me/tokens/{created.body['id']}")
        assert revoke.status == 200 and revoke.body["active"] is False
        dead = await bearer.request("GET", "/api/v1/session")
        assert dead.status == 401 and dead.code == "invalid_token"
        assert {"token.create", "token.revoke"} <= set(appliance.audit_actions())


async def test_bad_tokens_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        good = appliance.tokens["viewer"]
        token_id, secret = good[4:].split("_", 1)
        tampered = f"apl_{token_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
        for value in (tampered, "apl_0000000000000000_" + "a" * 43, "garbage", "apl_",
                      good + "x"):
            resp = await appliance.client(token=value).request("GET", "/api/v1/session")
            assert resp.status == 401, value
        basic = await appliance.client().request("GET", "/api/v1/session",
                                                 headers={"Authorization": "Basic eDp5"})
        assert basic.status == 401
        assert (await appliance.client(token=good).request("GET", "/api/v1/session")
                ).status == 200


async def test_expired_token_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        bearer = appliance.client(token=appliance.tokens["developer"])
        assert (await bearer.request("GET", "/api/v1/session")).status == 200
        appliance.execute("UPDATE api_tokens SET expires_at = ?", (time.time() - 1,))
        assert (await bearer.request_until("GET", "/api/v1/session",
                                           lambda r: r.status == 401)).status == 401


async def test_disabled_owner_token_stops_at_once(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        bearer = appliance.client(token=appliance.tokens["developer"])
        assert (await bearer.request("GET", "/api/v1/session")).status == 200
        token_id = appliance.tokens["developer"][4:20]
        admin = appliance.client(token=appliance.tokens["admin"])
        resp = await admin.request("PATCH", "/api/v1/users/developer", {"disabled": True})
        assert resp.status == 200 and resp.body["tokens_revoked"] == [token_id]
        dead = await bearer.request("GET", "/api/v1/session")
        assert dead.status == 401 and dead.code == "invalid_token"
        # 4f: enabled again, the user gets no token back: disabling revoked it for good.
        again = await admin.request("PATCH", "/api/v1/users/developer", {"disabled": False})
        assert again.status == 200 and again.body["tokens_revoked"] == []
        assert (await bearer.request("GET", "/api/v1/session")).status == 401
        [row] = appliance.query("SELECT revoked_at FROM api_tokens WHERE id = ?", (token_id,))
        assert row["revoked_at"] is not None
        listed = await admin.request("GET", "/api/v1/users/developer/tokens")
        assert [t["active"] for t in listed.body["tokens"]] == [False]
        [entry] = appliance.query("SELECT details FROM audit_log WHERE action = 'user.disable'")
        assert token_id in entry["details"]
        # A token left live by a disable from before the rule is revoked when the user is enabled.
        appliance.execute("UPDATE users SET disabled = 1 WHERE username = 'viewer'")
        viewer_id = appliance.tokens["viewer"][4:20]
        enable = await admin.request("PATCH", "/api/v1/users/viewer", {"disabled": False})
        assert enable.status == 200 and enable.body["tokens_revoked"] == [viewer_id]
        assert (await appliance.client(token=appliance.tokens["viewer"]).request(
            "GET", "/api/v1/session")).status == 401


async def test_a_token_never_acts_above_its_owner(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        dev = appliance.client()
        await dev.login("developer")
        above = await dev.request("POST", "/api/v1/users/me/tokens",
                                  {"name": "sneaky", "role": "admin"})
        assert above.status == 403 and above.code == "role_above_owner"
        lower = await dev.request("POST", "/api/v1/users/me/tokens",
                                  {"name": "read-only", "role": "viewer"})
        assert lower.status == 201 and lower.body["role"] == "viewer"
        viewer_token = appliance.client(token=lower.body["token"])
        assert (await viewer_token.request("GET", "/api/v1/session")).body["role"] == "viewer"

        # An admin's token keeps the admin role only while its owner is an admin.
        second_admin = appliance.client(token=appliance.tokens["admin"])
        assert (await second_admin.request("POST", "/api/v1/users", {
            "username": "boss", "role": "admin", "password": "boss-password-0123"})).status == 201
        boss = appliance.client()
        await boss.login("boss", "boss-password-0123")
        # The admin chose that password: boss chooses one before anything else.
        assert (await boss.request("POST", "/api/v1/users/me/password", {
            "current_password": "boss-password-0123",
            "new_password": "boss-own-password-0123"})).status == 200
        await boss.login("boss", "boss-own-password-0123")
        made = await boss.request("POST", "/api/v1/users/me/tokens", {"name": "boss-admin"})
        assert made.status == 201 and made.body["role"] == "admin"
        boss_token = appliance.client(token=made.body["token"])
        assert (await boss_token.request("GET", "/api/v1/users")).status == 200
        demote = await second_admin.request("PATCH", "/api/v1/users/boss", {"role": "developer"})
        assert demote.status == 200
        capped = await boss_token.request("GET", "/api/v1/users")
        assert capped.status == 403 and capped.code == "forbidden_role"
        assert (await boss_token.request("GET", "/api/v1/session")).body["role"] == "developer"
        # A demoted owner cannot create an admin token either.
        await boss.login("boss", "boss-own-password-0123")
        again = await boss.request("POST", "/api/v1/users/me/tokens",
                                   {"name": "x", "role": "admin"})
        assert again.status == 403 and again.code == "role_above_owner"


async def test_a_token_for_an_unenrolled_user_whose_role_requires_2fa(tmp_path: Path) -> None:
    """The HTTP path follows the same rule as the CLI (which alone can waive it)."""
    from appliance.audit import Context
    from appliance.errors import Forbidden
    from appliance.http.app_keys import CORE

    async with running(tmp_path / "state", require_2fa="admin,developer") as appliance:
        auth = appliance.app[CORE].auth
        dev = await auth.users.require("developer")
        try:
            await auth.create_token(dev, name="x", role=None, expires_days=None,
                                    context=Context(actor="test"))
        except Forbidden as exc:
            assert exc.code == "2fa_enrolment_required"
        else:
            raise AssertionError("a token for an unenrolled developer was created")
        # A role that does not require 2FA, or a metrics token (admins only), is fine.
        _, info = await auth.create_token(dev, name="ro", role="viewer", expires_days=None,
                                          context=Context(actor="test"))
        assert info.role == "viewer" and info.scope == "api"
        # Over HTTP the user cannot even get that far: the session must enrol first.
        client = appliance.client()
        await client.login("developer")
        resp = await client.request("POST", "/api/v1/users/me/tokens", {"name": "x"})
        assert resp.status == 403 and resp.code == "2fa_enrolment_required"


async def test_bad_token_requests(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        dev = appliance.client()
        await dev.login("developer")
        for body, status in (({"name": ""}, 400), ({"name": "x", "expires_days": -1}, 400),
                             ({"name": "x", "expires_days": "soon"}, 400),
                             ({"name": "x", "role": "root"}, 400), ({}, 400),
                             ({"name": "x", "scope": "everything"}, 400),
                             ({"name": "x", "scope": ["api"]}, 400),
                             ({"name": "x", "scope": "metrics"}, 403)):  # not an admin
            resp = await dev.request("POST", "/api/v1/users/me/tokens", body)
            assert resp.status == status, body
        missing = await dev.request("DELETE", "/api/v1/users/me/tokens/0000000000000000")
        assert missing.status == 404


async def test_a_change_by_another_process_counts_from_the_next_request(tmp_path: Path) -> None:
    """Token rows are kept between requests until the store changes: a change written by another
    connection (the CLI, a separate process) must count, each kind of change: at once on SQLite
    (the file's data_version is read per request), within the second the Store interface
    promises on PostgreSQL (a notification, or the once-a-second poll)."""
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        async def soon(client: Client, check: Callable[[Response], bool]) -> Response:
            return await client.request_until("GET", "/api/v1/session", check)

        bearer = appliance.client(token=appliance.tokens["developer"])
        for _ in range(3):  # read once, then served from memory
            me = await bearer.request("GET", "/api/v1/session")
            assert me.status == 200 and me.body["role"] == "developer"

        appliance.execute("UPDATE users SET role = 'viewer' WHERE username = 'developer'")
        assert (await soon(bearer, lambda r: r.body.get("role") == "viewer")).body["role"] == "viewer"
        appliance.execute("UPDATE users SET disabled = 1 WHERE username = 'developer'")
        assert (await soon(bearer, lambda r: r.status == 401)).status == 401
        appliance.execute("UPDATE users SET disabled = 0 WHERE username = 'developer'")
        assert (await soon(bearer, lambda r: r.status == 200)).status == 200
        appliance.execute("UPDATE api_tokens SET revoked_at = 1 WHERE id = ?",
                          (appliance.tokens["developer"][4:20],))
        dead = await soon(bearer, lambda r: r.status == 401)
        assert dead.status == 401 and dead.code == "invalid_token"

        # Query runs commit audit entries in between: they neither hide a change nor break it.
        admin = appliance.client(token=appliance.tokens["admin"])
        assert (await admin.request("GET", "/api/v1/session")).status == 200
        await admin.request("GET", "/api/v1/queries")
        appliance.execute("UPDATE api_tokens SET expires_at = 1 WHERE id = ?",
                          (appliance.tokens["admin"][4:20],))
        assert (await soon(admin, lambda r: r.status == 401)).status == 401
