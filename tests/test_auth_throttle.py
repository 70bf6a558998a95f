"""Login throttling: after 5 failures per account and per client address, exponential backoff;
one generic failure message for unknown user, wrong password and wrong code."""

from __future__ import annotations

import re
import time
from pathlib import Path

from appliance.auth.throttle import BASE_DELAY, THRESHOLD, delay_for, throttle_key
from tests.test_auth_support import PASSWORDS, running


def test_backoff_doubles_and_is_capped() -> None:
    assert [delay_for(n) for n in range(THRESHOLD)] == [0.0] * THRESHOLD
    assert delay_for(THRESHOLD) == BASE_DELAY
    assert delay_for(THRESHOLD + 1) == 2 * BASE_DELAY
    assert delay_for(THRESHOLD + 3) == 8 * BASE_DELAY
    assert delay_for(10_000) == 900.0


async def test_one_generic_message_for_every_failure(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        unknown = await client.login("nobody", "whatever-password-1")
        wrong = await client.login("viewer", "wrong-password-0000")
        disabled_user = "developer"
        appliance.execute("UPDATE users SET disabled = 1 WHERE username = ?", (disabled_user,))
        disabled = await client.login(disabled_user)
        for resp in (unknown, wrong, disabled):
            assert resp.status == 401
            assert resp.body == wrong.body
        assert wrong.body["error"]["code"] == "invalid_credentials"


async def test_five_failures_lock_the_account_with_growing_backoff(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        for _ in range(THRESHOLD):
            resp = await client.login("viewer", "wrong-password-0000")
            assert resp.status == 401
        # The right password is refused too while the account is locked.
        locked = await client.login("viewer")
        assert locked.status == 429 and locked.code == "throttled"
        first_wait = int(re.search(r"in (\d+) seconds", locked.body["error"]["message"])[1])
        assert 1 <= first_wait <= BASE_DELAY
        assert locked.headers["Retry-After"] == str(first_wait)
        assert appliance.query("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 0
        # When the lock runs out, the next failure locks for twice as long.
        appliance.execute("UPDATE login_throttle SET locked_until = ?", (time.time() - 1,))
        assert (await client.login("viewer", "wrong-password-0000")).status == 401
        again = await client.login("viewer")
        assert again.status == 429
        second_wait = int(re.search(r"in (\d+) seconds", again.body["error"]["message"])[1])
        assert second_wait == 2 * BASE_DELAY
        # After the lock, the right password works and the account's count starts over.
        appliance.execute("UPDATE login_throttle SET locked_until = ?", (time.time() - 1,))
        assert (await client.login("viewer")).status == 201
        assert appliance.query("SELECT COUNT(*) AS n FROM login_throttle WHERE key = ?",
                               (throttle_key("user", "viewer"),))[0]["n"] == 0
        failures = [row for row in appliance.query(
            "SELECT outcome, details FROM audit_log WHERE action = 'session.create'")
            if row["outcome"] != "ok"]
        assert len(failures) == THRESHOLD + 3
        assert any("throttled" in row["details"] for row in failures)


async def test_five_failures_from_one_address_lock_every_account(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        for i in range(THRESHOLD):
            assert (await client.login(f"guess{i}", "wrong-password-0000")).status == 401
        resp = await client.login("developer", PASSWORDS["developer"])
        assert resp.status == 429
        # The same generic 429 for an account that does not exist.
        assert (await client.login("nobody-at-all", "x" * 12)).status == 429


async def test_concurrent_guesses_cannot_outrun_the_counter(tmp_path: Path) -> None:
    import asyncio

    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        results = await asyncio.gather(*[client.login("viewer", f"wrong-password-{i:04d}")
                                         for i in range(THRESHOLD + 4)])
        statuses = sorted(r.status for r in results)
        assert statuses.count(401) == THRESHOLD
        assert statuses.count(429) == 4
