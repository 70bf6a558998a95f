"""ACME with several instances on one store (issue 22), against real Pebble: two `appliance serve`
processes share one store behind a TCP load balancer on the port Pebble sends HTTP-01 requests
to. One order when they race; the CA's request answered by the instance that did not order; both
serve a new certificate within a second of it being stored; the lease holder SIGKILLed mid-order
and the other completes the renewal once the lease expires; the CA's renewal information (ARI)
asked by one instance at a time, its schedule followed by both.

The store is a fixture parameter (`SHARED_STORE_KINDS`): SQLite (two processes on one file) and
PostgreSQL (two processes, each with a state directory of its own, on one database).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.acme import (
    HAVE_PEBBLE,
    AcmeAppliance,
    Balancer,
    CAFront,
    MiniCA,
    Pebble,
    fingerprint,
    free_port,
    make_mini_ca,
    prepare_state,
    start_appliance,
    write_config,
)
from tests.support.app import make_settings
from tests.support.outside_store import OutsideStore
from tests.support.shared_store import SHARED_STORE_KINDS, instance_state, new_store

# Real Pebble: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not HAVE_PEBBLE, reason="Debian package pebble not installed")]

LEASE = 4  # seconds (tls.order_lease): renewed every 1.3 s while an order runs


@pytest.fixture(scope="module")
def mini_ca(tmp_path_factory: pytest.TempPathFactory) -> MiniCA:
    return make_mini_ca(tmp_path_factory.mktemp("acme-instances") / "front-ca")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, mini_ca: MiniCA) -> Iterator[Pebble]:
    # Every order validates its challenge (no reuse of an earlier valid authorization).
    instance = Pebble(tmp_path_factory.mktemp("pebble"), mini_ca, http_port=free_port(),
                      authz_reuse=0).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def front(pebble: Pebble) -> Iterator[CAFront]:
    proxy = CAFront(pebble).start()
    try:
        yield proxy
    finally:
        proxy.hold_challenges = False
        proxy.stop()


@dataclass
class Cluster:
    a: AcmeAppliance
    b: AcmeAppliance
    a_http: int
    b_http: int
    balancer: Balancer
    kind: str
    outside: OutsideStore  # the shared store, from a handle of the test's own

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.outside.query(sql, params)

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.outside.execute(sql, params)

    def make_due(self) -> None:
        """The stored schedule says: renew now (as when renew_at or an ARI window passes)."""
        now = time.time()
        self.write("UPDATE acme_certificates SET renew_at = ?, updated_at = ?", (now - 1, now))

    def stored(self) -> tuple[float, int]:
        """The stored certificate's last_success (epoch seconds) and its orders counter."""
        ((last_success, orders),) = self.query(
            "SELECT last_success, orders FROM acme_certificates")
        return float(last_success), int(orders)


@pytest.fixture(params=SHARED_STORE_KINDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path, front: CAFront) -> Iterator[Cluster]:
    pebble = front.pebble
    kind = request.param
    with new_store(kind, request, tmp_path) as store:
        state, token = prepare_state(tmp_path, store)
        a_http, b_http = free_port(), free_port()
        balancer = Balancer(pebble.http_port, [a_http, b_http]).start()
        apps: list[AcmeAppliance] = []
        outside = OutsideStore(make_settings(state, store=store))
        try:
            for name, port in (("a", a_http), ("b", b_http)):
                config = write_config(tmp_path / f"{name}.toml", directory=front.directory,
                                      http_port=port, ca_bundle=pebble.ca.ca_pem,
                                      extra_tls=f"order_lease = {LEASE}\n")
                apps.append(start_appliance(tmp_path, config,
                                            state if name == "a" else
                                            instance_state(kind, state, name),
                                            token, store))
            yield Cluster(apps[0], apps[1], a_http, b_http, balancer, kind, outside)
        finally:
            for app in apps:
                app.stop()
            balancer.stop()
            outside.close()


def _wait(predicate: Callable[[], bool], timeout: float, what: str,
          every: float = 0.02) -> float:
    """Poll until `predicate()`; the time.time() it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _served(app: AcmeAppliance) -> str:
    return fingerprint(app.served_certificate())


def _both_serve_new(cluster: Cluster, old: str, timeout: float = 30) -> dict[str, float]:
    """Wait until both serve a certificate other than `old` (the same one); when each was
    first seen doing so."""
    seen: dict[str, float] = {}

    def check() -> bool:
        for name, app in (("a", cluster.a), ("b", cluster.b)):
            if name not in seen and _served(app) != old:
                seen[name] = time.time()
        return len(seen) == 2

    _wait(check, timeout, "both instances serving the new certificate")
    assert _served(cluster.a) == _served(cluster.b)
    return seen


def test_racing_instances_order_once_and_the_other_answers_the_ca(
        cluster: Cluster, front: CAFront) -> None:
    a, b = cluster.a, cluster.b
    # First start: both find no certificate; one order, both end up serving it.
    a.wait_issued()
    b.wait_issued()
    assert len(front.orders) == 1, front.orders
    first = _served(a)
    assert _served(b) == first

    # Both find the renewal due at the same moment: one order, both serve the result.
    cluster.make_due()
    seen = _both_serve_new(cluster, first)
    time.sleep(1.5)  # more renewal checks (every second) on both: still one order
    assert len(front.orders) == 2, front.orders
    stored_at, orders = cluster.stored()
    assert orders == 2
    for name, when in seen.items():
        print(f"race: {name} served it {when - stored_at:.3f} s after it was stored")
        assert when - stored_at < 1.0, (name, when - stored_at)
    assert a.status()["orders"] == b.status()["orders"] == 2
    second = _served(a)

    # The CA reaches only B; A orders (a forced renewal): B answers from the store. Ordered
    # again when Pebble reused an authorization (nothing validated: see `CAFront.reused`).
    cluster.balancer.backends = [cluster.b_http]
    before = dict(cluster.balancer.connections)
    forced = 0
    while True:
        reused, forced = front.reused, forced + 1
        code, body = a.request("POST", "/api/v1/tls/renew")
        assert code == 200, body
        assert body["renewed"] is True
        if front.reused == reused or forced == 3:
            break
        second = _served(a)
        _wait(lambda now=second: _served(b) == now, 5, "B serving A's certificate")
    assert cluster.balancer.connections.get(cluster.a_http, 0) == before.get(cluster.a_http, 0)
    assert cluster.balancer.connections[cluster.b_http] > before.get(cluster.b_http, 0)
    b_seen = _wait(lambda: _served(b) != second, 5, "B serving A's certificate")
    stored_at, orders = cluster.stored()
    print(f"forced on A: B served it {b_seen - stored_at:.3f} s after it was stored")
    assert b_seen - stored_at < 1.0, b_seen - stored_at
    placed = len(front.orders)
    assert placed == 2 + forced, (placed, forced)
    assert _served(a) == _served(b) and orders == placed
    assert cluster.query("SELECT COUNT(*) FROM acme_challenges") == [(0,)]  # withdrawn
    assert cluster.query("SELECT COUNT(*) FROM leases") == [(0,)]  # released
    status = b.wait(lambda s: s["orders"] == placed, 2, "B's status following the store")
    assert status["fingerprint_sha256"].replace(":", "").lower() == _served(b)
    assert status["instance"] != a.status()["instance"]


def test_holder_killed_mid_order_the_other_renews_after_the_lease(
        cluster: Cluster, front: CAFront) -> None:
    a, b = cluster.a, cluster.b
    a.wait_issued()
    b.wait_issued()
    assert len(front.orders) == 1

    front.hold_challenges = True  # the order stops where the CA would start validating
    last_due = 0.0

    def due_and_held() -> bool:
        # Made due again each second until an order waits: an instance that stores its schedule
        # just after the first write (its renewal-information lookup) puts renew_at back.
        nonlocal last_due
        if front.held >= 1:
            return True
        if time.monotonic() - last_due > 1.0:
            cluster.make_due()
            last_due = time.monotonic()
        return False

    _wait(due_and_held, 20, "an order waiting on its challenge", every=0.05)
    # The orders before the held one completed without a challenge (`CAFront.reused`).
    placed, reused = len(front.orders), front.reused
    assert placed == 2 + reused, (placed, reused)
    _wait(lambda: _served(a) == _served(b), 5, "both serving the stored certificate")
    first = _served(a)
    ((holder, _),) = cluster.query("SELECT holder, expires_at FROM leases")
    killed, survivor = (a, b) if holder.split(":")[1] == str(a.pid) else (b, a)
    assert holder.split(":")[1] == str(killed.pid)
    # The answer was published before the CA was told to validate; no key in it.
    answers = cluster.query("SELECT token, key_authorization FROM acme_challenges")
    assert answers and all(ka.startswith(token + ".") and "PRIVATE" not in ka
                           for token, ka in answers)
    # The other instance may not order now, even when an admin insists.
    code, body = survivor.request("POST", "/api/v1/tls/renew")
    assert code == 409 and body["error"]["code"] == "acme_busy", body
    assert "another instance" in body["error"]["message"]
    assert survivor.status()["lease_holder"] == holder
    assert len(front.orders) == placed  # the holder's, held; none from the survivor

    # Stopped first, so that the lease read is its last renewal: read after a kill, it could
    # already be the survivor's on a loaded machine (the survivor may take it LEASE seconds
    # after the last renewal).
    os.kill(killed.pid, signal.SIGSTOP)
    ((last_holder, expires_at),) = cluster.query("SELECT holder, expires_at FROM leases")
    assert last_holder == holder, "the survivor took the lease before the holder was stopped"
    killed.server.stop(signal.SIGKILL)
    front.hold_challenges = False  # the dead instance's request is dropped, never forwarded

    _wait(lambda: _served(survivor) != first, 30, "the survivor's renewal")
    assert len(front.orders) == placed + 1
    # It ordered only once the dead holder's lease had run out.
    assert front.order_times[-1] >= expires_at - 0.05, (front.order_times[-1], expires_at)
    print(f"survivor ordered {front.order_times[-1] - expires_at:.3f} s after the lease expired")
    assert front.order_times[-1] - expires_at < 3, "the survivor waited too long"
    # Stored: the first order, those that reused an authorization, and the survivor's.
    status = survivor.wait(lambda s: s["last_error"] is None and s["orders"] == placed, 5,
                           "the survivor's status")
    assert status["failures"] == 0 and status["lease_holder"] is None
    renewals = cluster.query("SELECT outcome FROM audit_log "
                             "WHERE action = 'tls.certificate.renew'")
    assert renewals == [("ok",)] * (1 + reused)


def test_renewal_information_is_asked_by_one_instance_and_followed_by_both(
        cluster: Cluster, front: CAFront) -> None:
    """ARI lookups under the ordering lease: when the stored schedule says "ask the CA again"
    both instances wake at that moment, one asks and writes the schedule (its random point in
    the CA's window), the other reads it from the store instead of asking and writing its own."""
    a, b = cluster.a, cluster.b
    a.wait_issued()
    b.wait_issued()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    front.ari_window = (now + dt.timedelta(days=1), now + dt.timedelta(days=2))
    front.ari_retry_after = 3600
    for _ in range(3):
        before = len(front.ari_requests)
        at = time.time()
        # Both follow the stored schedule within half a second, then wake when it says.
        cluster.write("UPDATE acme_certificates SET ari_next_check = ?, updated_at = ?",
                      (at + 1.5, at))
        _wait(lambda n=before: len(front.ari_requests) > n, 15,
              "a renewal-information request", every=0.05)
        time.sleep(1.5)  # both have woken and looked by now
        assert len(front.ari_requests) == before + 1, front.ari_requests[before:]
        ((renew_at, next_check),) = cluster.query(
            "SELECT renew_at, ari_next_check FROM acme_certificates")
        start, end = (w.timestamp() for w in front.ari_window)
        assert start <= float(renew_at) <= end
        assert float(next_check) > at + 3000  # the CA's Retry-After
        stored = dt.datetime.fromtimestamp(float(renew_at), dt.UTC)
        for app in (a, b):  # both serve the one stored schedule
            app.wait(lambda s, w=stored: abs((dt.datetime.fromisoformat(s["renew_at"]) - w)
                                               .total_seconds()) < 0.001, 5,
                     "the stored renewal time")
    assert cluster.query("SELECT COUNT(*) FROM leases") == [(0,)]  # released
    assert len(front.orders) == 1  # asking is not ordering
