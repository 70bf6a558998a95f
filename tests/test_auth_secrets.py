"""No password, TOTP secret or code, recovery code, token or session id in any log line (JSON or
text) or in any audit entry, across a full tour of the auth API."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.logs import JSONFormatter, TextFormatter
from tests.support.app import PASSWORDS, running, secret_from_uri, totp_from_uri


async def test_no_secret_reaches_a_log_line_or_the_audit_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = list(PASSWORDS.values())
    async with running(tmp_path / "state", require_2fa="admin", tokens=True) as appliance:
        secrets += list(appliance.tokens.values())
        admin = appliance.client()
        resp = await admin.login("admin")
        secrets.append(admin.cookie or "")
        start = await admin.request("POST", "/api/v1/users/me/2fa")
        secrets.append(secret_from_uri(start.body["otpauth_uri"]))
        totp = totp_from_uri(start.body["otpauth_uri"])
        code = totp.now()
        confirm = await admin.request("POST", "/api/v1/users/me/2fa/confirm", {"code": code})
        recovery = confirm.body["recovery_codes"]
        secrets += recovery
        admin.cookie = confirm.session_cookie()
        secrets.append(admin.cookie or "")

        # Failures of every kind, including a password typed into the user name field.
        anon = appliance.client()
        await anon.login(PASSWORDS["viewer"], PASSWORDS["viewer"])
        await anon.login("admin", "wrong-password-typed-here")
        secrets.append("wrong-password-typed-here")
        await anon.login("admin", totp="999999")
        await anon.login("admin", totp=code)  # replay
        resp = await anon.login("admin", totp=recovery[0])
        assert resp.status == 201
        secrets.append(anon.cookie or "")

        created = await admin.request("POST", "/api/v1/users", {
            "username": "erin", "role": "developer", "password": "erin-password-0123"})
        assert created.status == 201
        secrets.append("erin-password-0123")
        token = await admin.request("POST", "/api/v1/users/me/tokens", {"name": "automation"})
        secrets.append(token.body["token"])
        bearer = appliance.client(token=token.body["token"])
        assert (await bearer.request("GET", "/api/v1/users")).status == 200
        await appliance.client(token=token.body["token"] + "x").request("GET", "/api/v1/users")
        erin = appliance.client()
        await erin.login("erin", "erin-password-0123")
        secrets.append(erin.cookie or "")
        await erin.request("POST", "/api/v1/users/me/password", {
            "current_password": "erin-password-0123", "new_password": "erin-new-password-456"})
        secrets.append("erin-new-password-456")
        await admin.request("PATCH", "/api/v1/users/erin", {"password": "erin-reset-pass-789"})
        secrets.append("erin-reset-pass-789")
        await admin.request("DELETE", "/api/v1/session")

        audit_rows = appliance.query("SELECT * FROM audit_log ORDER BY seq")
        assert len(audit_rows) > 15
        audit_text = "\n".join(" ".join(str(v) for v in tuple(row)) for row in audit_rows)

    secrets = [s for s in secrets if s]
    assert len(secrets) > 20
    lines = []
    for record in caplog.records:
        lines.append(JSONFormatter().format(record))
        lines.append(TextFormatter().format(record))
    assert any('"request"' in line for line in lines)  # the access log was captured
    log_text = "\n".join(lines)
    for secret in secrets:
        assert secret not in log_text, "a secret reached a log line"
        assert secret not in audit_text, "a secret reached the audit log"
    # A password typed as a user name is not recorded either.
    assert "user:<unknown>" in audit_text


def test_debug_logging_does_not_print_sql_parameters() -> None:
    """aiosqlite's DEBUG records quote every statement with its parameters (a user name typed at
    login may be a password): the running application keeps that logger above DEBUG."""
    from appliance import logs
    from appliance.http import app  # noqa: F401 - what the server imports

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("json", "debug")
        assert logging.getLogger("aiosqlite").getEffectiveLevel() > logging.DEBUG
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
