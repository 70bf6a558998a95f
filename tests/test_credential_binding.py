"""A datasource's secret reaches only the destination it was entered for: it is sealed with that
destination as associated data, a change of destination without the secrets again is refused
(409), and even a destination changed behind the service's back cannot open it. Secrets sealed
before bindings existed are bound once at start, crash-safe under SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.datasources.destination import (
    SEALED_KIND,
    bind_legacy_secrets,
    binding,
    changed_keys,
    destination,
)
from appliance.egress import Dialer, PolicyHolder
from appliance.keyring import BoundElsewhere, open_vault
from appliance.keyring.sealing import field_aad
from appliance.store import Store, open_store
from tests.conftest import ROOT, clean_env
from tests.support.app import TEST_TUNING, make_settings, prepare, store_env
from tests.support.outside_store import OutsideStore
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

TOKEN = "bound-TOKEN-5e1f0c0a"
PASSWORD = "bound-PASSWORD-7d3a"


class Recorder:
    """An HTTP upstream that records every request it gets (headers, path, body)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(json.dumps({"path": request.raw_path, "headers": dict(request.headers),
                                     "body": body.decode("latin-1")}))
        return web.json_response({"ok": True})


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Recorder, Recorder]]:
    """Two upstreams: the real API (127.0.0.1) and an attacker's (127.0.0.2)."""
    runners, servers = [], []
    for host in ("127.0.0.1", "127.0.0.2"):
        server = Recorder()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        server.url = f"http://{host}:{runner.addresses[0][1]}"
        runners.append(runner)
        servers.append(server)
    yield servers[0], servers[1]
    for runner in runners:
        await runner.cleanup()


class Listener:
    """A TCP server that records whether anyone connected and what they sent (a stand-in for a
    database an attacker controls: it would take whatever arrives)."""

    def __init__(self) -> None:
        self.received = b""
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.received += await asyncio.wait_for(reader.read(65536), 2)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener()
    server = await asyncio.start_server(found._serve, "127.0.0.2", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    await server.wait_closed()


def _set_config(appliance: Any, datasource_id: str, **changes: Any) -> None:
    """Change a datasource's config in the store directly, as a forgotten check would."""
    row = appliance.query("SELECT config FROM datasources WHERE id = ?", (datasource_id,))[0]
    config = {**json.loads(row["config"]), **changes}
    appliance.execute("UPDATE datasources SET config = ?, version = version + 1 WHERE id = ?",
                      (json.dumps(config), datasource_id))


async def _audit(appliance: Any, action: str) -> list[dict[str, Any]]:
    admin = as_role(appliance, "admin")
    resp = await admin.request("GET", "/api/v1/audit?limit=200")
    assert resp.status == 200
    return [e for e in resp.body["entries"] if e["action"] == action]


# --- the destination -------------------------------------------------------------------------


def test_every_part_of_the_destination_counts() -> None:
    pg = {"host": "db", "port": 5432, "database": "app", "user": "u", "tls": "verify-full",
          "max_rows": 10}
    for key, value in (("host", "evil"), ("port", 5433), ("database", "other"),
                       ("user", "postgres"), ("tls", "disable"), ("allow_md5", True)):
        assert changed_keys("postgres", pg, {**pg, key: value}) == [key]
        assert binding("postgres", pg) != binding("postgres", {**pg, key: value})
    assert changed_keys("postgres", pg, {**pg, "max_rows": 99}) == []
    assert changed_keys("postgres", pg, {**pg, "allow_md5": False}) == []  # the default
    mongo = {"host": "db", "port": 27017, "database": "app", "user": "u", "tls": "disable"}
    assert changed_keys("mongodb", mongo, {**mongo, "allow_scram_sha1": True}) == [
        "allow_scram_sha1"]
    rest = {"base_url": "https://api.example.com/v1", "auth": "header", "header_name": "X-Key"}
    assert changed_keys("rest", rest, {**rest, "base_url": "https://api.example.com/v2"}) == []
    assert changed_keys("rest", rest, {**rest, "base_url": "https://API.example.com:443/v1"}) == []
    for url in ("http://api.example.com/v1", "https://api.example.com:8443/v1",
                "https://api.example.com.evil.test/v1", "https://evil.test/api.example.com"):
        assert changed_keys("rest", rest, {**rest, "base_url": url}) == ["base_url"], url
    assert changed_keys("rest", rest, {**rest, "header_name": "X-Log"}) == ["header_name"]
    assert changed_keys("rest", rest, {**rest, "auth": "bearer"}) == ["auth"]
    assert destination("rest", rest) == {"kind": "rest", "origin": "https://api.example.com:443",
                                         "auth": "header", "header_name": "X-Key"}


# --- through the API ---------------------------------------------------------------------------


async def test_a_developer_cannot_repoint_a_rest_datasource_to_receive_its_secret(
        tmp_path: Path, upstreams: tuple[Recorder, Recorder]) -> None:
    api, attacker = upstreams
    async with proxy(tmp_path / "state") as appliance:
        admin, dev = as_role(appliance, "admin"), as_role(appliance, "developer")
        for auth, secret_field, extra in (("bearer", "token", {}),
                                          ("header", "api_key", {"header_name": "X-Api-Key"})):
            ds = await create_datasource(admin, name=f"api-{auth}", kind="rest",
                                         config={"base_url": api.url + "/v1", "auth": auth,
                                                 **extra},
                                         secrets={secret_field: TOKEN})
            q = await create_query(dev, ds["id"], {"path": "/items"}, name=f"items-{auth}")
            assert (await run(dev, q["id"])).status == 200
            assert any(TOKEN in seen for seen in api.seen)

            # The reproduction: re-point and test. Refused, and nothing changed.
            moved = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                      {"config": {"base_url": attacker.url + "/"}})
            assert moved.status == 409 and moved.code == "secrets_required", moved.body
            assert f"secrets.{secret_field}" in moved.body["error"]["message"]
            assert "config.base_url" in moved.body["error"]["message"]
            assert TOKEN not in json.dumps(moved.body)
            still = await dev.request("GET", f"/api/v1/datasources/{ds['id']}")
            assert still.body["config"]["base_url"] == api.url + "/v1"
            assert (await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
                    ).status in (200, 502)
            # A path below the same origin is the same destination.
            same = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                     {"config": {"base_url": api.url + "/v2", "max_rows": 50}})
            assert same.status == 200, same.body
            assert (await run(dev, q["id"])).status == 200

            # By construction: even a config changed behind the service's back (a forgotten
            # check) cannot open the secret for the new destination.
            _set_config(appliance, ds["id"], base_url=attacker.url)
            tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
            assert tested.status == 409 and tested.body["error"]["code"] == "secrets_required"
            # A run uses the engine already open (built for the old destination) or is refused.
            ran = await run(dev, q["id"])
            assert ran.status in (200, 409), ran.body
            assert TOKEN not in json.dumps(ran.body) and TOKEN not in json.dumps(tested.body)
            _set_config(appliance, ds["id"], base_url=api.url + "/v1")
        assert not any(TOKEN in seen for seen in attacker.seen), attacker.seen


async def test_a_destination_change_with_the_secrets_again_is_allowed_and_audited(
        tmp_path: Path, upstreams: tuple[Recorder, Recorder]) -> None:
    api, other = upstreams
    async with proxy(tmp_path / "state") as appliance:
        admin = as_role(appliance, "admin")
        ds = await create_datasource(admin, name="api", kind="rest",
                                     config={"base_url": api.url, "auth": "bearer"},
                                     secrets={"token": TOKEN})
        q = await create_query(admin, ds["id"], {"path": "/x"}, name="x")
        new_token = "second-TOKEN-0b8e"
        moved = await admin.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                    {"config": {"base_url": other.url},
                                     "secrets": {"token": new_token}})
        assert moved.status == 200, moved.body
        assert (await run(admin, q["id"])).status == 200
        assert any(new_token in seen for seen in other.seen)
        assert not any(TOKEN in seen for seen in other.seen)
        # Clearing a secret in the same change is also entering it again (here: auth none).
        cleared = await admin.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                      {"config": {"base_url": api.url, "auth": "none"},
                                       "secrets": {"token": None}})
        assert cleared.status == 200, cleared.body
        updates = await _audit(appliance, "datasource.update")
        text = json.dumps(updates)
        assert TOKEN not in text and new_token not in text
        first = next(e for e in updates if "secrets.token" in e["details"]["fields"]
                     and e["details"].get("destination", {}).get("to", {}).get("origin", "")
                     .startswith("http://127.0.0.2"))
        assert first["details"]["destination"]["from"]["origin"].startswith("http://127.0.0.1")
        created = await _audit(appliance, "datasource.create")
        assert created[-1]["details"]["destination"]["auth"] == "bearer"


async def test_postgres_destination_changes_need_the_password(
        tmp_path: Path, listener: Listener) -> None:
    async with proxy(tmp_path / "state") as appliance:
        admin, dev = as_role(appliance, "admin"), as_role(appliance, "developer")
        config = {"host": "127.0.0.1", "port": 5, "database": "app", "user": "app",
                  "tls": "verify-full"}
        ds = await create_datasource(admin, name="pg", kind="postgres", config=config,
                                     secrets={"password": PASSWORD})
        for change in ({"host": "127.0.0.2", "port": listener.port}, {"tls": "disable"},
                       {"tls": "require"}, {"user": "postgres"}, {"database": "postgres"},
                       {"port": listener.port}):
            resp = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                     {"config": change})
            assert resp.status == 409 and resp.code == "secrets_required", (change, resp.body)
            assert "secrets.password" in resp.body["error"]["message"]
        _set_config(appliance, ds["id"], host="127.0.0.2", port=listener.port, tls="disable")
        tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        assert tested.status == 409 and tested.body["error"]["code"] == "secrets_required"
        await asyncio.sleep(0.1)
        assert listener.connections == 0 and PASSWORD.encode() not in listener.received
        # A later change of anything else does not re-seal it for the moved destination.
        limits = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                   {"config": {"statement_timeout_ms": 1000}})
        assert limits.status == 200, limits.body
        tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        assert tested.status == 409 and listener.connections == 0
        _set_config(appliance, ds["id"], **config)
        limits = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                   {"config": {"statement_timeout_ms": 1000}})
        assert limits.status == 200, limits.body


# --- the vault ---------------------------------------------------------------------------------


async def test_the_cipher_refuses_another_binding_even_if_the_clear_copy_is_changed(
        tmp_path: Path) -> None:
    s, _ = await prepare(tmp_path / "state")
    store = await _open(tmp_path / "state")
    try:
        vault = await open_vault(s, store, tuning=TEST_TUNING)
        async with store.transaction() as tx:
            await vault.put(tx, SEALED_KIND, "ds_1", "password", b"P", binding=b"here")
        assert (await vault.get(SEALED_KIND, "ds_1", "password", binding=b"here")
                ).reveal() == b"P"
        with pytest.raises(BoundElsewhere) as info:
            await vault.get(SEALED_KIND, "ds_1", "password", binding=b"there")
        assert info.value.status == 409 and "another destination" in info.value.message
        async with store.transaction() as tx:
            await tx.execute("UPDATE sealed_fields SET binding = ?", (b"there",))
        from appliance.keyring import SealedFieldError
        with pytest.raises(SealedFieldError, match="authentication failed"):
            await vault.get(SEALED_KIND, "ds_1", "password", binding=b"there")
    finally:
        await store.close()


# --- upgrade: secrets sealed before bindings -------------------------------------------------


def _legacy_blob(key: bytes, key_version: int, record_id: str, field: str,
                 plaintext: bytes) -> bytes:
    """A field as the appliance sealed it before destinations were bound (format 1)."""
    header = struct.pack(">BI", 1, key_version)
    nonce = os.urandom(12)
    aad = header + field_aad(SEALED_KIND, record_id, field, key_version)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


async def _open(state: Path) -> Store:
    """The store of `state` (SQLite or PostgreSQL), opened as another process would."""
    s = make_settings(state)
    return await open_store(s, Dialer(PolicyHolder(s.egress)), must_exist=True)


async def _legacy_store(state: Path, count: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """`count` REST datasources whose tokens are sealed as before bindings existed."""
    s, _ = await prepare(state, users=())
    store = await _open(state)
    try:
        vault = await open_vault(s, store, tuning=TEST_TUNING)
        ring = vault.keyring
        key, version = ring.active_key.key, ring.active
        expected: dict[str, tuple[str, dict[str, Any]]] = {}
        now = time.time()
        async with store.transaction() as tx:
            for n in range(count):
                ds_id = f"ds_{n:016x}"
                config = {"base_url": f"http://127.0.0.{1 + n % 3}:{1000 + n}", "auth": "bearer",
                          "follow_redirects": False, "max_redirects": 5}
                token = f"legacy-token-{n}-{os.urandom(4).hex()}"
                await tx.execute(
                    "INSERT INTO datasources (id, name, kind, config, version, created_at, "
                    "updated_at) VALUES (?, ?, 'rest', ?, 1, ?, ?)",
                    (ds_id, f"legacy {n}", json.dumps(config), now, now))
                await tx.execute(
                    "INSERT INTO sealed_fields (kind, record_id, field, key_version, blob, "
                    "updated_at) VALUES (?, ?, 'token', ?, ?, ?)",
                    (SEALED_KIND, ds_id, version,
                     _legacy_blob(key, version, ds_id, "token", token.encode()), now))
                expected[ds_id] = (token, config)
    finally:
        await store.close()
    return expected


def _bound_count(store: OutsideStore) -> int:
    return int(store.query("SELECT count(*) FROM sealed_fields WHERE kind = 'datasource' "
                           "AND binding IS NOT NULL")[0][0])


_BIND_SCRIPT = """
import asyncio, os, sys
from appliance import settings
from appliance.datasources.destination import bind_legacy_secrets
from appliance.egress import Dialer, PolicyHolder
from appliance.keyring import KdfTuning, open_vault
from appliance.store import open_store

async def main():
    s = settings.load(env=dict(os.environ), flags={"state_dir": sys.argv[1]})
    store = await open_store(s, Dialer(PolicyHolder(s.egress)), must_exist=True)
    vault = await open_vault(s, store, tuning=KdfTuning.fixed(log2_n=10))
    print("open", flush=True)
    await bind_legacy_secrets(store, vault, batch_size=1)
    await store.close()

asyncio.run(main())
"""


async def _check_all_open(state: Path, expected: dict[str, tuple[str, dict[str, Any]]]) -> None:
    s = make_settings(state)
    store = await _open(state)
    try:
        vault = await open_vault(s, store, tuning=TEST_TUNING)
        assert await bind_legacy_secrets(store, vault) >= 0
        for ds_id, (token, config) in expected.items():
            opened = await vault.get(SEALED_KIND, ds_id, "token",
                                     binding=binding("rest", config))
            assert opened is not None and opened.reveal() == token.encode(), ds_id
            with pytest.raises(BoundElsewhere):  # and for no other destination
                await vault.get(SEALED_KIND, ds_id, "token",
                                binding=binding("rest", {**config, "base_url": "http://x:1"}))
        rows = await store.fetch_all("SELECT binding FROM sealed_fields WHERE kind = ?",
                                     (SEALED_KIND,))
        assert all(row["binding"] for row in rows)
    finally:
        await store.close()


async def test_legacy_secrets_are_bound_once_at_start_and_keep_working(
        tmp_path: Path, upstreams: tuple[Recorder, Recorder]) -> None:
    api, _ = upstreams
    state = tmp_path / "state"
    expected = await _legacy_store(state, 3)
    # One legacy datasource pointing at the real upstream, run through the API after start.
    ds_id, (token, config) = next(iter(expected.items()))
    config = {**config, "base_url": api.url}
    store = await _open(state)
    try:
        async with store.transaction() as tx:
            await tx.execute("UPDATE datasources SET config = ? WHERE id = ?",
                             (json.dumps(config), ds_id))
    finally:
        await store.close()
    expected[ds_id] = (token, config)
    async with proxy(state) as appliance:  # `prepare` again: users exist, nothing overwritten
        assert _bound_count(appliance.outside) == 3
        admin = as_role(appliance, "admin")
        q = await create_query(admin, ds_id, {"path": "/legacy"}, name="legacy")
        assert (await run(admin, q["id"])).status == 200
        assert any(token in seen for seen in api.seen)
    await _check_all_open(state, expected)


def test_binding_legacy_secrets_survives_sigkill(tmp_path: Path) -> None:
    state = tmp_path / "state"
    total = int(os.environ.get("APPLIANCE_TEST_LEGACY_FIELDS", "1500"))
    expected = asyncio.run(_legacy_store(state, total))
    proc = subprocess.Popen([sys.executable, "-c", _BIND_SCRIPT, str(state)],
                            stdout=subprocess.PIPE, env=clean_env(**store_env(state)), cwd=ROOT)
    outside = OutsideStore(make_settings(state))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"open"
        deadline = time.monotonic() + 60
        while _bound_count(outside) < total // 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done = _bound_count(outside)
    finally:
        outside.close()
        if proc.poll() is None:
            proc.kill()
    assert 0 < done < total, f"the kill should land mid-way ({done} of {total} bound)"
    asyncio.run(_check_all_open(state, expected))
