"""ARI against a front that answers `renewalInfo` and forwards everything else to real Pebble:
the renewal time comes from the CA's window, renewal orders carry `replaces`, and a window that
moves into the past makes the running appliance renew by itself.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from appliance.tls.acme_client import ari_cert_id
from tests.support.acme import (
    HAVE_PEBBLE,
    CAFront,
    Pebble,
    free_port,
    make_mini_ca,
    running_appliance,
)

# Real Pebble: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not HAVE_PEBBLE, reason="Debian package pebble not installed")]


@pytest.fixture
def front(tmp_path: Path) -> Iterator[CAFront]:
    pebble = Pebble(tmp_path, make_mini_ca(tmp_path / "ca"), http_port=free_port()).start()
    proxy = CAFront(pebble).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        pebble.stop()


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_ari_window_replaces_and_self_renewal(tmp_path: Path, front: CAFront) -> None:
    pebble = front.pebble
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    front.ari_window = (now + dt.timedelta(hours=1), now + dt.timedelta(hours=2))
    front.ari_retry_after = 3600
    with running_appliance(tmp_path / "app", directory=front.directory,
                           http_port=pebble.http_port, ca_bundle=pebble.ca.ca_pem) as app:
        status = app.wait_issued()
        # The renewal time is inside the CA's window, not at two thirds of a 5-year lifetime.
        renew_at = _when(status["renew_at"])
        assert front.ari_window[0] <= renew_at <= front.ari_window[1], status
        first = app.served_certificate()
        first_id = ari_cert_id(first.public_bytes(serialization.Encoding.PEM))
        assert front.ari_requests == [first_id]
        assert "replaces" not in front.orders[0]  # a first order replaces nothing

        # A renewal order names the certificate it replaces.
        front.ari_retry_after = 1
        code, body = app.request("POST", "/api/v1/tls/renew")
        assert code == 200, body
        assert front.orders[-1]["replaces"] == first_id
        second = app.served_certificate()
        second_id = ari_cert_id(second.public_bytes(serialization.Encoding.PEM))
        assert second_id != first_id

        # The CA moves the window into the past (say, a revocation is coming): the appliance
        # asks again when ARI's Retry-After says, finds itself due, and renews on its own.
        front.ari_window = (now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
        deadline = time.monotonic() + 20
        while len(front.orders) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(front.orders) == 3, app.server.stderr()[-3000:]
        assert front.orders[-1]["replaces"] == second_id
        front.ari_window = (now + dt.timedelta(days=30), now + dt.timedelta(days=31))
        # `>= 3`: with Retry-After at 1 s the appliance may ask once more, and order a fourth
        # time, before the window above moves forward (seen in CI on a loaded machine).
        app.wait(lambda s: s["fingerprint_sha256"] != status["fingerprint_sha256"]
                 and s["orders"] >= 3 and s["last_error"] is None, what="the ARI renewal")
        details = [r[0] for r in app.db(
            "SELECT details FROM audit_log WHERE action = 'tls.certificate.renew'")]
        assert any(second_id in d for d in details)


def test_failing_ari_falls_back_to_one_third(tmp_path: Path, front: CAFront) -> None:
    """renewalInfo advertised but failing: the new certificate is kept, renewal at 1/3 of its
    lifetime left, and ARI is asked again within the hour."""
    pebble = front.pebble
    now = dt.datetime.now(dt.UTC)
    front.ari_window = (now + dt.timedelta(hours=1), now + dt.timedelta(hours=2))
    front.ari_broken = True
    with running_appliance(tmp_path / "app", directory=front.directory,
                           http_port=pebble.http_port, ca_bundle=pebble.ca.ca_pem) as app:
        status = app.wait_issued()
        assert status["last_error"] is None
        leaf = app.served_certificate()
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        expected = leaf.not_valid_after_utc - lifetime / 3
        assert abs((_when(status["renew_at"]) - expected).total_seconds()) < 2
        assert len(front.ari_requests) == 1
        assert status["orders"] == 1
