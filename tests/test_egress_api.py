"""`GET|PUT|DELETE /api/v1/egress` and `POST /api/v1/egress/probe` on a real appliance (TLS, real
store, real sockets): shapes, roles, every kind of bad input, audit entries, fail-closed audit, and
changes that apply to the next connection without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.http.app_keys import CORE
from tests.support.app import Appliance, running

FIELDS = {"source_address", "mode", "allow", "deny", "allow_private"}


@contextlib.asynccontextmanager
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    async with running(tmp_path / "state", tokens=True) as found:
        yield found


@contextlib.contextmanager
def tcp_listener(host: str = "127.0.0.1") -> Iterator[tuple[int, list[str]]]:
    """A plain TCP listener that records the address of every peer that connects."""
    peers: list[str] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen(16)
    server.setblocking(False)

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, addr = await loop.sock_accept(server)
            peers.append(addr[0])
            conn.close()

    task = asyncio.get_event_loop().create_task(accept())
    try:
        yield server.getsockname()[1], peers
    finally:
        task.cancel()
        server.close()


def audit_rows(found: Appliance, action_prefix: str = "egress.") -> list[dict[str, Any]]:
    rows = found.query("SELECT * FROM audit_log WHERE action LIKE ? ORDER BY seq",
                       (action_prefix + "%",))
    return [dict(row) | {"details": json.loads(row["details"])} for row in rows]


async def test_get_shows_the_settings_and_the_addresses_to_allow(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        resp = await found.client(token=found.tokens["admin"]).request("GET", "/api/v1/egress")
        assert resp.status == 200, resp.body
        assert set(resp.body) == FIELDS | {"addresses_to_allow", "overridden"}
        assert resp.body["mode"] == "default"
        assert resp.body["allow_private"] is True
        assert resp.body["allow"] == resp.body["deny"] == resp.body["source_address"] == []
        assert resp.body["overridden"] == []
        # No source address configured: the kernel's choice on the default route (maybe none).
        assert isinstance(resp.body["addresses_to_allow"], list)


@pytest.mark.parametrize("role", ["viewer", "developer", None])
async def test_only_an_admin_may_read_change_or_probe(tmp_path: Path, role: str | None) -> None:
    async with appliance(tmp_path) as found:
        client = found.client(token=found.tokens[role] if role else None)
        calls = [("GET", "/api/v1/egress", None),
                 ("PUT", "/api/v1/egress", {"mode": "strict"}),
                 ("DELETE", "/api/v1/egress", None),
                 ("POST", "/api/v1/egress/probe", {"host": "127.0.0.1", "port": 9})]
        for method, path, body in calls:
            resp = await client.request(method, path, body)
            assert resp.status == (403 if role else 401), (method, path, resp.body)
        admin = found.client(token=found.tokens["admin"])
        assert (await admin.request("GET", "/api/v1/egress")).body["mode"] == "default"
        assert audit_rows(found) == []


@pytest.mark.sqlite_store(reason="sets an egress policy that denies loopback, where the test's "
                          "PostgreSQL store listens: refused there as egress_denies_store, "
                          "which tests/test_propagation.py tests")
async def test_a_change_applies_to_the_next_connection_and_is_audited(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        with tcp_listener() as (port, peers):
            probe = {"host": "127.0.0.1", "port": port}
            before = await admin.request("POST", "/api/v1/egress/probe", probe)
            assert before.status == 200, before.body
            assert before.body["allowed"] is True and before.body["connected"] is True
            assert before.body["rule"] == "default: allowed"

            resp = await admin.request("PUT", "/api/v1/egress",
                                       {"mode": "strict", "allow": ["db.example.com:5432"],
                                        "deny": ["10.99.0.0/16"]})
            assert resp.status == 200, resp.body
            assert resp.body["mode"] == "strict"
            assert resp.body["allow"] == ["db.example.com:5432"]
            assert resp.body["deny"] == ["10.99.0.0/16"]
            assert resp.body["overridden"] == ["allow", "deny", "mode"]
            seen = len(peers)

            after = await admin.request("POST", "/api/v1/egress/probe", probe)
            assert after.body["allowed"] is False
            assert after.body["rule"] == "strict: not in allow list"
            assert after.body["connected"] is False
            await asyncio.sleep(0.05)
            assert len(peers) == seen, "a denied probe opened a socket to the target"

            # An allow entry for exactly that destination lets it through again.
            resp = await admin.request("PUT", "/api/v1/egress", {"allow": [f"127.0.0.1:{port}"]})
            again = await admin.request("POST", "/api/v1/egress/probe", probe)
            assert again.body["allowed"] is True and again.body["connected"] is True
            assert again.body["rule"] == f"allow: 127.0.0.1/32:{port}"

        entries = audit_rows(found)
        assert [e["action"] for e in entries] == ["egress.update", "egress.update"]
        first = entries[0]
        assert first["actor"] != "anonymous" and first["outcome"] == "ok"
        assert first["details"]["changed"]["mode"] == {"from": "default", "to": "strict"}
        assert first["details"]["changed"]["deny"] == {"from": [], "to": ["10.99.0.0/16"]}
        assert "allow_private" not in first["details"]["changed"]
        verify = await admin.request("GET", "/api/v1/audit/verify")
        assert verify.status == 200 and verify.body.get("ok", True) is True


@pytest.mark.sqlite_store(reason="sets an egress policy that denies loopback, where the test's "
                          "PostgreSQL store listens: refused there as egress_denies_store, "
                          "which tests/test_propagation.py tests")
async def test_values_are_normalised_like_the_settings_file(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        resp = await admin.request("PUT", "/api/v1/egress", {
            "mode": " STRICT ", "allow": ["10.0.0.1/8", "DB.Example.COM.", "[fd00::/8]:5432"],
            "allow_private": "false", "source_address": ["127.0.0.1"]})
        assert resp.status == 200, resp.body
        assert resp.body["mode"] == "strict"
        assert resp.body["allow"] == ["10.0.0.0/8", "db.example.com", "fd00::/8:5432"]
        assert resp.body["allow_private"] is False
        assert resp.body["source_address"] == resp.body["addresses_to_allow"] == ["127.0.0.1"]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("mode number", {"mode": 5}, "mode"),
    ("mode unknown", {"mode": "lenient"}, "mode"),
    ("allow not a list", {"allow": "10.0.0.0/8"}, "allow"),
    ("allow item not a string", {"allow": [1]}, "allow"),
    ("allow nested list", {"allow": [["10.0.0.0/8"]]}, "allow"),
    ("prefix too long", {"allow": ["10.0.0.0/33"]}, "allow"),
    ("octet out of range", {"deny": ["300.1.2.3/8"]}, "deny"),
    ("IPv6 prefix too long", {"deny": ["fd00::/129"]}, "deny"),
    ("bad port", {"allow": ["db.example.com:99999"]}, "allow"),
    ("bare wildcard", {"deny": ["*."]}, "deny"),
    ("space in name", {"allow": ["db example.com"]}, "allow"),
    ("NUL byte", {"allow": ["db\x00.example.com"]}, "allow"),
    ("empty entry", {"deny": [""]}, "deny"),
    ("allow_private not boolean", {"allow_private": "maybe"}, "allow_private"),
    ("allow_private number", {"allow_private": 2}, "allow_private"),
    ("source not an address", {"source_address": ["eth0"]}, "source_address"),
    ("source a network", {"source_address": ["10.0.0.0/8"]}, "source_address"),
    ("source a string", {"source_address": "127.0.0.1"}, "source_address"),
    ("unknown field", {"mdoe": "strict"}, "mdoe"),
    ("too many entries", {"deny": [f"10.{i // 256}.{i % 256}.0/24" for i in range(1001)]},
     "deny"),
]


async def test_bad_values_are_refused_naming_the_field_and_nothing_changes(
        tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        good = {"mode": "default", "deny": ["192.0.2.0/24"]}
        assert (await admin.request("PUT", "/api/v1/egress", good)).status == 200
        before = (await admin.request("GET", "/api/v1/egress")).body
        stored = found.query("SELECT value FROM meta WHERE key = 'egress.runtime'")[0]["value"]
        for case, body, field in BAD_BODIES:
            # A good field beside the bad one is not applied either.
            resp = await admin.request("PUT", "/api/v1/egress", {"mode": "strict", **body})
            assert resp.status == 400, (case, resp.body)
            assert resp.code == "invalid_setting", case
            assert field in resp.body["error"]["message"], case
            assert (await admin.request("GET", "/api/v1/egress")).body == before, case
            assert found.query("SELECT value FROM meta WHERE key = 'egress.runtime'")[0][
                "value"] == stored, case
        assert len(audit_rows(found)) == 1


MALFORMED: list[tuple[bytes, str, int, str]] = [
    (b"{not json", "application/json", 400, "malformed_json"),
    (b"[\"mode\", \"strict\"]", "application/json", 400, "malformed_json"),
    (b"{\"allow_private\": NaN}", "application/json", 400, "malformed_json"),
    (b"\xff\xfe", "application/json", 400, "malformed_json"),
    (b"mode=strict", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b"{\"deny\": [\"" + b"a" * (1024 * 1024) + b"\"]}", "application/json", 413,
     "payload_too_large"),
]


async def test_malformed_and_oversized_bodies(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        for raw, content_type, status, code in MALFORMED:
            for path in ("/api/v1/egress", "/api/v1/egress/probe"):
                method = "PUT" if path == "/api/v1/egress" else "POST"
                resp = await admin.request(method, path, raw_body=raw,
                                           headers={"Content-Type": content_type})
                assert (resp.status, resp.code) == (status, code), (raw[:30], path, resp.body)
        assert (await admin.request("GET", "/api/v1/egress")).body["overridden"] == []
        assert audit_rows(found) == []


@pytest.mark.sqlite_store(reason="sets an egress policy that denies loopback, where the test's "
                          "PostgreSQL store listens: refused there as egress_denies_store, "
                          "which tests/test_propagation.py tests")
async def test_null_resets_a_field_and_delete_resets_all(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        await admin.request("PUT", "/api/v1/egress", {"mode": "strict", "deny": ["10.1.0.0/16"]})
        resp = await admin.request("PUT", "/api/v1/egress", {"mode": None})
        assert resp.body["mode"] == "default" and resp.body["overridden"] == ["deny"]
        resp = await admin.request("DELETE", "/api/v1/egress")
        assert resp.status == 200
        assert resp.body["deny"] == [] and resp.body["overridden"] == []
        assert [e["action"] for e in audit_rows(found)] == [
            "egress.update", "egress.update", "egress.reset"]


@pytest.mark.sqlite_store(reason="sets an egress policy that denies loopback, where the test's "
                          "PostgreSQL store listens: refused there as egress_denies_store, "
                          "which tests/test_propagation.py tests")
async def test_the_audit_is_fail_closed(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        found.outside.refuse_audit()
        resp = await admin.request("PUT", "/api/v1/egress", {"mode": "strict"})
        assert resp.status == 503 and resp.code == "audit_unavailable", resp.body
        assert found.query("SELECT * FROM meta WHERE key = 'egress.runtime'") == []
        found.outside.allow_audit()
        view = (await admin.request("GET", "/api/v1/egress")).body
        assert view["mode"] == "default" and view["overridden"] == []
        with tcp_listener() as (port, _):
            probe = await admin.request("POST", "/api/v1/egress/probe",
                                        {"host": "127.0.0.1", "port": port})
            assert probe.body["allowed"] is True, "the refused change was applied anyway"


async def test_probe_reports_rule_addresses_connection_and_source(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        for host in ("169.254.169.254", "[::ffff:169.254.169.254]", "0xa9fea9fe",
                     "metadata.google.internal"):
            resp = await admin.request("POST", "/api/v1/egress/probe", {"host": host, "port": 80})
            assert resp.status == 200, resp.body
            assert resp.body["allowed"] is False, host
            assert resp.body["rule"] == "always-deny: cloud metadata", host
            assert resp.body["connected"] is False and resp.body["source_address"] is None
        assert set(resp.body) >= {"allowed", "rule", "addresses", "connected", "source_address"}

        with tcp_listener("127.0.0.2") as (port, peers):
            resp = await admin.request("POST", "/api/v1/egress/probe",
                                       {"host": "127.0.0.2", "port": port})
            assert resp.body["connected"] is True and resp.body["addresses"] == ["127.0.0.2"]
            assert resp.body["source_address"] == "127.0.0.1"
            await admin.request("PUT", "/api/v1/egress", {"source_address": ["127.0.0.3"]})
            resp = await admin.request("POST", "/api/v1/egress/probe",
                                       {"host": "127.0.0.2", "port": port})
            assert resp.body["connected"] is True
            assert resp.body["source_address"] == "127.0.0.3"
            await asyncio.sleep(0.05)
            assert peers[-1] == "127.0.0.3", "the peer did not see the configured source address"
            # IPv6 with only an IPv4 source address: refused rather than sent from elsewhere.
            resp = await admin.request("POST", "/api/v1/egress/probe", {"host": "::1", "port": port})
            assert resp.body["allowed"] is False
            assert resp.body["rule"] == "no source address for the destination's address family"

        # Allowed, but nothing listens: not connected, and the error says why.
        with tcp_listener() as (closed_port, _):
            pass
        resp = await admin.request("POST", "/api/v1/egress/probe",
                                   {"host": "127.0.0.1", "port": closed_port})
        assert resp.body["allowed"] is False or resp.body["connected"] is False


async def test_probe_refuses_the_appliance_itself(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        # `serve` tells the policy about its sockets (checked end to end in test_egress_api_serve).
        found.app[CORE].egress.policy.set_own_listeners([("127.0.0.1", int(found.url.rsplit(":", 1)[1]))])
        admin = found.client(token=found.tokens["admin"])
        port = int(found.url.rsplit(":", 1)[1])
        for host in ("127.0.0.1", "127.1", "2130706433", "[::ffff:127.0.0.1]"):
            resp = await admin.request("POST", "/api/v1/egress/probe", {"host": host, "port": port})
            assert resp.body["allowed"] is False, host
            assert resp.body["rule"] == "appliance's own listener", host
        # Not even an explicit allow entry opens it.
        await admin.request("PUT", "/api/v1/egress", {"allow": [f"127.0.0.1:{port}"]})
        resp = await admin.request("POST", "/api/v1/egress/probe",
                                   {"host": "127.0.0.1", "port": port})
        assert resp.body["rule"] == "appliance's own listener"


BAD_PROBES: list[dict[str, Any]] = [
    {"host": "127.0.0.1"},
    {"port": 80},
    {"host": "", "port": 80},
    {"host": 127, "port": 80},
    {"host": ["127.0.0.1"], "port": 80},
    {"host": "127.0.0.1", "port": "80"},
    {"host": "127.0.0.1", "port": 80.0},
    {"host": "127.0.0.1", "port": True},
    {"host": "127.0.0.1", "port": 0},
    {"host": "127.0.0.1", "port": 65536},
    {"host": "127.0.0.1", "port": -1},
    {"host": "a" * 301, "port": 80},
    {"host": "127.0.0.1", "port": 80, "timeout": 60},
]


async def test_probe_bad_input(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        for body in BAD_PROBES:
            resp = await admin.request("POST", "/api/v1/egress/probe", body)
            assert resp.status == 400 and resp.code == "bad_field", (body, resp.body)


async def test_probe_of_a_malformed_host_is_a_decision_not_an_error(tmp_path: Path) -> None:
    async with appliance(tmp_path) as found:
        admin = found.client(token=found.tokens["admin"])
        for host in ("1.2.3.4.5", "exa mple.com", "a\x00b", "http://x/"):
            resp = await admin.request("POST", "/api/v1/egress/probe", {"host": host, "port": 80})
            assert resp.status == 200, (host, resp.body)
            assert resp.body["allowed"] is False
            assert resp.body["rule"] == "malformed destination", host
