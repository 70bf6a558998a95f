"""`GET /metrics` on a real appliance: who may read it (a metrics-scoped token, or an address in
`[metrics] allow`; loopback is not trusted by itself), and that each family moves when the thing
it counts happens (requests, query runs, egress decisions, certificate expiry, audit failures,
pools, labelled by datasource id unless `[metrics] datasource_names`)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance import __version__, demo
from appliance.audit import AuditLog, Context
from appliance.auth import AuthService
from appliance.egress import Dialer, PolicyHolder
from appliance.http.app_keys import CORE
from appliance.http.metrics_routes import allowed
from appliance.keyring import open_vault
from appliance.store import open_store
from tests.support.app import Appliance, running

LOOPBACK = {"allow": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))}


async def metrics_token(found: Appliance, owner: str = "admin") -> str:
    """A token with the metrics scope, made as `appliance tokens create admin --scope metrics`
    makes it (the store opened by a second connection, as the CLI would)."""
    store = await open_store(found.settings, Dialer(PolicyHolder(found.settings.egress)),
                             must_exist=True)
    try:
        keys = await open_vault(found.settings, store)  # the entry is keyed as the server's
        auth = AuthService(store, AuditLog(store, keys=keys), found.settings.auth)
        raw, _ = await auth.create_token(await auth.users.require(owner), name="prometheus",
                                         role=None, expires_days=None, scope="metrics",
                                         context=Context(actor="test"))
    finally:
        await store.close()
    return raw.reveal()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(found: Appliance, token: str | None = None) -> str:
    resp = await found.client(token=token).request("GET", "/metrics")
    assert resp.status == 200, resp.body
    assert resp.headers["Content-Type"].startswith("text/plain")
    return resp.body


def test_the_allow_list() -> None:
    allow = LOOPBACK["allow"]
    for remote in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert allowed(remote, allow), remote
        assert not allowed(remote, ()), remote
    for remote in ("10.0.0.1", "192.168.1.1", "::ffff:10.0.0.1", "fe80::1%eth0", "",
                   "localhost", "0.0.0.0", "x" * 10_000):
        assert not allowed(remote, allow), remote


async def test_a_loopback_client_needs_a_metrics_token_by_default(tmp_path: Path) -> None:
    """4e: every loopback client used to read /metrics without a token."""
    async with running(tmp_path / "state", tokens=True) as found:
        anonymous = await found.client().request("GET", "/metrics")
        assert anonymous.status == 401 and anonymous.code == "unauthenticated"
        # Ordinary API tokens, an admin's included, are no metrics credential.
        for token in (found.tokens["admin"], found.tokens["viewer"], "not-a-token",
                      "apl_" + "0" * 16 + "_" + "A" * 43):
            resp = await found.client(token=token).request("GET", "/metrics")
            assert resp.status == 401 and resp.code == "invalid_token", token
        token = await metrics_token(found)
        assert "appliance_http_requests_total" in await scrape(found, token)
        # ... and a metrics token is no API credential, not even for its admin owner.
        for path in ("/api/v1/session", "/api/v1/users", "/api/v1/queries"):
            resp = await found.client(token=token).request("GET", path)
            assert resp.status == 401 and resp.code == "invalid_token", path
        # The owner demoted or disabled: the token stops.
        # (At once on SQLite; within the second the store promises on PostgreSQL.)
        scraper = found.client(token=token)
        found.execute("UPDATE users SET role = 'developer' WHERE username = 'admin'")
        assert (await scraper.request_until("GET", "/metrics",
                                            lambda r: r.status == 403)).status == 403
        found.execute("UPDATE users SET role = 'admin', disabled = 1 WHERE username = 'admin'")
        assert (await scraper.request_until("GET", "/metrics",
                                            lambda r: r.status == 401)).status == 401


async def test_only_an_admin_owns_a_metrics_token(tmp_path: Path) -> None:
    from appliance.errors import Forbidden

    async with running(tmp_path / "state") as found:
        with pytest.raises(Forbidden):
            await metrics_token(found, "viewer")


async def test_a_listed_address_needs_no_token(tmp_path: Path) -> None:
    async with running(tmp_path / "state", tokens=True, metrics=LOOPBACK) as found:
        assert "appliance_http_requests_total" in await scrape(found)
        for token in (found.tokens["viewer"], "not-a-token"):
            assert "appliance_http_requests_total" in await scrape(found, token)
    # Behind a trusted proxy the address checked is the client's, not the proxy's.
    async with running(tmp_path / "state2", metrics=LOOPBACK, server={
            "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),)}) as found:
        resp = await found.client().request("GET", "/metrics",
                                            headers={"X-Forwarded-For": "192.0.2.7"})
        assert resp.status == 401
        assert "appliance_http_requests_total" in await scrape(found)


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect(("192.0.2.1", 9))
            address = udp.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


async def test_a_remote_client_needs_a_metrics_token(tmp_path: Path) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    from aiohttp import web

    async with running(tmp_path / "state", tokens=True, metrics=LOOPBACK) as found:
        token = await metrics_token(found)
        site = web.TCPSite(found.runner, address, 0, ssl_context=found.app[CORE].tls.context)
        await site.start()
        port = next(p for host, p, *_ in found.runner.addresses if host == address)
        url = f"https://{address}:{port}/metrics"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=False) as resp:
                assert resp.status == 401
            async with http.get(url, ssl=False, headers={
                    "Authorization": f"Bearer {found.tokens['admin']}"}) as resp:
                assert resp.status == 401
            async with http.get(url, ssl=False, headers={
                    "Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
                assert "appliance_http_requests_total" in await resp.text()


@pytest.mark.sqlite_store(reason="sets an egress policy that denies loopback, where the test's "
                          "PostgreSQL store listens: refused there as egress_denies_store, "
                          "which tests/test_propagation.py tests")
@pytest.mark.parametrize("by_name", [False, True])
async def test_every_family_counts_what_happens(tmp_path: Path, by_name: bool) -> None:
    options: dict[str, Any] = dict(LOOPBACK, datasource_names=by_name)
    async with running(tmp_path / "state", tokens=True, metrics=options) as found:
        admin = found.client(token=found.tokens["admin"])
        first = await scrape(found)

        # Requests by route pattern and status (never the concrete path).
        await admin.request("GET", "/healthz")
        await admin.request("GET", "/api/v1/queries/does-not-exist")
        await admin.request("GET", "/no/such/path")
        for method in ("PROPFIND", "MKCOL", "PURGE"):  # the client's choice: never a label
            await admin.request(method, "/healthz")
        # Egress decisions.
        await admin.request("POST", "/api/v1/egress/probe", {"host": "169.254.169.254", "port": 80})
        # Query runs: the demo database, one run that works and one with a bad parameter.
        await demo.install(found.app[CORE])
        listed = (await admin.request("GET", "/api/v1/queries")).body
        items = listed["queries"] if isinstance(listed, dict) else listed
        query = next(q for q in items if q["name"] == "demo products under a price")
        ok = await admin.request("POST", f"/api/v1/queries/{query['id']}/run",
                                 {"params": {"max_price": 10}})
        assert ok.status == 200, ok.body
        bad = await admin.request("POST", f"/api/v1/queries/{query['id']}/run",
                                  {"params": {"max_price": "cheap"}})
        assert bad.status == 422, bad.body
        # A refused login, counted by reason (never by name).
        refused = await found.client().request("POST", "/api/v1/session",
                                                {"username": "nobody-here", "password": "x"})
        assert refused.status == 401, refused.body
        # Audit write failures: the audit cannot be written, so the change fails.
        found.outside.refuse_audit()
        assert (await admin.request("PUT", "/api/v1/egress", {"mode": "strict"})).status == 503
        found.outside.allow_audit()

        text = await scrape(found)
        for name, labels in (
            ("appliance_http_requests_total", {"method": "GET", "route": "/healthz",
                                               "status": "200"}),
            ("appliance_http_requests_total", {"method": "GET", "route": "/api/v1/queries/{id}",
                                               "status": "404"}),
            ("appliance_http_requests_total", {"method": "GET", "route": "(unmatched)",
                                               "status": "404"}),
            ("appliance_egress_decisions_total", {"purpose": "probe", "allowed": "false",
                                                  "rule": "always-deny: cloud metadata"}),
            ("appliance_query_run_seconds_count", {"outcome": "ok"}),
            ("appliance_audit_write_failures_total", {}),
            ("appliance_http_request_duration_seconds_count", {"route": "/healthz",
                                                              "status_class": "2xx"}),
            ("appliance_http_request_duration_seconds_bucket", {
                "route": "/api/v1/queries/{id}", "status_class": "4xx", "le": "+Inf"}),
            ("appliance_login_failures_total", {"reason": "bad_credentials"}),
        ):
            assert value(text, name, **labels) >= value(first, name, **labels) + 1, (name, labels)
        assert "/no/such/path" not in text and "does-not-exist" not in text
        assert not any(method in text for method in ("PROPFIND", "MKCOL", "PURGE"))
        assert value(text, "appliance_http_requests_total", method="OTHER", route="(unmatched)",
                     status="405") >= 3
        assert value(text, "appliance_query_run_seconds_count", outcome="failed") >= 1
        not_after = found.app[CORE].tls.info.not_after.timestamp()  # type: ignore[union-attr]  # the certificate is there: the test made it
        assert value(text, "appliance_tls_certificate_not_after_seconds") == not_after
        assert value(text, "appliance_datasource_pools", kind="sqlite") == 1
        # Labelled by the datasource's id; by its name only when the setting says so.
        [engine] = found.app[CORE].datasources.open_engines()
        label = "demo" if by_name else engine.target.id
        assert label.startswith("ds_") or by_name, label
        for state in ("open", "idle"):  # the demo's one connection, back in its pool
            assert value(text, "appliance_datasource_pool_connections", datasource=label,
                         kind="sqlite", state=state) == 1, state
        # Rows sent back and errors by datasource and code, labelled the same way.
        assert value(text, "appliance_query_rows_total", datasource=label) >= 1
        assert value(text, "appliance_query_errors_total", datasource=label,
                     code="invalid_parameter") >= 1
        # The scrape itself is in flight; the build and the process are described.
        assert value(text, "appliance_http_requests_in_flight") >= 1
        [build] = [labels for (name, labels) in samples(text) if name == "appliance_build_info"]
        assert dict(build)["version"] == __version__ and dict(build)["python"]
        assert dict(build)["commit"]
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds"):
            assert value(text, name) > 0, name
        # Local CA mode: the next renewal is known (no ACME success to report).
        due = found.app[CORE].tls.info.renewal_due_at().timestamp()  # type: ignore[union-attr]  # the certificate is there: the test made it
        assert value(text, "appliance_tls_next_renewal_seconds") == due
        assert "appliance_acme_last_success_seconds" not in text
        assert "nobody-here" not in text
        if not by_name:
            assert 'datasource="demo"' not in text


def test_run_durations_land_in_the_right_buckets() -> None:
    from appliance import metrics

    before = metrics.exposition().decode()
    for seconds in (0.005, 0.0051, 1000.0, -1.0):  # -1: a clock step, counted as 0
        metrics.observe_query_run("denied", seconds)
    metrics.observe_query_run("not-an-outcome", 0.2)
    text = metrics.exposition().decode()

    def moved(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert moved("appliance_query_run_seconds_bucket", outcome="denied", le="0.005") == 2
    assert moved("appliance_query_run_seconds_bucket", outcome="denied", le="0.01") == 3
    assert moved("appliance_query_run_seconds_bucket", outcome="denied", le="300.0") == 3
    assert moved("appliance_query_run_seconds_bucket", outcome="denied", le="+Inf") == 4
    assert moved("appliance_query_run_seconds_count", outcome="denied") == 4
    assert abs(moved("appliance_query_run_seconds_sum", outcome="denied") - 1000.0101) < 1e-6
    assert moved("appliance_query_run_seconds_count", outcome="error") == 1
    assert "not-an-outcome" not in text
