"""Self-service recovery codes over the real API: new codes only with the password and a current
code from the authenticator, the old codes dead at once, shown once, audited without a code."""

from __future__ import annotations

import json
import time
from pathlib import Path

from appliance.auth.throttle import THRESHOLD
from tests.support.app import enrol, running

PATH = "/api/v1/users/me/2fa/recovery-codes"


async def test_regenerating_recovery_codes(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        client, totp, old_codes = await enrol(appliance)
        later = totp.at(time.time() + 30)  # the enrolment spent this step's code

        # Each refusal changes nothing and says why in words.
        wrong_password = await client.request("POST", PATH, {"password": "not-the-password",
                                                             "code": later})
        assert wrong_password.status == 401 and wrong_password.code == "invalid_credentials"
        wrong_code = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                         "code": "000000" if later != "000000"
                                                         else "111111"})
        assert wrong_code.status == 401 and wrong_code.code == "invalid_credentials"
        recovery = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                       "code": old_codes[0]})
        assert recovery.status == 400 and recovery.body["error"]["field"] == "code"
        assert "authenticator" in recovery.body["error"]["message"]
        missing = await client.request("POST", PATH, {"password": "admin-password-0123"})
        assert missing.status == 400 and missing.body["error"]["field"] == "code"
        # Nothing was spent: the first old code still logs in (checked at the end).

        done = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                   "code": later})
        assert done.status == 201, done.body
        new_codes = done.body["recovery_codes"]
        assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
        me = await client.request("GET", "/api/v1/users/me")
        assert me.body["recovery_codes_left"] == 10
        # The same TOTP code is never accepted twice.
        again = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                    "code": later})
        assert again.status == 401

        # Old codes are dead; a new one works once.
        fresh = appliance.client()
        assert (await fresh.login("admin", totp=old_codes[0])).status == 401
        assert (await fresh.login("admin", totp=new_codes[0])).status == 201
        assert (await appliance.client().login("admin", totp=new_codes[0])).status == 401

        rows = appliance.query("SELECT outcome, details FROM audit_log WHERE action = "
                               "'2fa.recovery_codes_regenerate' ORDER BY seq")
        assert [r["outcome"] for r in rows] == ["failed", "failed", "ok", "failed"]
        assert json.loads(rows[2]["details"]) == {"count": 10}
        everything = json.dumps(appliance.query("SELECT * FROM audit_log"))
        assert not any(code in everything for code in new_codes + old_codes)
        assert later not in everything


async def test_without_2fa_there_is_nothing_to_regenerate(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        assert (await client.login("admin")).status == 201
        resp = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                   "code": "123456"})
        assert resp.status == 409 and resp.code == "2fa_not_enabled"


async def test_new_codes_are_throttled_like_a_login(tmp_path: Path) -> None:
    """A stolen session cannot guess the password here: wrong passwords count on the login's
    counters for the account and the address, and a locked pair is refused (429) before any
    check, even with the right password and code; each refusal is audited."""
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        client, totp, _ = await enrol(appliance)
        later = totp.at(time.time() + 30)
        for i in range(THRESHOLD):
            wrong = await client.request("POST", PATH, {"password": f"guess-{i:04d}-password",
                                                        "code": later})
            assert wrong.status == 401, wrong.body
        locked = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                     "code": later})
        assert locked.status == 429 and locked.code == "throttled"
        assert int(locked.headers["Retry-After"]) >= 1
        assert "too many failed attempts" in locked.body["error"]["message"]
        assert appliance.query("SELECT COUNT(*) AS n FROM recovery_codes WHERE used_at IS NULL"
                               )[0]["n"] == 10  # the old codes, untouched
        # The same counters as a login: the account is locked from this address there too.
        assert (await appliance.client().login("admin", totp=later)).status == 429
        rows = appliance.query("SELECT outcome, details FROM audit_log WHERE action = "
                               "'2fa.recovery_codes_regenerate' ORDER BY seq")
        assert [r["outcome"] for r in rows] == ["failed"] * THRESHOLD + ["denied"]
        assert json.loads(rows[-1]["details"]) == {"reason": "throttled", "limit": "pair"}

        # When the lock runs out, the right password and code make new codes.
        appliance.execute("UPDATE login_throttle SET locked_until = ?", (time.time() - 1,))
        done = await client.request("POST", PATH, {"password": "admin-password-0123",
                                                   "code": later})
        assert done.status == 201, done.body


async def test_a_password_change_is_throttled_like_a_login(tmp_path: Path) -> None:
    """The same for the current password of a password change."""
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        assert (await client.login("viewer")).status == 201
        path = "/api/v1/users/me/password"
        for i in range(THRESHOLD):
            wrong = await client.request("POST", path, {"current_password": f"guess-{i:04d}-pw",
                                                        "new_password": "a-new-password-0123"})
            assert wrong.status == 401, wrong.body
        locked = await client.request("POST", path, {"current_password": "viewer-password-0123",
                                                      "new_password": "a-new-password-0123"})
        assert locked.status == 429 and locked.code == "throttled"
        assert (await appliance.client().login("viewer")).status == 429  # the same counters
        appliance.execute("UPDATE login_throttle SET locked_until = ?", (time.time() - 1,))
        assert (await appliance.client().login("viewer")).status == 201  # the password stayed
        rows = appliance.query("SELECT outcome FROM audit_log WHERE action = "
                               "'user.password_change' ORDER BY seq")
        assert [r["outcome"] for r in rows] == ["failed"] * THRESHOLD + ["denied"]
