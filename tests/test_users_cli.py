"""`appliance init` (first admin), `users`, `tokens` and `audit` verbs: each family at least once
as a real subprocess (`run_cli`), the other calls in this process (`run_verb`, the same `main`)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from argon2 import PasswordHasher

from tests.conftest import clean_env, run_cli
from tests.support.cli import run_verb


def rows(state: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(state / "appliance.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_init_with_a_password_file_is_idempotent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = tmp_path / "pw"
    secret.write_text("first-admin-password\n")
    first = run_cli("init", "--state-dir", str(state), "--admin-user", "root",
                    "--admin-password-file", str(secret))
    assert first.returncode == 0, first.stderr
    assert "created  admin user 'root'" in first.stdout
    assert "first-admin-password" not in first.stdout + first.stderr
    [(name, role, stored)] = rows(state, "SELECT username, role, password_hash FROM users")
    assert (name, role) == ("root", "admin")
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, "first-admin-password")  # trailing newline dropped
    second = run_cli("init", "--state-dir", str(state), "--admin-password-file", str(secret))
    assert second.returncode == 0
    assert "nothing to do" in second.stdout and "no admin created" in second.stdout
    assert rows(state, "SELECT COUNT(*) FROM users") == [(1,)]


def test_init_without_a_file_prints_a_one_time_password_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run_cli("init", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    match = re.search(r"one-time password for 'admin'.*: (\S+)$", first.stdout, re.M)
    assert match, first.stdout
    [(stored,)] = rows(state, "SELECT password_hash FROM users WHERE username = 'admin'")
    assert PasswordHasher().verify(stored, match[1])
    assert match[1] not in (state / "appliance.db").read_bytes().decode("latin-1")
    second = run_cli("init", "--state-dir", str(state))
    assert second.returncode == 0 and "one-time password" not in second.stdout


def test_init_refuses_a_short_password(tmp_path: Path) -> None:
    state = tmp_path / "state"
    short = tmp_path / "pw"
    short.write_text("short\n")
    result = run_verb("init", "--state-dir", str(state), "--admin-password-file", str(short))
    assert result.returncode != 0
    assert "at least 12 characters" in result.stderr
    assert rows(state, "SELECT COUNT(*) FROM users") == [(0,)]
    missing = run_verb("init", "--state-dir", str(state), "--admin-password-file",
                      str(tmp_path / "nope"))
    assert missing.returncode != 0 and "cannot read password file" in missing.stderr


def test_users_tokens_and_audit_verbs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = clean_env()
    assert run_cli("init", "--state-dir", str(state), env=env).returncode == 0
    pw = tmp_path / "pw"
    pw.write_text("developer-password-1")
    add = run_cli("users", "add", "dana", "--role", "developer", "--password-file", str(pw),
                  "--state-dir", str(state), env=env)
    assert add.returncode == 0, add.stderr
    assert "one-time password" not in add.stdout
    generated = run_verb("users", "add", "vic", "--role", "viewer", "--state-dir", str(state),
                        env=env)
    assert generated.returncode == 0 and "one-time password" in generated.stdout
    dup = run_verb("users", "add", "dana", "--role", "viewer", "--password-file", str(pw),
                  "--state-dir", str(state), env=env)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    bad_role = run_verb("users", "add", "x", "--role", "root", "--state-dir", str(state), env=env)
    assert bad_role.returncode == 2

    listing = run_verb("users", "list", "--state-dir", str(state), env=env)
    assert re.search(r"^dana\tdeveloper\tenabled\toff$", listing.stdout, re.M)

    token = run_cli("tokens", "create", "dana", "--expires", "7", "--state-dir", str(state),
                    env=env)
    assert token.returncode == 0, token.stderr
    raw = token.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"apl_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", raw)
    token_id = raw[4:20]
    listed = run_verb("tokens", "list", "dana", "--state-dir", str(state), env=env)
    assert token_id in listed.stdout and raw not in listed.stdout and "\tactive\t" in listed.stdout
    above = run_verb("tokens", "create", "dana", "--role", "admin", "--state-dir", str(state),
                    env=env)
    assert above.returncode != 0 and "above its owner" in above.stderr

    assert run_verb("users", "disable", "dana", "--state-dir", str(state),
                   env=env).returncode == 0
    assert rows(state, "SELECT disabled FROM users WHERE username = 'dana'") == [(1,)]
    assert run_verb("users", "reset-2fa", "dana", "--state-dir", str(state),
                   env=env).returncode == 0
    revoke = run_verb("tokens", "revoke", token_id, "--state-dir", str(state), env=env)
    assert revoke.returncode == 0
    missing = run_verb("users", "disable", "nobody", "--state-dir", str(state), env=env)
    assert missing.returncode != 0 and "no user named" in missing.stderr

    verify = run_cli("audit", "verify", "--state-dir", str(state), env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    actions = [a for (a,) in rows(state, "SELECT action FROM audit_log ORDER BY seq")]
    # (no token.revoke: disabling dana already revoked the token, recorded in user.disable)
    assert actions == ["user.create", "user.create", "user.create", "token.create",
                       "user.disable", "2fa.reset"]
    actors = {a for (a,) in rows(state, "SELECT actor FROM audit_log WHERE seq > 1")}
    assert len(actors) == 1 and actors.pop().startswith("cli:")
    shown = run_verb("audit", "list", "--limit", "2", "--state-dir", str(state), env=env)
    assert shown.returncode == 0 and shown.stdout.count("\n") == 2


def test_reset_2fa_ends_sessions_and_revokes_tokens(tmp_path: Path) -> None:
    """A 2FA reset leaves nothing made with the old factor alive: sessions and API tokens."""
    state = tmp_path / "state"
    env = clean_env()
    assert run_verb("init", "--state-dir", str(state), env=env).returncode == 0
    pw = tmp_path / "pw"
    pw.write_text("developer-password-1")
    assert run_verb("users", "add", "dana", "--role", "developer", "--password-file", str(pw),
                    "--no-password-change", "--state-dir", str(state), env=env).returncode == 0
    token = run_verb("tokens", "create", "dana", "--state-dir", str(state), env=env)
    assert token.returncode == 0, token.stderr
    token_id = token.stdout.strip().splitlines()[-1][4:20]
    conn = sqlite3.connect(state / "appliance.db")
    with conn:
        conn.execute("INSERT INTO sessions (id_hash, user_id, role, mfa_state, created_at,"
                     " last_seen, expires_at) SELECT 'h', id, role, 'done', 0, 0, 9e9"
                     " FROM users WHERE username = 'dana'")
    conn.close()
    reset = run_verb("users", "reset-2fa", "dana", "--state-dir", str(state), env=env)
    assert reset.returncode == 0, reset.stderr
    assert f"1 session ended, 1 API token revoked for good ({token_id})" in reset.stdout
    assert rows(state, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert rows(state, "SELECT revoked_at IS NOT NULL FROM api_tokens") == [(1,)]
    again = run_verb("users", "reset-2fa", "dana", "--state-dir", str(state), env=env)
    assert "0 sessions ended, 0 API tokens revoked" in again.stdout


def test_every_verb_has_help() -> None:
    for verb in (["users"], ["users", "add"], ["users", "reset-2fa"], ["tokens", "create"],
                 ["audit", "verify"]):
        result = run_verb(*verb, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_disable_revokes_tokens_for_good_and_2fa_rule_for_cli_tokens(tmp_path: Path) -> None:
    """4f: a re-enabled user got their old tokens back, and `tokens create` made working tokens
    for an admin who had not enrolled the 2FA their role requires."""
    state = tmp_path / "state"
    env = clean_env()
    assert run_verb("init", "--state-dir", str(state), env=env).returncode == 0
    pw = tmp_path / "pw"
    pw.write_text("developer-password-1")
    assert run_verb("users", "add", "dana", "--role", "developer", "--password-file", str(pw),
                   "--state-dir", str(state), env=env).returncode == 0
    made = run_verb("tokens", "create", "dana", "--state-dir", str(state), env=env)
    assert made.returncode == 0, made.stderr
    token_id = made.stdout.strip().splitlines()[-1][4:20]

    disabled = run_verb("users", "disable", "dana", "--state-dir", str(state), env=env)
    assert disabled.returncode == 0
    assert f"revoked 1 API token(s) for good: {token_id}" in disabled.stdout
    enabled = run_verb("users", "enable", "dana", "--state-dir", str(state), env=env)
    assert enabled.returncode == 0 and "no API token comes back" in enabled.stdout
    assert rows(state, "SELECT revoked_at IS NOT NULL FROM api_tokens") == [(1,)]
    listed = run_verb("tokens", "list", "dana", "--state-dir", str(state), env=env)
    assert "\tinactive\t" in listed.stdout

    # The first admin has not enrolled 2FA, which the admin role requires by default.
    refused = run_verb("tokens", "create", "admin", "--state-dir", str(state), env=env)
    assert refused.returncode != 0
    assert "has not enrolled two-factor login" in refused.stderr
    assert "--allow-without-2fa" in refused.stderr and "apl_" not in refused.stdout
    assert rows(state, "SELECT COUNT(*) FROM api_tokens") == [(1,)]
    waived = run_verb("tokens", "create", "admin", "--allow-without-2fa", "--state-dir",
                     str(state), env=env)
    assert waived.returncode == 0 and "acts without it" in waived.stderr
    [(details,)] = rows(state, "SELECT details FROM audit_log WHERE action = 'token.create'"
                               " ORDER BY seq DESC LIMIT 1")
    assert '"without_2fa":true' in details.replace(" ", "")
    # A lower role that does not require 2FA, and a metrics token, need no flag.
    assert run_verb("tokens", "create", "admin", "--role", "developer", "--state-dir",
                   str(state), env=env).returncode == 0
    metrics = run_verb("tokens", "create", "admin", "--scope", "metrics", "--state-dir",
                      str(state), env=env)
    assert metrics.returncode == 0 and "GET /metrics only" in metrics.stdout
    assert "\tmetrics\t" in run_verb("tokens", "list", "admin", "--state-dir", str(state),
                                   env=env).stdout
    bad = run_verb("tokens", "create", "dana", "--scope", "metrics", "--state-dir", str(state),
                  env=env)
    assert bad.returncode != 0 and "must belong to an admin" in bad.stderr
    assert run_verb("tokens", "create", "admin", "--scope", "root", "--state-dir", str(state),
                   env=env).returncode == 2
