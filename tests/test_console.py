"""The web console in real Chromium (Debian's, driven by Playwright) against a real appliance and a
real PostgreSQL: the admin's 2FA journey, the viewer's run without SQL or credentials reaching the
browser, hostile names and rows rendered as text, and the CSP enforced by the browser itself.

Screenshots of every page, at 1280 and 390 px, land in test-output/console/.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.http.console_routes import CONSOLE_CSP
from tests.support.console import (
    ADMIN_PASSWORD,
    DEVELOPER_PASSWORD,
    PG_PASSWORD,
    VIEWER_PASSWORD,
    ApiClient,
    Appliance,
    Postgres,
    add_user,
    appliance,
    chromium_for,
    clean,
    login,
    new_page,
    pg_execute,
    postgres_cluster,
    shot,
)

# Real Chromium: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
pyotp = pytest.importorskip("pyotp")

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_ROW = "<script>alert(2)</script>"
# The seeded query's body: its distinctive fragments must never reach a viewer's browser.
SEEDED_SQL = ("SELECT id, customer, note /* sql-marker-4d1f */\n"
              "FROM console_orders\nWHERE customer = {{ customer }}\nORDER BY id")
SQL_MARKERS = ("sql-marker-4d1f", "FROM console_orders", "console_orders")


@dataclass
class World:
    app: Appliance
    pg: Postgres
    browser: Any
    root: Path
    seeded: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console")
    with postgres_cluster() as pg:
        pg_execute(pg,
                   "CREATE TABLE console_orders (id int PRIMARY KEY, customer text, note text)",
                   "INSERT INTO console_orders VALUES (1, 'acme', 'first order'), "
                   f"(2, 'acme', '{HOSTILE_ROW}'), (3, 'globex', 'not for acme'), "
                   "(4, 'acme', NULL)")
        with appliance(root) as app:
            add_user(app, root, "dev", "developer", DEVELOPER_PASSWORD)
            add_user(app, root, "vera", "viewer", VIEWER_PASSWORD)
            with chromium_for(app) as browser:
                yield World(app, pg, browser, root)


@pytest.fixture(scope="module")
def seeded(world: World) -> dict[str, str]:
    """A datasource and a query made through the API by a developer (not through the console)."""
    if world.seeded:
        return world.seeded
    client = ApiClient(world.app)
    client.login("dev", DEVELOPER_PASSWORD)
    status, ds = client.call("POST", "/api/v1/datasources", {
        "name": "Seeded warehouse", "kind": "postgres",
        "config": {"host": "127.0.0.1", "port": world.pg.port, "database": "postgres",
                   "user": "postgres", "tls": "disable", "max_rows": 100_000},
        "secrets": {"password": PG_PASSWORD}})
    assert status == 201, ds
    status, query = client.call("POST", "/api/v1/queries", {
        "name": "Seeded orders", "datasource_id": ds["id"], "body": SEEDED_SQL,
        "parameters": [{"name": "customer", "type": "string", "required": True}]})
    assert status == 201, query
    status, series = client.call("POST", "/api/v1/queries", {
        "name": "Seeded series", "datasource_id": ds["id"],
        "body": "SELECT g AS n, md5(g::text) AS hash FROM generate_series(1, {{ count }}) AS g",
        "parameters": [{"name": "count", "type": "integer", "default": 10}]})
    assert status == 201, series
    world.seeded.update(datasource=ds["id"], query=query["id"], series=series["id"])
    return world.seeded


# --- the admin ---------------------------------------------------------------------------------


def test_admin_enrols_2fa_builds_a_datasource_and_a_query_and_sees_rows(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        page.goto(app.url + "/")
        page.get_by_label("Username").wait_for()
        shot(page, "login-1280")
        login(page, app.url, "admin", ADMIN_PASSWORD)

        # The admin role requires 2FA: the console allows only enrolment until it is done.
        page.get_by_text("Your role requires two-factor login").wait_for()
        assert page.locator("#nav a").all_inner_texts() == ["My account"]
        page.get_by_role("button", name="Set up two-factor login").click()
        qr = page.locator("#totp-qr")
        qr.wait_for()
        assert qr.get_attribute("src").startswith("data:image/svg+xml;base64,")
        assert page.evaluate("document.getElementById('totp-qr').naturalWidth") > 0
        secret = page.locator("#totp-secret").inner_text().strip()
        assert re.fullmatch(r"[A-Z2-7]{16,}", secret)
        shot(page, "enrol-2fa-1280")
        page.get_by_label("Code from your app").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
        page.get_by_role("button", name="Turn on two-factor login").click()
        page.get_by_text("'code' was not accepted").wait_for()  # a wrong code, said in words
        page.get_by_label("Code from your app").fill(pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Turn on two-factor login").click()
        codes = page.locator("#recovery-codes li")
        codes.first.wait_for()
        assert codes.count() == 10
        assert all(re.fullmatch(r"[a-z0-9]{4}(-[a-z0-9]{4}){3}", c.strip()) for c in codes.all_inner_texts())
        shot(page, "recovery-codes-1280")
        page.get_by_role("button", name="I have stored them").click()
        page.get_by_role("heading", name="Queries").wait_for()

        # Log out, and in again: now with the TOTP step.
        page.get_by_role("button", name="Log out").click()
        page.get_by_text("You are logged out.").wait_for()
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_label("Authentication code").wait_for()
        shot(page, "login-totp-1280")
        # The next step's code: the enrolment used this step's, and no code works twice.
        page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(time.time() + 30))
        page.get_by_role("button", name="Verify").click()
        page.get_by_role("heading", name="Queries").wait_for()
        assert page.locator("#nav a").all_inner_texts() == [
            "Queries", "Datasources", "TLS", "Egress", "Audit log", "Users", "Keys", "My account"]

        # A PostgreSQL datasource; the password is write-only.
        page.get_by_role("link", name="Datasources").click()
        page.get_by_role("link", name="New datasource").click()
        page.get_by_label("Name").fill("Warehouse")
        page.get_by_label("Host").fill("127.0.0.1")
        page.get_by_label("Port").fill(str(world.pg.port))
        page.get_by_label("Database").fill("postgres")
        page.get_by_label("User").fill("postgres")
        page.get_by_label("TLS", exact=True).select_option("disable")
        page.get_by_label("Password", exact=True).fill(PG_PASSWORD)
        shot(page, "datasource-new-1280")
        page.get_by_role("button", name="Create datasource").click()
        page.get_by_role("heading", name="Warehouse").wait_for()
        assert page.locator(".secret-state").inner_text() == "set"
        assert PG_PASSWORD not in page.content()
        assert page.evaluate("[...document.querySelectorAll('input')].map(i => i.value)").count(PG_PASSWORD) == 0
        page.get_by_role("button", name="Test connection").click()
        page.get_by_text("Connected to Warehouse").wait_for()
        shot(page, "datasource-edit-1280")
        # Replace the password with a wrong one: the test fails and says so in words.
        page.get_by_role("button", name="Replace password").click()
        page.get_by_label("Password", exact=True).fill("wrong-password")
        page.get_by_role("button", name="Save changes").click()
        page.get_by_role("heading", name="Warehouse").wait_for()
        page.get_by_role("button", name="Test connection").click()
        page.get_by_text("Connection failed:").wait_for()
        page.get_by_role("button", name="Replace password").click()
        page.get_by_label("Password", exact=True).fill(PG_PASSWORD)
        page.get_by_role("button", name="Save changes").click()
        page.get_by_role("heading", name="Warehouse").wait_for()
        page.get_by_role("button", name="Test connection").click()
        page.get_by_text("Connected to Warehouse").wait_for()
        # Moving the destination needs the password again: said before saving, and refused.
        page.get_by_label("Port").fill(str(world.pg.port + 1))
        note = page.locator("#destination-note")
        note.wait_for()
        assert "Enter Password again" in note.inner_text()
        shot(page, "datasource-destination-moved-1280")
        page.get_by_role("button", name="Save changes").click()
        page.locator(".ds-form [role=alert]", has_text="changes where this datasource").wait_for()
        assert "alert warning" in (note.get_attribute("class") or "")
        page.get_by_role("button", name="Replace password").click()
        page.get_by_label("Password", exact=True).fill(PG_PASSWORD)
        assert note.is_hidden()
        page.get_by_role("button", name="Keep the current value").click()
        note.wait_for()
        page.get_by_label("Port").fill(str(world.pg.port))
        assert note.is_hidden()
        page.get_by_role("link", name="Datasources").first.click()
        page.get_by_role("link", name="Warehouse").wait_for()
        shot(page, "datasources-1280")

        # A query: first with a binding inside a string literal, shown at its line and column.
        page.get_by_role("link", name="Queries").first.click()
        page.get_by_role("link", name="New query").click()
        page.get_by_label("Name").fill("Orders by customer")
        page.get_by_label("Datasource").select_option(label="Warehouse (postgres)")
        body = page.get_by_label("Body")
        body.fill("SELECT id, customer, note\nFROM console_orders\nWHERE customer = '{{ customer }}'")
        page.get_by_role("button", name="Declare bindings found in the body").click()
        assert page.locator(".param-row").count() == 1
        page.get_by_role("button", name="Create query").click()
        error = page.locator("[data-field='body'] .field-error")
        error.wait_for()
        assert re.match(r"line 3, column \d+: ", error.inner_text())
        excerpt = page.locator(".error-excerpt").inner_text()
        assert "WHERE customer = '{{ customer }}'" in excerpt and "^" in excerpt
        assert page.evaluate("document.activeElement.name") == "body"
        shot(page, "query-binding-error-1280")
        body.fill("SELECT id, customer, note\nFROM console_orders\nWHERE customer = {{ customer }}\nORDER BY id")
        page.get_by_role("button", name="Create query").click()
        page.get_by_role("heading", name="Orders by customer").wait_for()

        # Run it from the form generated from the declared parameter.
        page.get_by_label("customer", exact=True).fill("acme")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("3 rows in").wait_for()
        rows = page.locator("#results tbody tr")
        assert rows.count() == 3
        assert rows.nth(0).inner_text().split("\t")[:3] == ["1", "acme", "first order"]
        assert page.locator("#results th").all_inner_texts() == ["id", "customer", "note"]
        assert rows.nth(1).locator("td").nth(2).inner_text() == HOSTILE_ROW
        assert rows.nth(2).locator("td .null").inner_text() == "null"
        shot(page, "query-run-1280")
        # A wrong-typed run says which parameter, next to it.
        page.get_by_label("customer", exact=True).fill("")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("parameter 'customer' is required").wait_for()

        # Users: add a viewer.
        page.get_by_role("link", name="Users").click()
        form = page.locator("#new-user")
        form.get_by_label("Username").fill("victor")
        form.get_by_label("Role").select_option("viewer")
        form.get_by_label("Initial password").fill(VIEWER_PASSWORD)
        form.get_by_role("button", name="Add user").click()
        page.get_by_text("Added victor (viewer).").wait_for()
        form.get_by_label("Username").fill("x")
        form.get_by_label("Initial password").fill("short")
        form.get_by_role("button", name="Add user").click()
        password_error = page.locator("#new-user [data-field='password'] .field-error")
        password_error.wait_for()  # said in words, next to the field it is about
        assert "12 characters" in password_error.inner_text()
        page.get_by_role("button", name="API tokens of dev").click()
        page.get_by_role("heading", name="API tokens of dev").wait_for()
        shot(page, "users-1280")

        # My account: an API token, shown once.
        page.get_by_role("link", name="My account").click()
        page.get_by_label("Name", exact=True).fill("nightly export")
        page.get_by_role("button", name="Create token").click()
        token = page.locator("#new-token")
        token.wait_for()
        assert token.input_value().startswith("apl_")
        shot(page, "account-1280")

        # Audit log, with a filter and the chain verified.
        page.get_by_role("link", name="Audit log").click()
        page.locator("table.audit tbody tr").first.wait_for()
        page.get_by_label("Action starts with").fill("datasource.")
        # the server filters (debounced): wait for its answer, not the unfiltered first page
        sync_api.expect(page.locator(".audit-status")).to_contain_text("from a search of")
        actions = page.locator("table.audit tbody tr td:nth-child(4)").all_inner_texts()
        assert actions and all(a.startswith("datasource.") for a in actions)
        assert "datasource.create" in actions and "datasource.test" in actions
        page.get_by_role("button", name="Verify everything").click()
        page.get_by_text("Chain intact").wait_for()
        shot(page, "audit-1280")

        # TLS: the local CA's certificate, its names and expiry; no renew button outside ACME.
        page.get_by_role("link", name="TLS").click()
        facts = page.locator("#tls-facts")
        facts.wait_for()
        assert "localhost" in facts.inner_text() and "local" in facts.inner_text()
        assert page.get_by_role("button", name="Renew now").is_hidden()
        shot(page, "tls-1280")

        # Egress: the policy, the addresses to allow, a probe of the database.
        page.get_by_role("link", name="Egress").click()
        page.locator("#egress-form").wait_for()
        page.get_by_label("Deny").fill("203.0.113.0/24")
        page.get_by_role("button", name="Save policy").click()
        page.get_by_text("Policy saved").wait_for()
        assert page.get_by_label("Deny").input_value() == "203.0.113.0/24"
        page.get_by_label("Deny").fill("not a rule !!")
        page.get_by_role("button", name="Save policy").click()
        page.locator("[data-field='deny'] .field-error").wait_for()
        page.get_by_label("Host").fill("127.0.0.1")
        page.get_by_label("Port").fill(str(world.pg.port))
        page.get_by_role("button", name="Probe").click()
        result = page.locator("#probe-result dl")
        result.wait_for()
        assert "allowed" in result.inner_text()
        page.get_by_label("Host").fill("169.254.169.254")
        page.get_by_label("Port").fill("80")
        page.get_by_role("button", name="Probe").click()
        page.locator("#probe-result .error-text").first.wait_for()
        assert "denied" in page.locator("#probe-result").inner_text()
        shot(page, "egress-1280")

        page.get_by_role("link", name="Keys").click()
        page.get_by_role("heading", name="Encryption keys").wait_for()
        shot(page, "keys-1280")

        # The same pages at 390 px: the menu folds, tables scroll inside their box.
        page.set_viewport_size({"width": 390, "height": 844})
        for name, path, ready in [
            ("queries", "queries", "table.queries"), ("datasources", "datasources", "table.datasources"),
            ("users", "users", "table.users"), ("audit", "audit", "table.audit"),
            ("tls", "tls", "#tls-facts"), ("egress", "egress", "#egress-form"),
            ("account", "account", "#twofa-state"), ("keys", "keys", "h1"),
        ]:
            page.goto(f"{app.url}/#/{path}")
            page.locator(ready).first.wait_for()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
            shot(page, f"{name}-390")
        page.goto(f"{app.url}/#/queries")
        page.get_by_role("link", name="Orders by customer").first.click()
        page.get_by_label("customer", exact=True).fill("acme")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("3 rows in").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "query-run-390")
        assert page.get_by_role("button", name="Menu").is_visible()
        page.get_by_role("button", name="Menu").click()
        assert page.get_by_role("link", name="Egress").is_visible()
        shot(page, "menu-390")
        clean(recorder)
    finally:
        context.close()


# --- the viewer --------------------------------------------------------------------------------


def heap_strings(page: Any) -> str:
    """A heap snapshot of the page's JavaScript (every string the page's JS can still reach)."""
    session = page.context.new_cdp_session(page)
    chunks: list[str] = []
    session.on("HeapProfiler.addHeapSnapshotChunk", lambda event: chunks.append(event["chunk"]))
    session.send("HeapProfiler.collectGarbage")
    session.send("HeapProfiler.takeHeapSnapshot", {"reportProgress": False})
    session.detach()
    return "".join(chunks)


def test_viewer_runs_a_query_and_the_browser_never_holds_sql_or_password(
        world: World, seeded: dict[str, str]) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        # Keyboard only: the username field has focus; Tab to the password; Enter submits.
        page.goto(app.url + "/")
        page.get_by_label("Username").wait_for()
        assert page.evaluate("document.activeElement.name") == "username"
        page.keyboard.type("vera")
        page.keyboard.press("Tab")
        page.keyboard.type(VIEWER_PASSWORD)
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="My queries").wait_for()
        # A viewer's console: queries and their own account, nothing else.
        assert page.locator("#nav a").all_inner_texts() == ["Queries", "My account"]
        shot(page, "viewer-queries-1280")
        page.get_by_role("link", name="Run Seeded orders").click()
        page.get_by_label("customer", exact=True).fill("acme")
        page.get_by_label("customer", exact=True).press("Enter")
        page.get_by_text("3 rows in").wait_for()
        assert page.locator("#results tbody tr").count() == 3
        assert page.locator("#results tbody tr").nth(1).locator("td").nth(2).inner_text() == HOSTILE_ROW
        shot(page, "viewer-run-1280")
        assert page.locator("textarea[name='body']").count() == 0
        # The viewer cannot reach a developer page by typing its address.
        page.goto(f"{app.url}/#/datasources")
        page.get_by_role("heading", name="My queries").wait_for()
        assert page.url.endswith("#/queries")

        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{app.url}/#/queries/{seeded['query']}")
        page.get_by_label("customer", exact=True).fill("acme")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("3 rows in").wait_for()
        shot(page, "viewer-run-390")

        # Neither the SQL body nor the datasource's password reached this browser: not the DOM,
        # not any response it received, not its storage, cookies or JavaScript heap.
        secrets = (*SQL_MARKERS, PG_PASSWORD, f"127.0.0.1:{world.pg.port}")
        dom = page.content()
        storage = page.evaluate("""() => JSON.stringify({
            local: Object.assign({}, localStorage), session: Object.assign({}, sessionStorage),
            cookie: document.cookie, names: Object.getOwnPropertyNames(window),
            state: Object.getOwnPropertyNames(window).filter(k => !(k in Object.getPrototypeOf(window)))
                .map(k => { try { return JSON.stringify(window[k]); } catch (e) { return ''; } })})""")
        heap = heap_strings(page)
        assert len(recorder.responses) > 10
        # Every body was captured: the search below is over all of them, none skipped.
        assert [u for u in recorder.unreadable if "/api/" in u] == []
        assert any(b"columns" in body for _, _, body in recorder.responses)  # the run was recorded
        for secret in secrets:
            assert secret not in dom, secret
            assert secret not in storage, secret
            assert secret not in heap, secret
            for url, status, body in recorder.responses:
                assert secret.encode() not in body, (secret, url, status)
        assert "appliance-session" not in storage  # the session cookie is HttpOnly
        assert json.loads(storage)["local"] == {} and json.loads(storage)["session"] == {}
        # The viewer's API answers hold only id, name and parameters of a query.
        listing = next(json.loads(b) for u, s, b in recorder.responses if u.endswith("/api/v1/queries"))
        assert set(listing["queries"][0]) == {"id", "name", "description", "parameters"}
        clean(recorder)
    finally:
        context.close()


# --- hostile data ------------------------------------------------------------------------------


def test_hostile_names_and_rows_render_as_text_and_run_nothing(world: World, seeded: dict[str, str]) -> None:
    app = world.app
    # The API refuses such names; a store restored from elsewhere might still hold one.
    db = sqlite3.connect(app.state / "appliance.db")
    try:
        now = time.time()
        db.execute("INSERT INTO datasources (id, name, kind, config, version, created_at, updated_at)"
                   " VALUES (?, ?, 'sqlite', ?, 1, ?, ?)",
                   ("ds_hostile0000000", HOSTILE_NAME, json.dumps({"path": "/nonexistent.db", "read_only": True}), now, now))
        db.execute("INSERT INTO queries (id, name, datasource_id, body, parameters, timeout_ms, max_rows, version,"
                   " created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?)",
                   ("q_hostile00000000", "<b onmouseover=alert(3)>bold</b>", "ds_hostile0000000",
                    json.dumps({"body": "SELECT 1", "description": "<script>alert(4)</script>"}),
                    json.dumps([{"name": "p", "type": "string", "required": False,
                                 "default": "\"><img src=x onerror=alert(5)>"}]), now, now))
        db.commit()
    finally:
        db.close()
    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        page.get_by_role("link", name="Datasources").click()
        link = page.get_by_role("link", name=HOSTILE_NAME)
        link.wait_for()
        assert link.inner_text() == HOSTILE_NAME
        assert page.locator("table.datasources img").count() == 0
        shot(page, "hostile-datasources-1280")
        link.click()
        page.get_by_role("heading", name=HOSTILE_NAME).wait_for()
        assert page.get_by_label("Name").input_value() == HOSTILE_NAME
        page.get_by_role("link", name="Queries").first.click()
        page.get_by_role("link", name="<b onmouseover=alert(3)>bold</b>", exact=True).click()
        page.get_by_label("Description", exact=True).wait_for()
        assert page.get_by_label("Description", exact=True).input_value() == "<script>alert(4)</script>"
        assert page.get_by_label("p", exact=True).get_attribute("placeholder") == "default: \"><img src=x onerror=alert(5)>"
        page.get_by_role("link", name="Queries").first.click()
        page.get_by_role("link", name="Edit and run Seeded orders").click()
        page.get_by_label("customer", exact=True).fill("acme")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("3 rows in").wait_for()
        assert page.locator("#results script, #results img").count() == 0
        assert page.locator("#results td", has_text=HOSTILE_ROW).count() == 1
        shot(page, "hostile-row-1280")
        # Creating such a name through the console: refused, said next to the Name field.
        page.goto(f"{app.url}/#/datasources/new")
        page.get_by_label("Name").fill(HOSTILE_NAME)
        page.get_by_label("Kind").select_option("sqlite")
        page.get_by_label("File path").fill("/tmp/x.db")
        page.get_by_role("button", name="Create datasource").click()
        error = page.locator("[data-field='name'] .field-error")
        error.wait_for()
        assert "'name' must be" in error.inner_text()
        assert page.evaluate("document.querySelectorAll('img:not(.qr)').length") == 0
        shot(page, "hostile-name-refused-1280")
        page.mouse.move(200, 300)
        page.wait_for_timeout(300)
        clean(recorder)
    finally:
        context.close()


# --- the browser enforces the CSP -------------------------------------------------------------


def test_the_browser_enforces_the_consoles_csp_and_headers(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        response = page.goto(app.url + "/")
        headers = response.headers
        assert headers["content-security-policy"] == CONSOLE_CSP
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["strict-transport-security"].startswith("max-age=")  # not --dev
        page.get_by_label("Username").wait_for()
        # Injected markup cannot run: an inline script and an inline handler are both refused
        # by the browser, which reports each violation. (Code evaluated by the test driver itself
        # is exempt from CSP, so eval is covered by the header having no 'unsafe-eval' and by the
        # static check that the console's code never calls it.)
        blocked = page.evaluate("""async () => {
            const violations = [];
            document.addEventListener('securitypolicyviolation', (e) => violations.push(e.effectiveDirective));
            const s = document.createElement('script');
            s.textContent = 'window.__inline = 1';
            document.body.append(s);
            const b = document.createElement('button');
            b.setAttribute('onclick', 'window.__handler = 1');
            document.body.append(b);
            b.click();
            await new Promise((r) => setTimeout(r, 200));
            return {inline: window.__inline === 1, handler: window.__handler === 1, violations: violations.sort()};
        }""")
        assert blocked == {"inline": False, "handler": False,
                           "violations": ["script-src-attr", "script-src-elem"]}
        assert "unsafe" not in headers["content-security-policy"]
        # A login with a foreign Origin is refused by the API even if a page tried it.
        status = page.evaluate("""async () => (await fetch('/api/v1/users', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
        assert status in (401, 403)
        assert recorder.dialogs == []
    finally:
        context.close()


# --- big results and the forms of other kinds -------------------------------------------------


def test_big_results_stream_in_and_each_kind_has_its_form(world: World, seeded: dict[str, str]) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        page.goto(f"{app.url}/#/queries/{seeded['series']}")
        assert page.get_by_label("count (integer)").get_attribute("placeholder") == "default: 10"
        page.get_by_label("count (integer)").fill("25000")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("25,000 rows in").wait_for()
        assert "the first 10,000 are shown" in page.locator("#results").locator("..").inner_text()
        assert page.locator("#results tbody tr").count() == 10_000
        ndjson = [u for u, t in recorder.content_types.items()
                  if u.endswith("/run") and t.startswith("application/x-ndjson")]
        assert ndjson, "the run was not answered as NDJSON"
        page.get_by_label("count (integer)").fill("2.5")
        page.get_by_role("button", name="Run", exact=True).click()
        page.locator(".run-form [data-field='param.count'] .field-error").wait_for()
        shot(page, "query-big-result-1280")

        page.goto(f"{app.url}/#/datasources/new")
        page.get_by_label("Kind").select_option("rest")
        page.get_by_label("Authentication").select_option("bearer")
        assert page.get_by_label("Bearer token").is_visible()
        page.get_by_label("Authentication").select_option("header")
        assert page.get_by_label("Header name").is_visible() and page.get_by_label("API key").is_visible()
        assert page.get_by_label("Bearer token").count() == 0
        page.get_by_label("Name", exact=True).fill("Billing API")
        page.get_by_label("Base URL").fill("https://billing.example.com/v1")
        page.get_by_label("Header name").fill("X-Api-Key")
        page.get_by_label("API key").fill("key-7c1e-never-shown")
        page.get_by_role("button", name="Create datasource").click()
        page.get_by_role("heading", name="Billing API").wait_for()
        assert page.locator(".secret-state").inner_text() == "set"
        assert "key-7c1e-never-shown" not in page.content()
        shot(page, "datasource-rest-1280")
        page.goto(f"{app.url}/#/datasources/new")
        page.get_by_label("Kind").select_option("mongodb")
        assert page.get_by_label("Port").input_value() == "27017"
        page.get_by_label("Kind").select_option("mysql")
        assert page.get_by_label("Port").input_value() == "3306"
        assert page.get_by_label("TLS", exact=True).input_value() == "verify-full"
        assert page.get_by_label("Read only").is_checked()
        assert not page.get_by_label("Allow the password without verified TLS").is_checked()
        assert page.get_by_label("Password", exact=True).is_visible()
        page.get_by_label("Kind").select_option("sqlite")
        assert page.get_by_label("Read only").is_checked()
        assert page.get_by_text("This kind takes no secret.").is_visible()
        clean(recorder)
    finally:
        context.close()


# --- errors land where their field says -------------------------------------------------------


def test_errors_land_on_the_input_their_field_names_never_by_their_words(
        world: World, seeded: dict[str, str]) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        # A declaration without a valid name: its message says "name", but its field is the
        # declaration (parameters[1]), so it goes on that row, not on the query's Name.
        page.goto(f"{app.url}/#/queries/new")
        page.get_by_label("Name", exact=True).fill("Field placement")
        page.get_by_label("Datasource").select_option(label="Seeded warehouse (postgres)")
        page.get_by_label("Body").fill("SELECT {{ a }}")
        page.get_by_role("button", name="Add parameter").click()
        page.get_by_role("button", name="Add parameter").click()
        rows = page.locator(".param-row")
        rows.nth(0).get_by_label("Parameter name").fill("a")
        rows.nth(1).get_by_label("Parameter name").fill("1bad")
        page.get_by_role("button", name="Create query").click()
        row_error = page.locator("[data-field='parameters[1]'] .field-error").first
        row_error.wait_for()
        assert "invalid name" in row_error.inner_text()
        assert page.locator("#query-form > [data-field='name'] .field-error").is_hidden()
        # Removing the first row renumbers the rest: the API's parameters[0] is now that row.
        rows.nth(0).get_by_role("button", name="Remove this parameter").click()
        assert page.locator(".param-row").first.get_attribute("data-field") == "parameters[0]"

        # A 409 secrets_required names config.port in its words and secrets.password in its field:
        # it goes on the password.
        page.goto(f"{app.url}/#/datasources/{seeded['datasource']}")
        page.get_by_role("heading", name="Seeded warehouse").wait_for()
        page.evaluate("""async () => {
            const {showError} = await import('/console/dom.js');
            const {ApiError} = await import('/console/api.js');
            const form = document.getElementById('datasource-form');
            showError(form, new ApiError(409, 'secrets_required',
                'changing config.port changes where this datasource\\'s secrets are sent: enter '
                + 'secrets.password again', {field: 'secrets.password'}));
        }""")
        secret_error = page.locator(".secret[data-field='secrets.password'] > .field-error")
        secret_error.wait_for()
        assert "config.port" in secret_error.inner_text()
        assert page.locator("[data-field='config.port'] .field-error").is_hidden()
        # Without a field, an error goes to the form's alert box whatever its words say.
        page.evaluate("""async () => {
            const {showError} = await import('/console/dom.js');
            showError(document.getElementById('datasource-form'),
                      new Error("'name' must be 1 to 100 characters (config.host)"));
        }""")
        page.locator(".ds-form > .alert", has_text="'name' must be").wait_for()
        assert page.locator("[data-field='name'] .field-error").is_hidden()
        assert page.locator("[data-field='config.host'] .field-error").is_hidden()
        clean(recorder)
    finally:
        context.close()


# --- the console spells no role and tests no kind by name: it reads the server's registries ---

ADA_PASSWORD = "ada-admin-password-0123"


def answer_changed(page: Any, path: str, change: Any) -> None:
    """The page gets the server's own answer to `path` passed through `change` (routes run newest
    first: this one before the Recorder's)."""
    def handle(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json=change(response.json()))

    page.route(f"**{path}", handle)


def enrolled_admin(world: World) -> str:
    """An admin (ada) who set up 2FA through the API: the TOTP secret."""
    add_user(world.app, world.root, "ada", "admin", ADA_PASSWORD)
    client = ApiClient(world.app)
    client.login("ada", ADA_PASSWORD)
    status, begun = client.call("POST", "/api/v1/users/me/2fa")
    assert status == 201, begun
    secret = re.search(r"secret=([A-Z2-7]+)", begun["otpauth_uri"]).group(1)  # type: ignore[union-attr]  # asserted by the call
    status, done = client.call("POST", "/api/v1/users/me/2fa/confirm",
                               {"code": pyotp.TOTP(secret).now()})
    assert status == 200, done
    return secret


def test_the_role_lists_are_the_servers(world: World) -> None:
    app = world.app
    secret = enrolled_admin(world)
    context, page, recorder = new_page(world.browser)
    try:
        # As the server names them, lowest first.
        login(page, app.url, "ada", ADA_PASSWORD)
        # The next step's code: the enrolment used this step's, and no code works twice.
        page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(time.time() + 30))
        page.get_by_role("button", name="Verify").click()
        page.get_by_role("heading", name="Queries").wait_for()
        page.goto(f"{app.url}/#/users")
        page.get_by_role("heading", name="Add a user").wait_for()
        new_role = page.locator("#new-user select[name='role']")
        assert new_role.locator("option").all_inner_texts() == ["viewer", "developer", "admin"]
        assert new_role.input_value() == "viewer"

        # A role only the server knows (as after an upgrade): every list shows it, in its place,
        # and the navigation ranks by the server's order.
        answer_changed(page, "/api/v1/roles",
                       lambda body: {**body, "roles": ["guest", *body["roles"][:1], "auditor",
                                                         *body["roles"][1:]]})
        page.reload()
        page.get_by_role("heading", name="Add a user").wait_for()
        wanted = ["guest", "viewer", "auditor", "developer", "admin"]
        assert new_role.locator("option").all_inner_texts() == wanted
        assert new_role.input_value() == "guest"  # the least, as the server orders them
        assert page.get_by_label("Role of dev").locator("option").all_inner_texts() == wanted
        assert page.get_by_label("Role of dev").input_value() == "developer"
        page.goto(f"{app.url}/#/account")
        page.get_by_role("button", name="Create token").wait_for()
        token_role = page.locator(".inline-form select[name='role']")
        assert token_role.locator("option").all_inner_texts() == wanted  # up to mine: admin
        assert page.locator("#nav a").all_inner_texts()[-3:] == ["Users", "Keys", "My account"]
        clean(recorder)
    finally:
        context.close()

    context, page, recorder = new_page(world.browser)
    try:
        answer_changed(page, "/api/v1/roles",
                       lambda body: {**body, "roles": ["viewer", "auditor", "developer", "admin"]})
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        assert page.locator("#nav a").all_inner_texts() == ["Queries", "Datasources", "My account"]
        page.goto(f"{app.url}/#/account")
        page.get_by_role("button", name="Create token").wait_for()
        assert page.locator(".inline-form select[name='role'] option").all_inner_texts() == [
            "viewer", "auditor", "developer"]
        # The order is the server's: with developer ranked above admin, the admin pages open
        # (the server still refuses their calls: it decides, the console only offers).
        answer_changed(page, "/api/v1/roles",
                       lambda body: {**body, "roles": ["viewer", "admin", "developer"]})
        page.reload()
        page.get_by_role("heading", name="My account").wait_for()
        assert "Users" in page.locator("#nav a").all_inner_texts()
        # A role the server does not name is never enough: no page is offered.
        answer_changed(page, "/api/v1/roles", lambda body: {**body, "roles": ["viewer", "admin"]})
        page.reload()
        page.get_by_role("heading", name="Queries").wait_for()
        assert page.locator("#nav a").all_inner_texts() == []
        clean(recorder)
    finally:
        context.close()


def test_where_a_datasource_points_and_what_a_body_is_are_each_kinds_declaration(
        world: World, seeded: dict[str, str]) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        page.goto(f"{app.url}/#/datasources")
        row = page.locator("table.datasources tr", has_text="Seeded warehouse")
        assert row.locator("td[data-label='Where']").inner_text() == \
            f"127.0.0.1:{world.pg.port}/postgres"

        # The kinds as another server might declare them: PostgreSQL shown by its user and a
        # body in JSON, the kinds in another order (the first is the new form's default).
        def changed(body: dict[str, Any]) -> dict[str, Any]:
            kinds = list(reversed(body["kinds"]))
            for kind in kinds:
                if kind["name"] == "postgres":
                    kind.update(where="{user} at {host} ({database}, {missing})", body="json")
            return {"kinds": kinds}

        answer_changed(page, "/api/v1/kinds", changed)
        page.reload()
        assert row.locator("td[data-label='Where']").inner_text() == \
            "postgres at 127.0.0.1 (postgres, )"
        page.goto(f"{app.url}/#/datasources/new")
        assert page.get_by_label("Kind").input_value() == "mysql"
        assert page.get_by_label("Kind").locator("option").all_inner_texts() == [
            "MySQL / MariaDB", "SQLite file", "REST API", "MongoDB", "PostgreSQL"]

        page.goto(f"{app.url}/#/queries/new")
        assert page.locator("[data-field='body'] .help").inner_text().endswith(
            "; for REST API, MongoDB and PostgreSQL, a JSON object.")
        page.get_by_label("Name", exact=True).fill("Body by declaration")
        page.get_by_label("Datasource").select_option(label="Seeded warehouse (postgres)")
        page.get_by_label("Body").fill("SELECT 1")
        sent = len(recorder.responses)
        page.get_by_role("button", name="Create query").click()
        error = page.locator("[data-field='body'] .field-error")
        error.wait_for()
        assert "the body is not valid JSON" in error.inner_text()
        assert not [url for url, _, _ in recorder.responses[sent:] if url.endswith("/api/v1/queries")]
        clean(recorder)
    finally:
        context.close()
