"""GET /api/v1/audit's reading (audit/reading.py) on both stores: every filter, paged with the
cursor in both directions, returns exactly what a plain Python filter over all rows returns (in
order, no duplicates, no gaps), also when the scan bound and the index merge cut pages short; a
filter no index serves examines at most SCAN_BOUND positions per request; every bad parameter and
every edited cursor is a 400 with its code."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import reading
from appliance.errors import BadRequest
from appliance.store import Store, open_sqlite_store
from appliance.store.postgres import PostgresStore
from tests.support.app import running
from tests.support.audit import fill
from tests.support.scale import scaled


def matcher(filters: reading.Filters) -> Callable[[dict[str, Any]], bool]:
    """The filters' meaning, written plainly (docs/audit.md#reading-the-log)."""
    def match(row: dict[str, Any]) -> bool:
        f = filters
        return ((not f.actor or row["actor"] == f.actor
                 or row["actor"].startswith(f.actor + " ("))
                and row["action"].startswith(f.action)
                and (not f.outcome or row["outcome"] == f.outcome)
                and row["target"].startswith(f.target)
                and (not f.text or f.text.lower() in row["target"].lower()
                     or f.text.lower() in row["details"].lower())
                and (not f.since or row["time"] >= f.since)
                and (not f.until or row["time"] <= f.until))
    return match


async def page_through(store: Store, filters: reading.Filters, order: str, limit: int
                       ) -> list[int]:
    positions: list[int] = []
    cursor = ""
    for _ in range(10_000):
        start = reading.decode_cursor(cursor, filters)[1] if cursor else None
        parsed = reading.Query(filters, order, limit, start)  # type: ignore[arg-type]  # wrong types on purpose
        page = await reading.search(store, parsed)
        assert len(page.entries) <= limit
        got = [e["position"] for e in page.entries]
        if order == "desc":
            assert got == sorted(got, reverse=True)
            assert all(p >= page.scanned_to for p in got)
        else:
            assert got == sorted(got)
            assert all(p <= page.scanned_to for p in got)
        positions += got
        if page.cursor is None:
            return positions
        cursor = page.cursor
    raise AssertionError("paging never ended")


FILTER_SETS = [
    reading.Filters(),
    reading.Filters(actor="admin"),
    reading.Filters(actor="admin (token t1)"),
    reading.Filters(actor="adminx", outcome="failed"),
    reading.Filters(actor="admin", outcome="error", text="needle"),
    reading.Filters(actor="admin", action="user.up"),
    reading.Filters(actor="admin", outcome="failed", text="needle%"),
    reading.Filters(action="query.run", actor="adminx"),
    reading.Filters(actor="nobody"),
    reading.Filters(action="session."),
    reading.Filters(action="query.run"),
    reading.Filters(action="query.run", outcome="error", actor="bob"),
    reading.Filters(action="q", text="needle"),
    reading.Filters(outcome="denied"),
    reading.Filters(target="query:"),
    reading.Filters(text="needle%"),
    reading.Filters(text="_x"),
    reading.Filters(text="orders_"),
    reading.Filters(text="no such text"),
]


async def test_every_filter_pages_to_exactly_the_plain_filter(any_store: Store,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    await fill(any_store, 3000)
    rows = await any_store.fetch_all("SELECT * FROM audit_log ORDER BY seq")
    assert len(rows) == 3000
    # small bounds, so that pages end at the bound and merges cut short, as at 10 million
    monkeypatch.setattr(reading, "SCAN_BOUND", 700)
    monkeypatch.setattr(reading, "MIN_WINDOW", 40)
    times = [r["time"] for r in rows]
    ranged = [reading.Filters(since=times[1000], until=times[2000]),
              reading.Filters(actor="admin", since=times[2500]),
              reading.Filters(text="needle", until=times[500])]
    for filters in FILTER_SETS + ranged:
        expected = [int(r["seq"]) for r in rows if matcher(filters)(r)]
        for order, limit in (("desc", 37), ("asc", 250)):
            got = await page_through(any_store, filters, order, limit)
            want = expected[::-1] if order == "desc" else expected
            assert got == want, (filters, order, len(got), len(want))
    # more distinct actions than an index merge takes: the bounded scan by position instead
    monkeypatch.setattr(reading, "MAX_KEYS", 2)
    for filters in (reading.Filters(action="user."), reading.Filters(action="s")):
        expected = [int(r["seq"]) for r in rows if matcher(filters)(r)]
        assert await page_through(any_store, filters, "desc", 50) == expected[::-1]


async def test_filtered_reads_are_planned_for_their_values(any_store: Store) -> None:
    """The audit filters read through `Store.search`: on PostgreSQL a prepared statement would
    settle on a generic plan after five runs (a rare actor's page then reads the whole primary
    key); `search` plans each run for its values. SQLite plans every statement anyway."""
    probe = "SELECT current_setting('plan_cache_mode') AS mode"
    if not isinstance(any_store, PostgresStore):
        rows = await any_store.search("SELECT 1 AS one WHERE 1 = ?", (1,))
        assert rows == [{"one": 1}]
        return
    for _ in range(7):  # past the fifth run, where PostgreSQL would choose
        assert await any_store.search(probe) == [{"mode": "force_custom_plan"}]
    assert await any_store.fetch_all(probe) == [{"mode": "auto"}]  # only these reads


async def test_a_filter_no_index_serves_examines_a_bounded_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the real SCAN_BOUND (50,000 positions) under FULL_SCALE, at a tenth of it and of the
    log in `make test-fast` (tests/support/scale.py): the same three bounded requests."""
    bound = scaled(reading.SCAN_BOUND)
    monkeypatch.setattr(reading, "SCAN_BOUND", bound)
    store = await open_sqlite_store(tmp_path / "big.db")
    try:
        head = bound * 12 // 5  # 120,000 at the real bound
        await fill(store, head)
        query = reading.parse_query({"text": "found nowhere", "limit": "100"})
        positions_examined = []
        page = await reading.search(store, query)
        while True:
            assert page.entries == []
            examined = page.examined_from - page.scanned_to + 1
            positions_examined.append(examined)
            assert examined <= reading.SCAN_BOUND
            if page.cursor is None:
                break
            page = await reading.search(store, reading.parse_query(
                {"text": "found nowhere", "limit": "100", "cursor": page.cursor}))
        assert sum(positions_examined) == head
        assert positions_examined == [bound, bound, head - 2 * bound]  # positions 1 to head
        assert page.scanned_to == 1  # the whole log, in three bounded requests
    finally:
        await store.close()


def test_the_cursor_refuses_edits_and_other_filters() -> None:
    filters = reading.Filters(actor="admin")
    cursor = reading.encode_cursor("desc", 500, filters)
    assert reading.decode_cursor(cursor, filters) == ("desc", 500)
    body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    body["p"] = 10
    edited = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    for bad in (edited, cursor[:-2], cursor + "A", "x" * 500, "%%%", "e30", cursor.upper()):
        with pytest.raises(BadRequest) as caught:
            reading.decode_cursor(bad, filters)
        assert caught.value.code == "bad_cursor", bad
    with pytest.raises(BadRequest) as caught:
        reading.decode_cursor(cursor, reading.Filters(actor="bob"))
    assert caught.value.code == "cursor_mismatch"


async def test_the_api_pages_with_filters_and_refuses_bad_parameters(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        for name in ("u1-name", "u2-name", "u3-name"):
            assert (await admin.request("POST", "/api/v1/users", {
                "username": name, "role": "viewer", "password": "some-password-0123"})).status == 201
        everything = (await admin.request("GET", "/api/v1/audit?limit=1000")).body
        assert everything["cursor"] is None and everything["next"] is None
        # the actor of a token's requests is "admin (token …)": the filter "admin" finds them
        made = await admin.request("GET", "/api/v1/audit?actor=admin&action=user.create")
        assert made.status == 200
        assert [e["target"] for e in made.body["entries"]] == [
            "user:u3-name", "user:u2-name", "user:u1-name"]
        assert all(e["actor"].startswith("admin (token ") for e in made.body["entries"])
        first = await admin.request("GET", "/api/v1/audit?action=user.create&limit=2")
        assert len(first.body["entries"]) == 2 and first.body["cursor"]
        rest = await admin.request(
            "GET", f"/api/v1/audit?action=user.create&limit=2&cursor={first.body['cursor']}")
        created = [e["position"] for e in everything["entries"] if e["action"] == "user.create"]
        assert len(created) == 6  # the admin, viewer and developer of the setup too
        assert [e["position"] for e in first.body["entries"] + rest.body["entries"]] == \
            created[:4]
        # the cursor belongs to its filters
        other = await admin.request(
            "GET", f"/api/v1/audit?action=user.&limit=2&cursor={first.body['cursor']}")
        assert other.status == 400 and other.code == "cursor_mismatch"
        nothing = await admin.request("GET", "/api/v1/audit?text=zzz-not-there")
        assert nothing.body["entries"] == [] and nothing.body["cursor"] is None
        assert nothing.body["scanned_to"] == 1
        forward = await admin.request("GET", "/api/v1/audit?order=asc&limit=2")
        assert [e["position"] for e in forward.body["entries"]] == [1, 2]
        time = everything["entries"][-1]["time"]
        since = await admin.request("GET", f"/api/v1/audit?since={time[:19]}Z&order=asc&limit=1")
        assert since.status == 200
        bad = {
            "limit=0": "bad_query", "limit=1001": "bad_query", "limit=1e3": "bad_query",
            "limit=%EF%BC%91": "bad_query", "after=-1": "bad_query", "before=0": "bad_query",
            "before=99999999999999999999": "bad_query", "outcome=maybe": "bad_query",
            "order=up": "bad_query", "actr=admin": "bad_query", "actor=a&actor=b": "bad_query",
            "actor=" + "a" * 201: "bad_query", "text=a%00b": "bad_query",
            "action=x%0Ay": "bad_query", "target=%C2%85": "bad_query",
            "since=yesterday": "bad_query", "until=2026-01-01T00:00:00": "bad_query",
            "since=0001-01-01T00:00:00%2B01:00": "bad_query",
            "until=9999-12-31T23:59:59.999999Z": "bad_query",
            "until=2026-01-01T00:00:00%2B25:00": "bad_query",
            "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z": "bad_query",
            "before=5&after=1": "bad_query", "before=5&order=asc": "bad_query",
            "cursor=abc": "bad_cursor", "cursor=" + "A" * 401: "bad_cursor",
            f"cursor={first.body['cursor']}&before=3": "bad_query",
        }
        for query, code in bad.items():
            resp = await admin.request("GET", f"/api/v1/audit?{query}")
            assert resp.status == 400 and resp.code == code, (query, resp.status, resp.body)
            assert "a" * 50 not in json.dumps(resp.body)  # the value is not echoed back
