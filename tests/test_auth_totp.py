"""TOTP two-factor login: required enrolment, QR/URI, confirmation, replay refusal, recovery codes
used once, the secret sealed by the keyring, admin reset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyotp

from appliance.auth.totp import matching_step
from appliance.secret import Secret
from tests.support.app import enrol, running, secret_from_uri


def test_a_code_is_accepted_once_per_step() -> None:
    secret = Secret(pyotp.random_base32())
    totp = pyotp.TOTP(secret.reveal())
    now = time.time()
    step = int(now // 30)
    assert matching_step(secret, totp.at(now), after=0, now=now) == step
    assert matching_step(secret, totp.at(now), after=step, now=now) is None  # replay
    assert matching_step(secret, totp.at(now - 30), after=0, now=now) == step - 1  # drift
    assert matching_step(secret, totp.at(now - 90), after=0, now=now) is None  # too old
    assert matching_step(secret, "12345", after=0, now=now) is None
    assert matching_step(secret, "abcdef", after=0, now=now) is None


async def test_required_enrolment_blocks_everything_else_until_done(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        client = appliance.client()
        resp = await client.login("admin")
        assert resp.status == 201 and resp.body["2fa_enrolment_required"] is True
        blocked = await client.request("GET", "/api/v1/users")
        assert blocked.status == 403 and blocked.code == "2fa_enrolment_required"
        assert (await client.request("GET", "/api/v1/audit")).code == "2fa_enrolment_required"
        assert (await client.request("GET", "/api/v1/session")).status == 200

        start = await client.request("POST", "/api/v1/users/me/2fa")
        assert start.status == 201
        uri = start.body["otpauth_uri"]
        assert uri.startswith("otpauth://totp/") and "issuer=Appliance" in uri
        assert start.body["qr_svg"].lstrip().startswith("<svg")
        secret = secret_from_uri(uri)
        # Sealed by the keyring: not in the store in clear.
        assert secret.encode() not in appliance.stored_bytes()
        assert appliance.query("SELECT field FROM sealed_fields WHERE kind = 'user'")[0][
            "field"] == "totp_pending"

        bad = await client.request("POST", "/api/v1/users/me/2fa/confirm", {"code": "000000"})
        assert bad.status == 400 and bad.code == "bad_code"
        old_cookie = client.cookie
        totp = pyotp.TOTP(secret)
        confirm = await client.request("POST", "/api/v1/users/me/2fa/confirm",
                                       {"code": totp.now()})
        assert confirm.status == 200
        codes = confirm.body["recovery_codes"]
        assert len(codes) == 10 and len(set(codes)) == 10
        # A new session id on the privilege change; the old one is dead.
        new_cookie = confirm.session_cookie()
        assert new_cookie and new_cookie != old_cookie
        stale = appliance.client()
        stale.cookie = old_cookie
        assert (await stale.request("GET", "/api/v1/session")).status == 401
        client.cookie = new_cookie
        assert (await client.request("GET", "/api/v1/users")).status == 200
        # Recovery codes are stored hashed only.
        stored = appliance.query("SELECT code_hash FROM recovery_codes")
        assert len(stored) == 10
        dump = appliance.stored_bytes()
        assert not any(code.encode() in dump for code in codes)
        assert {"2fa.enrol_start", "2fa.enable", "session.rotate"} <= set(
            appliance.audit_actions())


async def test_login_needs_a_fresh_code_and_refuses_replay(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        _, totp, _ = await enrol(appliance)
        client = appliance.client()
        missing = await client.login("admin")
        assert missing.status == 401 and missing.code == "totp_required"
        # The code used for the confirmation is spent for its window.
        step = appliance.query("SELECT totp_last_step FROM users WHERE username = 'admin'")[0][0]
        replay = await client.login("admin", totp=totp.at(step * 30))
        assert replay.status == 401 and replay.code == "invalid_credentials"
        wrong_code = await client.login("admin", totp="123456" if totp.now() != "123456"
                                        else "654321")
        wrong_password = await client.login("admin", "wrong-password-0000", totp=totp.now())
        assert wrong_code.body == wrong_password.body == replay.body
        # The next step's code (within the allowed drift) works, once.
        fresh = totp.at((step + 1) * 30)
        ok = await client.login("admin", totp=fresh)
        assert ok.status == 201, ok.body
        assert (await client.request("GET", "/api/v1/users")).status == 200
        again = await appliance.client().login("admin", totp=fresh)
        assert again.status == 401 and again.code == "invalid_credentials"


async def test_recovery_codes_work_once(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        _, _, codes = await enrol(appliance)
        first = await appliance.client().login("admin", totp=codes[0])
        assert first.status == 201, first.body
        second = await appliance.client().login("admin", totp=codes[0])
        assert second.status == 401 and second.code == "invalid_credentials"
        # Formatting does not matter; another unused code still works.
        other = await appliance.client().login("admin", totp=codes[1].upper().replace("-", " "))
        assert other.status == 201
        actions = appliance.audit_actions()
        assert actions.count("2fa.recovery_code_used") == 2
        me = await appliance.client().login("admin", totp=codes[2])
        assert me.status == 201


async def test_admin_reset_removes_the_secret_and_codes(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="admin,developer") as appliance:
        admin, _, _ = await enrol(appliance)
        dev, _, _ = await enrol(appliance, "developer")
        made = await dev.request("POST", "/api/v1/users/me/tokens", {"name": "ci"})
        assert made.status == 201, made.body
        token = appliance.client(token=made.body["token"])
        assert (await token.request("GET", "/api/v1/users/me")).status == 200
        resp = await admin.request("POST", "/api/v1/users/developer/2fa/reset")
        assert resp.status == 200 and resp.body["totp_enabled"] is False
        assert (await dev.request("GET", "/api/v1/session")).status == 401
        # A token made with the old factor dies with it.
        assert resp.body["tokens_revoked"] == [made.body["id"]]
        assert resp.body["sessions_ended"] == 1
        assert (await token.request("GET", "/api/v1/users/me")).status == 401
        [entry] = appliance.query("SELECT details FROM audit_log WHERE action = '2fa.reset'")
        assert json.loads(entry[0]) == {"sessions_ended": 1, "revoked": [made.body["id"]]}
        user_id = appliance.query("SELECT id FROM users WHERE username = 'developer'")[0][0]
        assert appliance.query("SELECT COUNT(*) FROM sealed_fields WHERE record_id = ?",
                               (user_id,))[0][0] == 0
        assert appliance.query("SELECT COUNT(*) FROM recovery_codes WHERE user_id = ?",
                               (user_id,))[0][0] == 0
        # Developers must enrol again before doing anything.
        fresh = appliance.client()
        login = await fresh.login("developer")
        assert login.status == 201 and login.body["2fa_enrolment_required"] is True
        # Enrolling twice is refused once enabled; a token cannot enrol.
        again = await admin.request("POST", "/api/v1/users/me/2fa")
        assert again.status == 409
