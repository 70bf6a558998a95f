"""Login throttling: after 5 failures per (account, address) pair, exponential backoff; per
address and per account only at much higher thresholds, which never refuse a pair that has
logged in before; the client address behind a trusted reverse proxy; one generic failure message
for unknown user, wrong password and wrong code."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.auth.throttle import (
    BASE_DELAY,
    PRUNE_BATCH,
    THRESHOLD,
    Keys,
    Limit,
    Policy,
    Throttle,
    delay_for,
)
from appliance.http import client_address
from appliance.http.app_keys import CORE
from tests.support.app import PASSWORDS, Appliance, Client, enrol, running
from tests.support.scale import scaled


@contextlib.asynccontextmanager
async def from_address(appliance: Appliance, address: str) -> AsyncIterator[Client]:
    """A client whose connections leave from `address` (a loopback address: 127.0.0.0/8)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=connector) as http:
        yield Client(appliance, http)


def lower_limits(appliance: Appliance, **limits: int) -> None:
    """The running appliance's throttle with lower address/account thresholds (fewer hashes)."""
    throttle = appliance.app[CORE].auth.throttle
    throttle.policy = dataclasses.replace(throttle.policy, **{
        name: Limit(value, 3600.0) for name, value in limits.items()})


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
                               (Keys.of("viewer", "127.0.0.1").pair,))[0]["n"] == 0
        failures = [row for row in appliance.query(
            "SELECT outcome, details FROM audit_log WHERE action = 'session.create'")
            if row["outcome"] != "ok"]
        assert len(failures) == THRESHOLD + 3
        assert any("throttled" in row["details"] for row in failures)


async def test_failures_from_one_address_do_not_lock_other_accounts(tmp_path: Path) -> None:
    """4d: five guesses at other names from one address used to lock every account there."""
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        for i in range(THRESHOLD):
            assert (await client.login(f"guess{i}", "wrong-password-0000")).status == 401
        resp = await client.login("developer", PASSWORDS["developer"])
        assert resp.status == 201, resp.body


async def test_an_attacker_elsewhere_cannot_lock_a_user_out(tmp_path: Path) -> None:
    """4d: failures on `viewer` from 127.0.0.3 used to lock `viewer` out everywhere."""
    async with running(tmp_path / "state", require_2fa="") as appliance:
        async with from_address(appliance, "127.0.0.3") as attacker, \
                from_address(appliance, "127.0.0.2") as user:
            for _ in range(THRESHOLD):
                assert (await attacker.login("viewer", "wrong-password-0000")).status == 401
            assert (await attacker.login("viewer")).status == 429  # the pair is locked
            assert (await user.login("viewer")).status == 201  # not the real user
        clients = {row["client"] for row in appliance.query(
            "SELECT client FROM audit_log WHERE action = 'session.create'")}
        assert clients == {"127.0.0.2", "127.0.0.3"}


async def test_the_account_limit_never_refuses_a_known_pair(tmp_path: Path) -> None:
    """Many addresses hammering `admin` lock it for every address that never logged in (no
    brute force), never for the real admin's own address with password and code."""
    async with running(tmp_path / "state", require_2fa="admin") as appliance:
        lower_limits(appliance, account=8)
        async with from_address(appliance, "127.0.0.2") as admin:
            assert (await admin.login("admin")).status == 201  # before 2FA: the pair is known
            _, totp, recovery = await enrol(appliance)
            step = appliance.query(
                "SELECT totp_last_step FROM users WHERE username = 'admin'")[0][0]
            for host in range(10, 14):  # a botnet: 2 guesses from each of 4 addresses
                async with from_address(appliance, f"127.0.0.{host}") as bot:
                    for _ in range(2):
                        assert (await bot.login("admin", "wrong-password-0000",
                                                totp="000000")).status == 401
            async with from_address(appliance, "127.0.0.20") as bot:
                # The account is locked for a new address: the password alone, a wrong code or
                # a wrong password are all the same 429 (no hint which part was right).
                for password, code in ((None, None), (None, "000000"),
                                       ("wrong-password-0000", totp.at((step + 1) * 30))):
                    locked = await bot.login("admin", password, totp=code)
                    assert locked.status == 429 and locked.code == "throttled", locked.body
            ok = await admin.login("admin", totp=totp.at((step + 1) * 30))
            assert ok.status == 201, ok.body
            async with from_address(appliance, "127.0.0.21") as traveller:
                # The real admin at a new address, with password and a second factor (here a
                # recovery code: the TOTP step is spent): never refused for failures others
                # caused.
                ok = await traveller.login("admin", totp=recovery[0])
                assert ok.status == 201, ok.body
        # The wrong code was checked (a full attempt) and audited as such; the others denied.
        denied = appliance.query("SELECT details FROM audit_log WHERE outcome = 'denied'")
        assert len(denied) == 2
        assert all('"limit":"user"' in row["details"].replace(" ", "") for row in denied)


async def test_the_address_limit_never_refuses_a_known_pair(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        lower_limits(appliance, address=6)
        client = appliance.client()
        assert (await client.login("viewer")).status == 201  # (viewer, 127.0.0.1) is known
        for i in range(6):
            assert (await client.login(f"guess{i}", "wrong-password-0000")).status == 401
        assert (await client.login("developer")).status == 429  # a new pair: address locked
        assert (await client.login("viewer")).status == 201
        # A login of one's own account buys no fresh allowance for the address.
        assert (await client.login("guess9", "wrong-password-0000")).status == 429


async def test_the_client_behind_a_trusted_proxy_is_throttled_and_audited(
        tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="",
                       server={"trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),)}
                       ) as appliance:
        client = appliance.client()

        async def login(forwarded: str, password: str | None = None) -> int:
            resp = await client.request("POST", "/api/v1/session", {
                "username": "viewer", "password": password or PASSWORDS["viewer"]},
                headers={"X-Forwarded-For": forwarded})
            return resp.status

        for _ in range(THRESHOLD):
            assert await login("203.0.113.9", "wrong-password-0000") == 401
        assert await login("203.0.113.9") == 429
        # A spoofed leftmost entry changes nothing: the proxy appended the real address.
        assert await login("198.51.100.7, 203.0.113.9") == 429
        assert await login("198.51.100.7") == 201  # another client behind the same proxy
        assert await login("garbage, ;;\t, 2001:db8::7") == 201
        clients = [row["client"] for row in appliance.query(
            "SELECT client FROM audit_log WHERE action = 'session.create' ORDER BY seq")]
        assert clients == ["203.0.113.9"] * 7 + ["198.51.100.7", "2001:db8::7"]


async def test_forwarded_headers_are_ignored_without_the_setting(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        for i in range(THRESHOLD):
            resp = await client.request("POST", "/api/v1/session", {
                "username": "viewer", "password": "wrong-password-0000"},
                headers={"X-Forwarded-For": f"198.51.100.{i}"})
            assert resp.status == 401
        assert (await client.login("viewer")).status == 429
        assert {row["client"] for row in appliance.query("SELECT client FROM audit_log "
                                                         "WHERE action = 'session.create'")
                } == {"127.0.0.1"}


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(("peer", "header", "client"), [
    ("10.0.0.1", ["192.0.2.1"], "192.0.2.1"),
    ("10.0.0.1", ["198.51.100.1, 192.0.2.1"], "192.0.2.1"),       # spoofed leftmost
    ("10.0.0.1", ["198.51.100.1", "192.0.2.1, 10.0.0.2"], "192.0.2.1"),  # two headers, 2 hops
    ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),             # all trusted: the leftmost
    ("10.0.0.1", [" 192.0.2.1:4711 "], "192.0.2.1"),
    ("10.0.0.1", ["[2001:db8::1]:4711"], "2001:db8::1"),
    ("10.0.0.1", ["2001:DB8:0::1"], "2001:db8::1"),
    ("10.0.0.1", ["::ffff:192.0.2.1"], "192.0.2.1"),
    ("fd00::1", ["192.0.2.1"], "192.0.2.1"),
    ("::ffff:10.0.0.1", ["192.0.2.1"], "192.0.2.1"),
    ("192.0.2.9", ["198.51.100.1"], "192.0.2.9"),                  # untrusted peer: ignored
    ("10.0.0.1", [], "10.0.0.1"),
    ("10.0.0.1", [""], "10.0.0.1"),                                # malformed: the peer
    ("10.0.0.1", ["garbage"], "10.0.0.1"),
    ("10.0.0.1", ["192.0.2.1, garbage"], "10.0.0.1"),
    ("10.0.0.1", ["192.0.2.1,,"], "10.0.0.1"),
    ("10.0.0.1", ["fe80::1%eth0"], "10.0.0.1"),                    # zone index: free text
    ("10.0.0.1", ["unknown"], "10.0.0.1"),
    ("10.0.0.1", ["[2001:db8::1]x"], "10.0.0.1"),
    ("10.0.0.1", ["192.0.2.1:http"], "10.0.0.1"),
    ("10.0.0.1", ["1" * 10_000], "10.0.0.1"),                      # huge
    ("10.0.0.1", ["garbage, " * 2000 + "192.0.2.1"], "192.0.2.1"),  # never read left of it
    ("10.0.0.1", [", ".join(["10.0.0.2"] * 100)], "10.0.0.1"),     # too many trusted hops
    ("10.0.0.1", [", ".join(["192.0.2.1"] + ["10.0.0.2"] * 15)], "192.0.2.1"),
    ("10.0.0.1", [", ".join(["10.0.0.2"] * 16)], "10.0.0.2"),
    ("garbage", ["192.0.2.1"], "garbage"),
    (None, ["192.0.2.1"], ""),
])
def test_the_client_address_choice(peer: str | None, header: list[str], client: str) -> None:
    assert client_address.choose(peer, header, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address.choose("10.0.0.1", ["192.0.2.1"], ()) == "10.0.0.1"


async def test_concurrent_guesses_cannot_outrun_the_counter(tmp_path: Path) -> None:
    import asyncio

    async with running(tmp_path / "state", require_2fa="") as appliance:
        client = appliance.client()
        results = await asyncio.gather(*[client.login("viewer", f"wrong-password-{i:04d}")
                                         for i in range(THRESHOLD + 4)])
        statuses = sorted(r.status for r in results)
        assert statuses.count(401) == THRESHOLD
        assert statuses.count(429) == 4


class Clock:
    """A clock the test moves (the throttle reads the time only through it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def count_rows(store: Any) -> int:
    row = await store.fetch_one("SELECT COUNT(*) AS n FROM login_throttle")
    return int(row["n"])


async def test_a_flood_of_addresses_leaves_a_bounded_table_after_its_window(any_store: Any
                                                                            ) -> None:
    """10,000 failed logins (a tenth in `make test-fast`: tests/support/scale.py), each from its
    own address: one row per pair and per address while their window lasts; after it, every
    write deletes a bounded batch of them, so the table comes back to the rows still inside a
    window (and the per-key locks are gone)."""
    clock = Clock()
    throttle = Throttle(any_store, clock=clock)
    flood = scaled(10_000)
    assert flood > 2 * PRUNE_BATCH  # pruning still takes several writes
    for start in range(0, flood, 1_000):
        async with any_store.transaction() as tx:
            for i in range(start, start + 1_000):
                keys = Keys.of("victim", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
                async with throttle.serialised([keys.pair, keys.address]):
                    await throttle.failure(tx, keys)
    assert await count_rows(any_store) == 2 * flood + 1  # pairs, addresses, the account
    assert len(throttle._locks) == 0  # no lock outlives its attempt

    # Inside the pairs' window nothing is forgotten (a later failure still counts).
    other = Keys.of("someone", "192.0.2.1")
    clock.now += Policy().pair.forget_after - 1
    async with any_store.transaction() as tx:
        await throttle.failure(tx, other)
    assert await count_rows(any_store) == 2 * flood + 1 + 3

    # Past every window: each write deletes at most a batch of the oldest rows, never all.
    clock.now += Policy().address.forget_after + 1
    async with any_store.transaction() as tx:
        await throttle.failure(tx, other)
    assert await count_rows(any_store) == 2 * flood + 1 + 3 - PRUNE_BATCH
    writes = 1
    while await count_rows(any_store) > 3:
        async with any_store.transaction() as tx:
            await throttle.failure(tx, other)
        writes += 1
        assert writes <= (2 * flood + 1) // PRUNE_BATCH + 2
    # What is left is the one pair still counting, and it still counts: 3 failures in a row.
    rows = await any_store.fetch_all("SELECT key, failures FROM login_throttle ORDER BY key")
    assert {row["key"] for row in rows} == {other.pair, other.address, other.account}
    assert {row["failures"] for row in rows} == {writes}


async def test_a_login_keeps_its_pair_known_then_the_row_goes(any_store: Any) -> None:
    """The known-pair row lives as long as the pair is known (30 days), and not longer."""
    clock = Clock()
    throttle = Throttle(any_store, clock=clock)
    mine = Keys.of("viewer", "192.0.2.7")
    async with any_store.transaction() as tx:
        await throttle.success(tx, mine)
    clock.now += Policy().known_for - 1
    assert await throttle.watched(mine) == [mine.pair]
    async with any_store.transaction() as tx:
        await throttle.failure(tx, Keys.of("other", "192.0.2.8"))
    assert await any_store.fetch_one("SELECT key FROM login_throttle WHERE key = ?",
                                     (mine.known,)) is not None
    clock.now += 2
    assert await throttle.watched(mine) == [mine.pair, mine.account, mine.address]
    async with any_store.transaction() as tx:
        await throttle.failure(tx, Keys.of("other", "192.0.2.8"))
    assert await any_store.fetch_one("SELECT key FROM login_throttle WHERE key = ?",
                                     (mine.known,)) is None
