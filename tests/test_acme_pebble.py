"""ACME against a real Pebble: first issuance end to end, restart without a new order, forced
renewal under an open connection, the one-third rule, clear errors, and the backoff schedule.
"""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import http_request
from tests.support.acme import (
    EAB_HMAC,
    EAB_KID,
    HAVE_PEBBLE,
    NAME,
    CAFront,
    MiniCA,
    Pebble,
    fingerprint,
    free_port,
    make_mini_ca,
    running_appliance,
    start_appliance,
)

# Real Pebble: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not HAVE_PEBBLE, reason="Debian package pebble not installed")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("acme")


@pytest.fixture(scope="module")
def mini_ca(workdir: Path) -> MiniCA:
    return make_mini_ca(workdir / "front-ca")


@pytest.fixture(scope="module")
def pebble(workdir: Path, mini_ca: MiniCA) -> Iterator[Pebble]:
    instance = Pebble(workdir, mini_ca, http_port=free_port()).start()
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
        proxy.stop()


def _when(text: str | None) -> dt.datetime:
    assert text is not None
    return dt.datetime.fromisoformat(text)


def _pebble_trust(pebble: Pebble) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pebble.root_pem())
    return ctx


def test_first_issuance_end_to_end(tmp_path: Path, pebble: Pebble) -> None:
    with running_appliance(tmp_path, directory=pebble.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem) as app:
        status = app.wait_issued()
        assert status["mode"] == "acme"
        assert status["names"] == [NAME]
        assert status["last_error"] is None
        assert status["orders"] == 1
        assert "Pebble" in status["issuer"]
        # The chain served on the HTTPS port verifies against Pebble's root, for the name.
        leaf = app.served_certificate(ctx=_pebble_trust(pebble))
        assert fingerprint(leaf) == status["fingerprint_sha256"].replace(":", "").lower()
        assert leaf.not_valid_after_utc == _when(status["not_after"])
        # ECDSA P-256 certificate key.
        assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]  # the leaf's key is EC: checked by this line
        code, ready = app.request("GET", "/readyz")
        assert code == 200, ready
        # The plain-HTTP listener: unknown tokens 404, everything else redirects.
        conn = http.client.HTTPConnection("127.0.0.1", pebble.http_port, timeout=5)
        conn.request("GET", "/.well-known/acme-challenge/not-a-token", headers={"Host": NAME})
        assert conn.getresponse().status == 404
        conn = http.client.HTTPConnection("127.0.0.1", pebble.http_port, timeout=5)
        conn.request("GET", "/x", headers={"Host": NAME})
        resp = conn.getresponse()
        assert resp.status == 308 and resp.getheader("Location", "").startswith("https://")
        # Keys are sealed in the store, never in plain text; issuance is audited.
        fields = app.db("SELECT kind, field FROM sealed_fields WHERE kind LIKE 'acme_%'")
        assert sorted(fields) == [("acme_account", "private_key"),
                                  ("acme_certificate", "private_key")]
        blob = b"".join(bytes(r[0]) for r in app.db("SELECT blob FROM sealed_fields"))
        assert b"PRIVATE KEY" not in blob
        on_disk = [p for p in app.state.rglob("*") if p.is_file()
                   and b"PRIVATE KEY" in p.read_bytes()]
        assert on_disk == []
        actions = [r[0] for r in app.db("SELECT action FROM audit_log")]
        assert "tls.certificate.issue" in actions


def test_restart_reuses_account_and_certificate(tmp_path: Path, front: CAFront) -> None:
    pebble = front.pebble
    with running_appliance(tmp_path, directory=front.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem) as app:
        first = app.wait_issued()
        served = fingerprint(app.served_certificate())
    assert len(front.orders) == 1 and len(front.accounts) == 1
    # Restart: the stored certificate is served on the very first handshake, nothing is ordered.
    again = start_appliance(tmp_path, app.config, app.state, app.token)
    try:
        assert fingerprint(again.served_certificate()) == served
        status = again.status()
        assert status["fingerprint_sha256"] == first["fingerprint_sha256"]
        assert status["temporary"] is False
        time.sleep(2.5)  # several renewal checks (renew_check_interval = 1 s)
        assert len(front.orders) == 1, front.orders
        assert len(front.accounts) == 1
        assert again.status()["orders"] == 1
        # A forced renewal reuses the account: an order, no new registration.
        code, body = again.request("POST", "/api/v1/tls/renew")
        assert code == 200, body
        assert body["renewed"] is True
        assert len(front.orders) == 2 and len(front.accounts) == 1
    finally:
        again.stop()


def test_forced_renewal_swaps_certificate_under_open_connection(tmp_path: Path,
                                                                pebble: Pebble) -> None:
    with running_appliance(tmp_path, directory=pebble.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem) as app:
        app.wait_issued()
        ctx = _pebble_trust(pebble)
        before = app.served_certificate(ctx=ctx)
        raw = socket.create_connection(("127.0.0.1", app.server.port), 10)
        with ctx.wrap_socket(raw, server_hostname=NAME) as kept:
            status, _, _ = http_request(kept, "GET", "/healthz", NAME)
            assert status == 200
            code, body = app.request("POST", "/api/v1/tls/renew")
            assert code == 200, body
            after = app.served_certificate(ctx=ctx)
            assert fingerprint(after) != fingerprint(before)
            assert after.not_valid_after_utc >= before.not_valid_after_utc
            # The connection opened before the swap keeps working, on the old certificate.
            status, _, _ = http_request(kept, "GET", "/healthz", NAME)
            assert status == 200
            assert fingerprint(_peer(kept)) == fingerprint(before)
        renewals = app.db("SELECT actor, outcome, details FROM audit_log "
                          "WHERE action = 'tls.certificate.renew'")
        assert len(renewals) == 1
        actor, outcome, details = renewals[0]
        assert actor != "system" and "admin" in actor  # the admin who forced it
        assert outcome == "ok" and '"reason":"forced"' in details.replace(" ", "")


def _peer(sock: ssl.SSLSocket):
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_without_ari_the_one_third_rule_applies(tmp_path: Path, pebble: Pebble) -> None:
    with running_appliance(tmp_path, directory=pebble.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem) as app:
        # The renewal schedule is written just after the certificate is installed: wait for it
        # too (on a loaded machine the status can be read in between).
        status = app.wait(lambda s: s.get("issuer") is not None and not s["temporary"]
                          and s.get("renew_at") is not None and s.get("next_renewal") is not None,
                          30, "an ACME certificate and its renewal schedule")
        leaf = app.served_certificate()
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        expected = leaf.not_valid_after_utc - lifetime / 3
        assert abs((_when(status["renew_at"]) - expected).total_seconds()) < 2
        assert _when(status["next_renewal"]) == _when(status["renew_at"])


def test_unknown_profile_is_a_clear_error(tmp_path: Path, front: CAFront) -> None:
    pebble = front.pebble
    front.profiles = {"classic": "the usual", "shortlived": "six days"}
    with running_appliance(tmp_path, directory=front.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem,
                           extra_tls='profile = "tlsserver-extra"\n') as app:
        status = app.wait_error()
        assert "tls.profile 'tlsserver-extra' is not offered" in status["last_error"]
        assert "classic, shortlived" in status["last_error"]
        assert status["temporary"] is True
        assert front.orders == []
        code, _ = app.request("GET", "/healthz")
        assert code == 200
        code, body = app.request("GET", "/readyz")
        assert code == 503 and "temporary" in body["checks"]["tls"]


def test_offered_profile_is_sent_in_the_order(tmp_path: Path, front: CAFront) -> None:
    pebble = front.pebble
    front.profiles = {"classic": "the usual"}
    with running_appliance(tmp_path, directory=front.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem, extra_tls='profile = "classic"\n') as app:
        app.wait_issued()
        assert front.orders[0].get("profile") == "classic"


def test_rate_limit_honours_retry_after(tmp_path: Path, front: CAFront) -> None:
    pebble = front.pebble
    front.reject_orders_429 = 7200
    with running_appliance(tmp_path, directory=front.directory, http_port=pebble.http_port,
                           ca_bundle=pebble.ca.ca_pem) as app:
        status = app.wait_error()
        assert "rate limited" in status["last_error"]
        wait = (_when(status["next_attempt"]) - dt.datetime.now(dt.UTC)).total_seconds()
        assert 7000 < wait <= 7200  # Retry-After, not the 1-minute first backoff
        time.sleep(1.5)
        assert len(front.orders) == 1  # no retry before Retry-After
        code, body = app.request("POST", "/api/v1/tls/renew")
        assert code == 503 and body["error"]["code"] == "acme_rate_limited"
        assert len(front.orders) == 1


@pytest.mark.parametrize("case", ["failed_challenge", "unreachable", "untrusted", "wildcard"])
def test_failures_are_clear_and_the_appliance_keeps_serving(tmp_path: Path, pebble: Pebble,
                                                           case: str) -> None:
    directory, ca_bundle, names = pebble.directory, pebble.ca.ca_pem, (NAME,)
    expected = ""
    if case == "failed_challenge":
        pebble.set_address("unroutable.test", "127.0.0.2")  # nothing of ours listens there
        names = ("unroutable.test",)
        expected = "could not validate unroutable.test over HTTP-01"
    elif case == "unreachable":
        directory = f"https://127.0.0.1:{free_port()}/dir"
        expected = "cannot reach"
    elif case == "wildcard":
        names = ("*.acme.test",)
        expected = "wildcard names need the DNS-01 challenge"
    else:
        ca_bundle = make_mini_ca(tmp_path / "other-ca", "some other CA").ca_pem
        expected = "is not trusted"
    with running_appliance(tmp_path, directory=directory, http_port=pebble.http_port,
                           ca_bundle=ca_bundle, names=names) as app:
        status = app.wait_error()
        assert expected in status["last_error"], status["last_error"]
        assert status["failures"] == 1
        wait = (_when(status["next_attempt"]) - dt.datetime.now(dt.UTC)).total_seconds()
        assert 50 < wait <= 60  # the first backoff step: one minute
        assert status["temporary"] is True and status["not_after"] is None
        code, _ = app.request("GET", "/healthz")
        assert code == 200
        code, body = app.request("POST", "/api/v1/tls/renew")
        assert code in (502, 409), body
        assert body["error"]["code"].startswith("acme_")
        assert app.status()["failures"] == 2
        actions = [(r[0], r[1]) for r in app.db("SELECT action, outcome FROM audit_log")]
        assert ("tls.certificate.issue", "failed") in actions


def test_eab_required(tmp_path: Path, mini_ca: MiniCA) -> None:
    eab_pebble = Pebble(tmp_path, mini_ca, http_port=free_port(), eab=True).start()
    try:
        with running_appliance(tmp_path / "without", directory=eab_pebble.directory,
                               http_port=eab_pebble.http_port, ca_bundle=mini_ca.ca_pem) as app:
            status = app.wait_error()
            assert "requires External Account Binding" in status["last_error"]
            assert "tls.eab_kid" in status["last_error"]
            code, _ = app.request("GET", "/healthz")
            assert code == 200
        extra = f'eab_kid = "{EAB_KID}"\neab_hmac_key = "{EAB_HMAC}"\n'
        with running_appliance(tmp_path / "with", directory=eab_pebble.directory,
                               http_port=eab_pebble.http_port, ca_bundle=mini_ca.ca_pem,
                               extra_tls=extra) as app:
            status = app.wait_issued()
            assert status["last_error"] is None
            assert EAB_HMAC not in app.server.stderr()
    finally:
        eab_pebble.stop()


def test_ca_down_during_renewal_then_back(tmp_path: Path, mini_ca: MiniCA) -> None:
    own = Pebble(tmp_path, mini_ca, http_port=free_port()).start()
    try:
        with running_appliance(tmp_path / "app", directory=own.directory,
                               http_port=own.http_port, ca_bundle=mini_ca.ca_pem) as app:
            app.wait_issued()
            served = fingerprint(app.served_certificate())
            own.stop_pebble()
            code, body = app.request("POST", "/api/v1/tls/renew")
            assert code == 502 and body["error"]["code"] == "acme_unreachable", body
            status = app.status()
            assert "cannot reach" in status["last_error"]
            assert status["failures"] == 1
            assert fingerprint(app.served_certificate()) == served  # the old one stays
            next_attempt = status["next_attempt"]
            assert 50 < (_when(next_attempt) - dt.datetime.now(dt.UTC)).total_seconds() <= 60
            code, _ = app.request("GET", "/readyz")
            assert code == 200  # still a valid certificate with months left
        # The schedule survives a restart: same failures and next attempt, nothing ordered.
        again = start_appliance(tmp_path / "app", app.config, app.state, app.token)
        try:
            status = again.status()
            assert status["failures"] == 1 and status["next_attempt"] == next_attempt
            assert fingerprint(again.served_certificate()) == served
            own.start()  # back, and (like a reset CA) without our account
            code, body = again.request("POST", "/api/v1/tls/renew")
            assert code == 200, body
            status = again.status()
            assert status["last_error"] is None and status["failures"] == 0
            leaf = again.served_certificate(ctx=_pebble_trust(own))
            assert fingerprint(leaf) != served
        finally:
            again.stop()
    finally:
        own.stop()


def test_sigterm_during_an_order_ends_the_process_promptly(tmp_path: Path,
                                                           front: CAFront) -> None:
    """The order's conversation with the CA runs in a worker thread, which the process waits
    for before it exits: stopped, the thread's connections are shut down and its HTTP-01 answer
    is withdrawn from the store before the store closes (the held request kept the process for
    its 30 s time limit before)."""
    front.hold_challenges = True  # the order waits where the CA would start validating
    with running_appliance(tmp_path / "one", directory=front.directory,
                           http_port=front.pebble.http_port,
                           ca_bundle=front.pebble.ca.ca_pem) as app:
        deadline = time.monotonic() + 30
        while front.held == 0:
            assert time.monotonic() < deadline, "the order never reached its challenge"
            time.sleep(0.05)
        assert len(app.db("SELECT token FROM acme_challenges")) == 1  # the answer, published
        started = time.monotonic()
        code = app.server.stop(timeout=40)
        took = time.monotonic() - started
        assert app.db("SELECT token FROM acme_challenges") == []
    front.hold_challenges = False
    assert code == 0
    assert took < 10, f"the process took {took:.1f} s to stop during an order"
