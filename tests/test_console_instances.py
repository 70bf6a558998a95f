"""The console's Instances section (on the TLS page), in real Chromium: two `appliance serve`
processes on one store, both listed with "last seen … ago", the one serving the page marked; a
clean stop of the other removes it from the list on the next refresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.support.console import (
    ADMIN_PASSWORD,
    init_state,
    launch_chromium,
    leaf_of,
    login,
    shot,
    spki_sha256,
)
from tests.support.console import serve as serve_state

# Real Chromium: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")


def serve(root: Path, state: Path) -> ServerProcess:
    # 2FA not required, so the admin logs in with a password alone (2FA has its own tests).
    return serve_state(root, state, APPLIANCE_AUTH_REQUIRE_2FA="",
                       APPLIANCE_SERVER_HEARTBEAT_INTERVAL="0.5")


def test_the_tls_page_lists_the_instances_with_this_one_marked(tmp_path: Path) -> None:
    state = init_state(tmp_path)
    a = serve(tmp_path, state)
    b = serve(tmp_path, state)
    try:
        url = f"https://127.0.0.1:{a.port}"
        with sync_api.sync_playwright() as playwright:
            browser = launch_chromium(playwright, spki_sha256(leaf_of(a)))
            try:
                for width, height, name in ((1280, 900, "instances-1280"),
                                            (390, 844, "instances-390")):
                    context = browser.new_context(viewport={"width": width, "height": height})
                    page = context.new_page()
                    page.set_default_timeout(15_000)
                    errors: list[str] = []

                    def record(error: object, errors: list[str] = errors) -> None:
                        errors.append(str(error))

                    page.on("pageerror", record)
                    login(page, url, "admin", ADMIN_PASSWORD)
                    if width < 1000:
                        page.get_by_role("button", name="Menu").click()
                    page.get_by_role("link", name="TLS").click()
                    page.get_by_role("heading", name="Instances").wait_for()
                    rows = page.locator("#instances tbody tr")
                    rows.nth(1).wait_for()
                    assert rows.count() == 2
                    texts = rows.all_inner_texts()
                    marked = [t for t in texts if "(this instance)" in t]
                    assert len(marked) == 1 and f"127.0.0.1:{a.port}" in marked[0]
                    assert any(f"127.0.0.1:{b.port}" in t for t in texts)
                    assert all("alive" in t and " s ago" in t for t in texts), texts
                    shot(page, name)
                    assert errors == []
                    context.close()

                # A clean stop of B: gone from the list at the section's next refresh.
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.set_default_timeout(15_000)
                login(page, url, "admin", ADMIN_PASSWORD)
                page.get_by_role("link", name="TLS").click()
                page.locator("#instances tbody tr").nth(1).wait_for()
                assert b.stop() == 0
                sync_api.expect(page.locator("#instances tbody tr")).to_have_count(1, timeout=15_000)
                assert "(this instance)" in page.locator("#instances tbody tr").inner_text()
                context.close()
            finally:
                browser.close()
    finally:
        b.stop()
        a.stop()
