"""`serve` stopped (SIGTERM) while an ACME order is under way: the order's conversation with the
CA, which runs in a worker thread, ends with the process instead of holding its exit until a
request of the order times out (the process waits for its worker threads before it exits), and
its HTTP-01 answer is withdrawn from the store before the store closes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.acme import (
    HAVE_PEBBLE,
    CAFront,
    MiniCA,
    Pebble,
    free_port,
    make_mini_ca,
    running_appliance,
)

# Real Pebble: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not HAVE_PEBBLE, reason="Debian package pebble not installed")]

STOPPED_WITHIN = 10.0  # seconds: the order's held request would hold the exit for 30


@pytest.fixture
def front(tmp_path: Path) -> Iterator[CAFront]:
    ca: MiniCA = make_mini_ca(tmp_path / "front-ca")
    pebble = Pebble(tmp_path, ca, http_port=free_port()).start()
    proxy = CAFront(pebble).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        pebble.stop()


def test_sigterm_during_an_order_ends_the_process_promptly(tmp_path: Path,
                                                           front: CAFront) -> None:
    front.hold_challenges = True  # the order waits where the CA would start validating
    with running_appliance(tmp_path / "one", directory=front.directory,
                           http_port=front.pebble.http_port,
                           ca_bundle=front.pebble.ca.ca_pem) as app:
        deadline = time.monotonic() + 30
        while front.held == 0:
            assert time.monotonic() < deadline, "the order never reached its challenge"
            time.sleep(0.05)
        started = time.monotonic()
        assert len(app.db("SELECT token FROM acme_challenges")) == 1  # the answer, published
        code = app.server.stop(timeout=40)
        took = time.monotonic() - started
        assert app.db("SELECT token FROM acme_challenges") == []
    front.hold_challenges = False
    assert code == 0
    assert took < STOPPED_WITHIN, f"the process took {took:.1f} s to stop during an order"
