"""The console for the people who run queries and the admins who look after them, in real Chromium
against a real `appliance serve` and a real SQLite file (issue 25): parameter descriptions kept on
save, the "Saved query" status, result tables at 390 px, CSV and JSON downloads, sorting and
copying, empty states, numbers the browser cannot send, the users page's confirmations and
messages, and new recovery codes.

Screenshots land in test-output/console/ (`ops-*`), at 1280 and 390 px.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.auth.throttle import THRESHOLD
from tests.support import console
from tests.support.console import (
    DEVELOPER_PASSWORD,
    VIEWER_PASSWORD,
    ApiClient,
    Appliance,
    Recorder,
    add_user,
    appliance,
    chromium_for,
    clean,
    shot,
)

# Real Chromium: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
pyotp = pytest.importorskip("pyotp")

ADA_PASSWORD = "ada-admin-password-0123"
NEW_ADMIN_PASSWORD = "second-admin-password-0123"


@dataclass
class World:
    app: Appliance
    browser: Any
    root: Path
    ids: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console-ops")
    db = root / "shop.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, note TEXT, price REAL);
        INSERT INTO items VALUES
          (1, '0042', 'a long note that would wrap in a narrow column if it were allowed to', 8.5),
          (2, '0007', '=HYPERLINK("http://example.invalid")', 12),
          (3, '0100', NULL, 2.25),
          (4, '0003', 'say "hi", then go', 100);
    """)
    conn.commit()
    conn.close()
    with appliance(root) as app:
        add_user(app, root, "dev", "developer", DEVELOPER_PASSWORD)
        add_user(app, root, "vera", "viewer", VIEWER_PASSWORD)
        with chromium_for(app) as browser:
            world = World(app, browser, root)
            seed(world, db)
            yield world


def seed(world: World, db: Path) -> None:
    client = ApiClient(world.app)
    client.login("dev", DEVELOPER_PASSWORD)
    status, ds = client.call("POST", "/api/v1/datasources", {
        "name": "Shop", "kind": "sqlite", "config": {"path": str(db)}})
    assert status == 201, ds
    queries = {
        "items": {"name": "Items over a price", "description": "Every item at or above a price, "
                  "with its SKU as printed on the label.",
                  "body": "SELECT id, sku, note, price FROM items WHERE price >= {{ min }} "
                          "ORDER BY id",
                  "parameters": [{"name": "min", "type": "number", "default": 0,
                                  "description": "The lowest price, in euros."}]},
        "skus": {"name": "SKU lookup", "description": "Find one item by its SKU.",
                 "body": "SELECT id, sku FROM items WHERE sku = {{ sku }}",
                 "parameters": [{"name": "sku", "type": "string", "required": True,
                                 "description": "Four digits, leading zeros included."}]},
        "broken": {"name": "Overflowing", "body": "SELECT abs(-9223372036854775807 - 1) AS x",
                   "parameters": []},
    }
    for key, body in queries.items():
        status, made = client.call("POST", "/api/v1/queries", {"datasource_id": ds["id"], **body})
        assert status == 201, made
        world.ids[key] = made["id"]


def new_page(world: World, width: int = 1280, height: int = 900) -> tuple[Any, Any, Recorder]:
    context = world.browser.new_context(viewport={"width": width, "height": height},
                                        accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.app.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    in_flight: set[Any] = set()
    page.on("request", lambda request: in_flight.add(request))
    page.on("requestfinished", lambda request: in_flight.discard(request))
    page.on("requestfailed", lambda request: in_flight.discard(request))
    IN_FLIGHT[id(page)] = in_flight
    return context, page, Recorder(page)


IN_FLIGHT: dict[int, set[Any]] = {}


def login(page: Any, url: str, username: str, password: str, code: str | None = None) -> None:
    console.login(page, url, username, password)
    if code is not None:
        page.get_by_label("Authentication code").fill(code)
        page.get_by_role("button", name="Verify").click()
    page.get_by_role("heading", name=re.compile("Queries|My queries")).wait_for()


def close(context: Any, page: Any) -> None:
    """Close once the page's requests are done: a request the Recorder is still fetching when
    its context closes fails later, in another test."""
    in_flight = IN_FLIGHT.pop(id(page), set())
    try:
        deadline = time.monotonic() + 10
        while in_flight and time.monotonic() < deadline:
            page.wait_for_timeout(50)
    finally:
        context.close()


def runs(recorder: Recorder) -> int:
    return sum(1 for url, _, _ in recorder.responses if url.endswith("/run"))


# --- developers: descriptions kept, the saved status shown --------------------------------------


def test_saving_keeps_parameter_descriptions_and_says_saved(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.goto(f"{app.url}/#/queries/{world.ids['skus']}")
        described = page.get_by_label("Parameter description")
        described.wait_for()
        assert described.input_value() == "Four digits, leading zeros included."
        page.get_by_label("Description", exact=True).fill("Find one item by its SKU (any shop).")
        page.get_by_role("button", name="Save changes").click()
        # The status line says so on the page the save leads to, and stays.
        status = page.locator("#status")
        status.get_by_text("Saved query SKU lookup.").wait_for()
        page.wait_for_timeout(500)
        assert status.inner_text() == "Saved query SKU lookup."
        shot(page, "ops-saved-status-1280")
        client = ApiClient(app)
        client.login("dev", DEVELOPER_PASSWORD)
        _, saved = client.call("GET", f"/api/v1/queries/{world.ids['skus']}")
        assert saved["parameters"][0]["description"] == "Four digits, leading zeros included."
        assert saved["description"] == "Find one item by its SKU (any shop)."
        # A description typed in the editor is saved too; the next page clears the status.
        described.fill("Four digits, e.g. 0042.")
        with page.expect_response(lambda r: r.request.method == "PATCH"):
            page.get_by_role("button", name="Save changes").click()
        status.get_by_text("Saved query SKU lookup.").wait_for()
        _, saved = client.call("GET", f"/api/v1/queries/{world.ids['skus']}")
        assert saved["parameters"][0]["description"] == "Four digits, e.g. 0042."
        page.get_by_role("link", name="Queries").first.click()
        page.get_by_role("link", name="New query").wait_for()
        assert status.inner_text() == ""
        clean(recorder)
    finally:
        close(context, page)


# --- viewers: the list, runs, results -----------------------------------------------------------


def test_viewers_find_queries_by_description_and_search(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world, 390, 844)
    try:
        login(page, app.url, "vera", VIEWER_PASSWORD)
        items = page.locator("ul.query-list li")
        visible = items.filter(visible=True)
        # Counted once the list has rendered (a count does not wait; `expect` does).
        sync_api.expect(items).to_have_count(3)
        page.get_by_text("Every item at or above a price").wait_for()
        shot(page, "ops-viewer-list-390")
        search = page.get_by_label("Search queries")
        search.fill("label")  # a word of a description, not of a name
        sync_api.expect(visible).to_have_count(1)
        assert [t.split("\n")[0] for t in visible.all_inner_texts()] == ["Items over a price"]
        search.fill("lowest price")  # a parameter's description
        sync_api.expect(visible).to_have_count(1)
        search.fill("nothing like this")
        page.get_by_text('No query matches "nothing like this"').wait_for()
        sync_api.expect(visible).to_have_count(0)
        shot(page, "ops-viewer-search-empty-390")
        search.fill("")
        sync_api.expect(visible).to_have_count(3)
        page.get_by_role("link", name="Run Items over a price").click()
        page.get_by_text("Every item at or above a price, with its SKU").wait_for()
        page.get_by_text("The lowest price, in euros.").wait_for()  # the parameter's help
        clean(recorder)
    finally:
        close(context, page)


def test_results_scroll_sideways_at_390_and_never_break_a_value(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world, 390, 844)
    try:
        login(page, app.url, "vera", VIEWER_PASSWORD)
        # The Menu button keeps its label on hover.
        menu = page.locator("#nav-toggle")
        menu.hover()
        colours = page.evaluate("""() => { const s = getComputedStyle(document.getElementById('nav-toggle'));
            return [s.color, s.backgroundColor]; }""")
        assert colours[0] != colours[1] and colours[0] == "rgb(255, 255, 255)", colours
        shot(page, "ops-menu-hover-390")
        page.goto(f"{app.url}/#/queries/{world.ids['items']}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("4 rows in").wait_for()
        cell = page.locator("#results td", has_text="0042")
        # One line: as tall as a cell holding one character.
        heights = page.evaluate("""() => { const cells = [...document.querySelectorAll('#results tbody td')];
            return cells.map(c => c.getClientRects()[0].height); }""")
        assert max(heights) == min(heights), heights
        assert cell.first.inner_text() == "0042"
        wrap = page.evaluate("""() => { const w = document.querySelector('#results .results-table');
            return [w.scrollWidth, w.clientWidth, document.documentElement.scrollWidth]; }""")
        assert wrap[0] > wrap[1], wrap  # the table scrolls inside its frame
        assert wrap[2] <= 390, wrap  # the page itself does not
        shot(page, "ops-results-390")
        page.locator("#results .results-table").evaluate("w => { w.scrollLeft = w.scrollWidth; }")
        shot(page, "ops-results-scrolled-390")
        clean(recorder)
    finally:
        close(context, page)


def test_downloads_sort_and_copy(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world)
    try:
        login(page, app.url, "vera", VIEWER_PASSWORD)
        page.goto(f"{app.url}/#/queries/{world.ids['items']}")
        page.get_by_label("min (number)").fill("5")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("3 rows in").wait_for()
        shot(page, "ops-results-1280")

        # JSON: the result in hand, in the API's JSON shape.
        with page.expect_download() as got:
            page.get_by_role("button", name="Download JSON").click()
        download = got.value
        assert download.suggested_filename == "Items over a price.json"
        result = json.loads(Path(download.path()).read_text())
        client = ApiClient(app)
        client.login("vera", VIEWER_PASSWORD)
        status, direct = client.call("POST", f"/api/v1/queries/{world.ids['items']}/run",
                                     {"params": {"min": 5}})
        assert status == 200
        assert {k: v for k, v in result.items() if k != "duration_ms"} == {
            k: v for k, v in direct.items() if k != "duration_ms"}

        # CSV: written by the server, with the formula defused.
        before = runs(recorder)
        with page.expect_download() as got:
            page.get_by_role("button", name="Download CSV").click()
        download = got.value
        assert download.suggested_filename == "Items over a price.csv"
        raw = Path(download.path()).read_bytes()
        assert raw.startswith(b"id,sku,note,price\r\n")
        rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
        assert rows[1:] == [["1", "0042", "a long note that would wrap in a narrow column if it "
                             "were allowed to", "8.5"],
                            ["2", "0007", "'=HYPERLINK(\"http://example.invalid\")", "12.0"],
                            ["4", "0003", 'say "hi", then go', "100.0"]]
        assert runs(recorder) == before + 1
        page.get_by_text("CSV downloaded").wait_for()

        # Sort: by price, descending on the second click; aria-sort says which.
        price = page.locator("#results th", has_text="price")
        price.get_by_role("button").click()
        assert price.get_attribute("aria-sort") == "ascending"
        ids = lambda: page.locator("#results tbody tr td:first-child").all_inner_texts()  # noqa: E731
        assert ids() == ["1", "2", "4"]
        price.get_by_role("button").click()
        assert price.get_attribute("aria-sort") == "descending"
        assert ids() == ["4", "2", "1"]
        sku = page.locator("#results th", has_text="sku")
        sku.get_by_role("button").click()
        assert ids() == ["4", "2", "1"]  # "0003" < "0007" < "0042"
        assert sku.get_attribute("aria-sort") == "ascending"
        assert price.get_attribute("aria-sort") == "none"
        shot(page, "ops-sorted-1280")

        # Copy: a click and Ctrl+C, the arrow keys, the Copy cell button.
        page.locator("#results tbody tr").nth(0).locator("td").nth(2).click()
        page.keyboard.press("Control+C")
        page.get_by_text("Copied note of row 1.").wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == 'say "hi", then go'
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowLeft")
        page.get_by_role("button", name="Copy cell").click()
        assert page.evaluate("navigator.clipboard.readText()") == "0007"
        page.keyboard.press("Enter")  # focus went back to the button: Enter presses it again
        assert page.evaluate("navigator.clipboard.readText()") == "0007"
        clean(recorder)
    finally:
        close(context, page)


def test_empty_results_failed_runs_and_numbers_the_browser_cannot_send(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world, 390, 844)
    try:
        login(page, app.url, "vera", VIEWER_PASSWORD)
        page.goto(f"{app.url}/#/queries/{world.ids['items']}")
        number = page.get_by_label("min (number)")
        number.fill("1000")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("The query ran and returned no rows").wait_for()
        assert page.locator("#results table").count() == 0
        shot(page, "ops-no-rows-390")

        # 1e400 is not a number the query can take: said on the input, and nothing is run.
        before = runs(recorder)
        for text, words in (("1e400", "is not a finite number"),
                            ("NaN", "must be a number"),
                            ("12345678901234567890", "is too large for the console to send exactly")):
            number.fill(text)
            page.get_by_role("button", name="Run", exact=True).click()
            error = page.locator("[data-field='param.min'] .field-error")
            error.wait_for()
            assert f"parameter 'min' {words}" in error.inner_text(), error.inner_text()
            assert page.locator("#results table").count() == 0  # the last result is gone
        shot(page, "ops-not-finite-390")
        assert runs(recorder) == before

        # A run that fails on the datasource leaves no empty table behind.
        page.goto(f"{app.url}/#/queries/{world.ids['broken']}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.locator(".run-form .alert.error").wait_for()
        assert page.locator("#results").inner_html() == ""
        shot(page, "ops-failed-run-390")
        clean(recorder)
    finally:
        close(context, page)


# --- admins: the users page ---------------------------------------------------------------------


def enrolled(world: World, name: str, role: str, password: str) -> pyotp.TOTP:
    """A user who set up 2FA through the API (with the previous step's code, so the next two
    steps' codes are still unused)."""
    add_user(world.app, world.root, name, role, password)
    client = ApiClient(world.app)
    client.login(name, password)
    status, begun = client.call("POST", "/api/v1/users/me/2fa")
    assert status == 201, begun
    secret = re.search(r"secret=([A-Z2-7]+)", begun["otpauth_uri"]).group(1)  # type: ignore[union-attr]  # asserted by the call
    totp = pyotp.TOTP(secret)
    status, done = client.call("POST", "/api/v1/users/me/2fa/confirm",
                               {"code": totp.at(time.time() - 30)})
    assert status == 200, done
    return totp


def test_users_page_confirms_and_clears_old_messages(world: World) -> None:
    app = world.app
    totp = enrolled(world, "ada", "admin", ADA_PASSWORD)
    enrolled(world, "otto", "viewer", NEW_ADMIN_PASSWORD)
    context, page, recorder = new_page(world)
    try:
        login(page, app.url, "ada", ADA_PASSWORD, totp.now())
        page.goto(f"{app.url}/#/users")
        role = page.get_by_label("Role of vera")
        role.wait_for()

        # A role change asks first; Cancel leaves everything as it was.
        role.select_option("developer")
        dialog = page.locator("dialog.confirm")
        dialog.get_by_text("vera becomes developer (now viewer)").wait_for()
        shot(page, "ops-role-confirm-1280")
        dialog.get_by_role("button", name="Cancel").click()
        assert role.input_value() == "viewer"
        page.get_by_text("The role of vera was not changed.").wait_for()
        assert user_row(world, "vera")["role"] == "viewer"
        # Escape is Cancel too.
        role.select_option("admin")
        dialog.wait_for()
        page.keyboard.press("Escape")
        assert role.input_value() == "viewer" and dialog.count() == 0

        # An error, then a success: the error goes.
        def busy_store(route: Any) -> None:
            route.fulfill(status=503, json={"error": {"code": "store_unavailable",
                                                      "message": "the store is busy"}})

        page.route("**/api/v1/users/dev", busy_store)
        page.get_by_role("button", name="Disable dev").click()
        alert = page.locator(".card .alert").first
        alert.wait_for()
        assert "error" in (alert.get_attribute("class") or ""), alert.inner_text()
        first_error = alert.inner_text()
        assert first_error == "dev: the store is busy"
        page.unroute("**/api/v1/users/dev", busy_store)
        role.select_option("developer")
        dialog.get_by_role("button", name="Make vera developer").click()
        page.get_by_text("vera is now developer").wait_for()
        assert first_error not in page.locator("main").inner_text()
        assert user_row(world, "vera")["role"] == "developer"
        page.get_by_label("Role of vera").select_option("viewer")
        dialog.get_by_role("button", name="Make vera viewer").click()
        page.get_by_text("vera is now viewer").wait_for()

        # Resetting someone's 2FA asks first, then is done and audited.
        page.get_by_role("button", name="Reset two-factor login of otto").click()
        dialog.get_by_text("Their authenticator and recovery codes stop working").wait_for()
        dialog.get_by_role("button", name="Cancel").click()
        assert user_row(world, "otto")["totp_enabled"] == 1
        page.get_by_role("button", name="Reset two-factor login of otto").click()
        dialog.get_by_role("button", name="Reset two-factor login").click()
        page.get_by_text("Two-factor login of otto was reset.").wait_for()
        assert user_row(world, "otto")["totp_enabled"] == 0
        audited = store_rows(world, "SELECT actor FROM audit_log WHERE action = '2fa.reset' "
                                    "AND target = 'user:otto'")
        assert audited == [{"actor": "ada"}]
        shot(page, "ops-users-1280")
        page.set_viewport_size({"width": 390, "height": 844})
        page.get_by_label("Role of dev").select_option("viewer")
        dialog.wait_for()
        shot(page, "ops-role-confirm-390")
        dialog.get_by_role("button", name="Cancel").click()
        clean(recorder)
    finally:
        close(context, page)


def store_rows(world: World, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the appliance's own store (SQLite, read-only), to check what a click did."""
    conn = sqlite3.connect(f"file:{world.app.state / 'appliance.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def unlock(world: World) -> None:
    """End every login lock now (as its time running out would)."""
    conn = sqlite3.connect(world.app.state / "appliance.db")
    try:
        with conn:
            conn.execute("UPDATE login_throttle SET locked_until = 0")
    finally:
        conn.close()


def user_row(world: World, name: str) -> dict[str, Any]:
    return store_rows(world, "SELECT role, totp_enabled FROM users WHERE username = ?",
                      (name,))[0]


def test_a_user_makes_new_recovery_codes(world: World) -> None:
    app = world.app
    totp = enrolled(world, "rita", "viewer", "rita-password-0123")
    context, page, recorder = new_page(world, 390, 844)
    try:
        login(page, app.url, "rita", "rita-password-0123", totp.now())
        page.goto(f"{app.url}/#/account")
        form = page.locator("#recovery-form")
        form.wait_for()
        # A wrong code is refused in words; nothing changes.
        form.get_by_label("Password", exact=True).fill("rita-password-0123")
        form.get_by_label("Code from your authenticator app").fill("000000")
        form.get_by_role("button", name="Make new recovery codes").click()
        form.get_by_text("the password or the code is wrong").wait_for()
        # Guessing the password here is throttled like a login: the lock is said in words.
        for i in range(THRESHOLD - 1):
            form.get_by_label("Password", exact=True).fill(f"guess-{i}-password")
            form.get_by_label("Code from your authenticator app").fill("000000")
            form.get_by_role("button", name="Make new recovery codes").click()
            # Its answer came back when the button is itself again (busy renames it).
            form.get_by_role("button", name="Make new recovery codes").wait_for()
        form.get_by_label("Password", exact=True).fill("rita-password-0123")
        form.get_by_label("Code from your authenticator app").fill(totp.at(time.time() + 30))
        form.get_by_role("button", name="Make new recovery codes").click()
        form.get_by_text("too many failed attempts").wait_for()
        unlock(world)
        form.get_by_label("Password", exact=True).fill("rita-password-0123")
        form.get_by_label("Code from your authenticator app").fill(totp.at(time.time() + 30))
        form.get_by_role("button", name="Make new recovery codes").click()
        codes = page.locator("#recovery-codes li")
        codes.first.wait_for()
        assert codes.count() == 10
        new = [c.strip() for c in codes.all_inner_texts()]
        shot(page, "ops-recovery-codes-390")
        # The new codes log in (once); the form is empty again.
        assert form.get_by_label("Password", exact=True).input_value() == ""
        fresh = ApiClient(app)
        status, _ = fresh.call("POST", "/api/v1/session", {"username": "rita",
                                                           "password": "rita-password-0123",
                                                           "totp": new[0]})
        assert status == 201
        clean(recorder)
    finally:
        close(context, page)
