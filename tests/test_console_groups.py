"""Who may run what, in Chromium against a real `appliance serve` (issue 25): a viewer's list at
1280 and 390 px shows only the queries they may run; the admin edits a user's groups on the
users page; the query editor's "Visible to"; and after a password reset the login leads straight
to the change-password form. Screenshots in the test output's console folder."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clean_env, run_cli
from tests.support.console import (
    ADMIN_PASSWORD,
    DEVELOPER_PASSWORD,
    VIEWER_PASSWORD,
    WIDTHS,
    ApiClient,
    Appliance,
    add_user,
    appliance,
    chromium_for,
    login,
    new_page,
    shot,
)

# Real Chromium: `make test-fast` leaves these out (tests/test_suite_marks.py keeps it so).
pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")

@dataclass
class World:
    app: Appliance
    browser: Any
    root: Path
    ids: dict[str, str]


def _cli(app_state: Path, *args: str) -> str:
    done = run_cli(*args, "--state-dir", str(app_state), env=clean_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console-groups")
    db = root / "shop.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1);")
    conn.close()
    with appliance(root, APPLIANCE_AUTH_REQUIRE_2FA="",
                   APPLIANCE_EGRESS_ALLOW_PRIVATE="true") as app:
        add_user(app, root, "dev", "developer", DEVELOPER_PASSWORD)
        add_user(app, root, "vera", "viewer", VIEWER_PASSWORD, groups=("Team-A",))
        add_user(app, root, "walt", "viewer", VIEWER_PASSWORD)
        dev = ApiClient(app)
        dev.login("dev", DEVELOPER_PASSWORD)
        status, ds = dev.call("POST", "/api/v1/datasources", {
            "name": "shop", "kind": "sqlite", "config": {"path": str(db)}})
        assert status == 201, ds
        ids = {}
        for name, groups in (("Public report", []), ("Team A report", ["team-a"]),
                             ("Team B report", ["team-b"])):
            status, made = dev.call("POST", "/api/v1/queries", {
                "name": name, "datasource_id": ds["id"], "body": "SELECT n FROM t",
                "groups": groups})
            assert status == 201, made
            ids[name] = made["id"]
        with chromium_for(app) as browser:
            yield World(app, browser, root, ids)


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_a_viewers_list_shows_only_what_they_may_run(world: World, width: str) -> None:
    context, page, recorder = new_page(world.browser, *WIDTHS[width])
    try:
        login(page, world.app.url, "vera", VIEWER_PASSWORD)
        page.get_by_role("heading", name="My queries").wait_for()
        page.get_by_text("Team A report").first.wait_for()
        main = page.locator("#main").inner_text()
        assert "Public report" in main and "Team A report" in main
        assert "Team B report" not in main
        shot(page, f"groups-viewer-list-{width}")
        # Another group's query by its address: the console shows what a missing one shows.
        page.goto(f"{world.app.url}/#/queries/{world.ids['Team B report']}")
        page.get_by_text("no such query").wait_for()
        assert "Team B report" not in page.locator("#main").inner_text()
        bodies = b"".join(body for url, _, body in recorder.responses if "/api/" in url)
        assert b"Team B report" not in bodies and b"team-b" not in bodies
        assert recorder.page_errors == []
    finally:
        context.close()


def test_the_admin_edits_a_users_groups_and_a_developer_a_querys(world: World) -> None:
    app = world.app
    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "admin", ADMIN_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        page.goto(f"{app.url}/#/users")
        groups = page.get_by_label("Groups of walt (separated by commas)")
        assert groups.input_value() == ""
        assert page.get_by_label("Groups of vera (separated by commas)").input_value() == "team-a"
        groups.fill("Team-B, team-a")
        page.get_by_role("button", name="Save the groups of walt").click()
        page.get_by_text("walt is in: team-a, team-b.").wait_for()
        shot(page, "groups-admin-users-1280")
        # A bad name: the server's words, nothing saved.
        groups = page.get_by_label("Groups of walt (separated by commas)")
        groups.fill("no/slash")
        page.get_by_role("button", name="Save the groups of walt").click()
        page.get_by_text("walt: a group name must be").wait_for()
        assert recorder.page_errors == []
    finally:
        context.close()
    walt = ApiClient(app)
    walt.login("walt", VIEWER_PASSWORD)
    status, listed = walt.call("GET", "/api/v1/queries")
    assert status == 200
    assert [q["name"] for q in listed["queries"]] == ["Public report", "Team A report",
                                                      "Team B report"]

    context, page, recorder = new_page(world.browser)
    try:
        login(page, app.url, "dev", DEVELOPER_PASSWORD)
        page.get_by_role("heading", name="Queries").wait_for()
        page.goto(f"{app.url}/#/queries/{world.ids['Team B report']}")
        page.get_by_role("group", name="Visible to").wait_for()
        assert page.get_by_label("Only these groups").is_checked()
        assert page.get_by_label("Groups", exact=True).input_value() == "team-b"
        shot(page, "groups-query-editor-1280")
        page.get_by_label("Groups", exact=True).fill("team-c")
        with page.expect_response(lambda r: r.request.method == "PATCH"
                                  and "/api/v1/queries/" in r.url) as saved:
            page.get_by_role("button", name="Save changes").click()
        assert saved.value.status == 200
        assert recorder.page_errors == []
    finally:
        context.close()
    status, listed = walt.call("GET", "/api/v1/queries")
    assert [q["name"] for q in listed["queries"]] == ["Public report", "Team A report"]


def test_after_a_reset_the_login_leads_to_the_password_change(world: World) -> None:
    app = world.app
    out = _cli(app.state, "users", "reset-password", "walt")
    one_time = out.strip().rsplit(": ", 1)[1]
    context, page, recorder = new_page(world.browser, *WIDTHS["narrow"])
    try:
        login(page, app.url, "walt", one_time)
        page.get_by_text("Your password was reset by an administrator").wait_for()
        assert page.get_by_label("Current password").is_visible()
        shot(page, "groups-password-change-390")
        page.get_by_label("Current password").fill(one_time)
        page.get_by_label("New password", exact=True).fill("walts-new-password-0123")
        page.get_by_label("New password again").fill("walts-new-password-0123")
        page.get_by_role("button", name="Change password").click()
        page.get_by_role("button", name="Log in").wait_for()
        login(page, app.url, "walt", "walts-new-password-0123")
        page.get_by_role("heading", name="My queries").wait_for()
        assert recorder.page_errors == []
    finally:
        context.close()
