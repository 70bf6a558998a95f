"""The console's audit page in real Chromium against `appliance serve`, on a log larger than one
request's scan bound: filters go to the server (debounced), "Load older entries" pages with the
cursor, the actor hint finds what actors hold (issue 25, bug 8: "admin" finds the admin's sessions
and tokens), and each empty state says what to do (no matches at all; none in the range searched
so far, with "Search older entries"), at 1280 and 390 px."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance import settings as settings_module
from appliance import state_dir
from appliance.audit import AuditLog, Context, reading
from appliance.keyring import open_vault
from appliance.store import open_sqlite_store
from tests.conftest import clean_env
from tests.support.audit import fill
from tests.support.console import (
    ADMIN_PASSWORD,
    init_state,
    launch_chromium,
    leaf_of,
    login,
    serve,
    shot,
    spki_sha256,
)

# Real Chromium: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
OLD_NOTE = "the-old-needle-41"


async def grow(state: Path, count: int) -> None:
    """One entry with a note, then `count` others after it (more than one scan's bound), keyed
    with the store's own audit key (the served appliance verifies them)."""
    store = await open_sqlite_store(state / state_dir.STORE_FILE)
    settings = settings_module.load(env=clean_env(), flags={"state_dir": str(state)})
    keys = await open_vault(settings, store)
    log = AuditLog(store, keys=keys)
    try:
        await log.record(action="datasource.update", target="datasource:old",
                         details={"note": OLD_NOTE}, context=Context(actor="cli:test"))
    finally:
        await log.close()
    try:
        await fill(store, count, keys=keys)
    finally:
        await store.close()


def test_the_audit_page_filters_on_the_server_and_pages_with_the_cursor(tmp_path: Path) -> None:
    state = init_state(tmp_path)
    asyncio.run(grow(state, reading.SCAN_BOUND + 10_000))
    server = serve(tmp_path, state, APPLIANCE_AUTH_REQUIRE_2FA="")  # 2FA has its own tests
    try:
        url = f"https://127.0.0.1:{server.port}"
        with sync_api.sync_playwright() as playwright:
            browser = launch_chromium(playwright, spki_sha256(leaf_of(server)))
            try:
                for width, height in ((1280, 900), (390, 844)):
                    context = browser.new_context(viewport={"width": width, "height": height})
                    page = context.new_page()
                    page.set_default_timeout(20_000)
                    errors: list[str] = []
                    page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
                    login(page, url, "admin", ADMIN_PASSWORD)
                    if width < 1000:
                        page.get_by_role("button", name="Menu").click()
                    page.get_by_role("link", name="Audit log").click()
                    rows = page.locator("table.audit tbody tr")
                    sync_api.expect(rows).to_have_count(100)
                    newest = int(rows.first.locator("td").first.inner_text())
                    page.get_by_role("button", name="Load older entries").click()
                    sync_api.expect(rows).to_have_count(200)
                    positions = [int(t) for t in
                                 page.locator("table.audit tbody tr td:first-child").all_inner_texts()]
                    assert positions == list(range(newest, newest - 200, -1))  # no gap, no repeat

                    # Bug 8: the hint's example finds the admin's own entries (their session).
                    actor = page.get_by_label("Actor")
                    assert actor.get_attribute("placeholder") == "e.g. admin"
                    actor.fill("admin")
                    sync_api.expect(page.locator(".audit-status")).to_contain_text(
                        "from a search of entries")  # the filtered answer, not the first
                    actors = page.locator("table.audit tbody tr td:nth-child(3)").all_inner_texts()
                    assert actors and "admin" in actors
                    assert all(a == "admin" or a.startswith("admin (") for a in actors), actors
                    if width >= 1000:
                        shot(page, "audit-filtered-1280")

                    # Nothing anywhere: the filters are the thing to change.
                    actor.fill("nobody-at-all")
                    empty = page.locator("#audit-empty")
                    sync_api.expect(empty).to_contain_text("No entries match these filters")
                    assert page.get_by_role("button", name="Search older entries").is_hidden()

                    # A text no index serves, found only past one request's bound: the page
                    # says which entries it searched and offers to search older ones.
                    actor.fill("")
                    page.get_by_label("Target or details contain").fill(OLD_NOTE)
                    sync_api.expect(empty).to_contain_text("No matches in entries")
                    sync_api.expect(empty).to_contain_text("search older")
                    shot(page, f"audit-search-older-{width}")
                    page.get_by_role("button", name="Search older entries").click()
                    sync_api.expect(rows).to_have_count(1)
                    assert OLD_NOTE in rows.first.inner_text()
                    assert page.get_by_role("button", name="Load older entries").is_hidden()
                    if width < 1000:
                        # the table scrolls inside its region, the page does not
                        wide = page.evaluate("document.documentElement.scrollWidth")
                        assert wide <= width + 1, wide
                        shot(page, "audit-found-390")
                    assert errors == []
                    context.close()
            finally:
                browser.close()
    finally:
        server.stop()
