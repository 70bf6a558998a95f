"""Every timestamp the JSON API returns is one RFC 3339 UTC format (`2026-12-03T12:00:00.123Z`),
written by `appliance.timestamps.rfc3339`; `parse` reads RFC 3339 back (and refuses the rest)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from appliance import demo, timestamps
from appliance.http.app_keys import CORE
from tests.support.app import running

ONE_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Anything a reader would take for a date or a time of day.
LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
# An epoch in seconds or milliseconds between 2001 and 2286.
EPOCH_SECONDS = (1e9, 1e10)
EPOCH_MILLISECONDS = (1e12, 1e13)


def test_the_one_format() -> None:
    assert timestamps.rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert timestamps.rfc3339(1796299200.1239) == "2026-12-03T12:00:00.123Z"
    paris = dt.timezone(dt.timedelta(hours=1))
    assert timestamps.rfc3339(dt.datetime(2026, 12, 3, 13, 0, 0, 5000, paris)) == \
        "2026-12-03T12:00:00.005Z"
    assert timestamps.rfc3339(None) is None
    with pytest.raises(ValueError, match="naive"):
        timestamps.rfc3339(dt.datetime(2026, 12, 3))  # a naive one: refused
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            timestamps.rfc3339(bad)


def test_parse_reads_rfc3339_and_refuses_the_rest() -> None:
    for text in ("2026-12-03T12:00:00Z", "2026-12-03T12:00:00.000Z", "2026-12-03t12:00:00z",
                 "2026-12-03 13:00:00+01:00", "2026-12-03T07:00:00.000-05:00"):
        assert timestamps.parse(text) == 1796299200.0, text
    assert timestamps.parse(timestamps.rfc3339(1796299200.5) or "") == 1796299200.5
    for bad in ("2026-12-03T12:00:00", "2026-12-03", "1796299200", "", "yesterday",
                "2026-13-03T12:00:00Z", "2026-12-03X12:00:00Z", "2026-12-03T12:00:00Z" + "0" * 40):
        with pytest.raises(ValueError, match="RFC 3339"):
            timestamps.parse(bad)


def _walk(value: Any, where: str, found: list[str], bad: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{where}.{key}", found, bad)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{where}[{index}]", found, bad)
    elif isinstance(value, bool):
        return
    elif isinstance(value, (int, float)):
        if EPOCH_SECONDS[0] <= value < EPOCH_SECONDS[1] or \
                EPOCH_MILLISECONDS[0] <= value < EPOCH_MILLISECONDS[1]:
            bad.append(f"{where} = {value!r} (an epoch number)")
    elif isinstance(value, str) and LOOKS_LIKE_TIME.match(value):
        if ONE_FORMAT.fullmatch(value):
            found.append(where)
        else:
            bad.append(f"{where} = {value!r}")


@pytest.mark.sqlite_store(reason="the demo datasource is a SQLite file; the store does not matter")
async def test_every_route_writes_one_format(tmp_path: Path) -> None:
    async with running(tmp_path / "state", tokens=True) as found:
        admin = found.client(token=found.tokens["admin"])
        await demo.install(found.app[CORE])
        me = found.client()
        await me.login("developer")
        made = await me.request("POST", "/api/v1/users/me/tokens",
                                {"name": "ci", "expires_days": 30})
        assert made.status == 201, made.body
        await me.request("DELETE", f"/api/v1/users/me/tokens/{made.body['id']}")
        queries = (await admin.request("GET", "/api/v1/queries?full=1")).body["queries"]
        datasources = (await admin.request("GET", "/api/v1/datasources")).body["datasources"]
        paths = ["/api/v1/users", "/api/v1/users/me", "/api/v1/users/developer",
                 "/api/v1/users/developer/tokens", "/api/v1/users/me/tokens",
                 "/api/v1/datasources", f"/api/v1/datasources/{datasources[0]['id']}",
                 "/api/v1/queries?full=1", f"/api/v1/queries/{queries[0]['id']}",
                 "/api/v1/keys", "/api/v1/instances", "/api/v1/tls", "/api/v1/egress",
                 "/api/v1/session", "/api/v1/audit/verify"]
        seen: dict[str, list[str]] = {}
        bad: list[str] = []
        for path in paths:
            resp = await admin.request("GET", path)
            assert resp.status == 200, (path, resp.body)
            seen[path] = []
            _walk(resp.body, path, seen[path], bad)
        made_view = made.body
        _walk(made_view, "POST /api/v1/users/me/tokens", [], bad)
        assert bad == []
        # The families that carry times really did (the walk is not vacuous).
        for path, key in (("/api/v1/users", "created_at"), ("/api/v1/datasources", "updated_at"),
                          ("/api/v1/queries?full=1", "created_at"), ("/api/v1/keys", "created_at"),
                          ("/api/v1/instances", "last_seen"), ("/api/v1/tls", "not_after"),
                          ("/api/v1/users/developer/tokens", "revoked_at"),
                          ("/api/v1/users/developer/tokens", "expires_at")):
            assert any(where.endswith(key) for where in seen[path]), (path, key, seen[path])
        assert ONE_FORMAT.fullmatch(made_view["expires_at"])
