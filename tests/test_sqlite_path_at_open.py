"""A SQLite datasource's file is checked when the engine opens it, not only when it is saved: a
file replaced later by a symlink to the appliance's store, a directory on the path replaced by a
link into the state directory, a hard link to the store, or a directory are refused (502
`datasource_file_refused`) and no row of the store is returned; the demo database under
`<state>/demo/` keeps working."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import Appliance
from tests.support.queries import (
    as_role,
    create_datasource,
    create_query,
    proxy,
    run,
    sqlite_database,
)


def _data(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_database(path, ["CREATE TABLE users (username TEXT, password_hash TEXT)",
                                  "INSERT INTO users VALUES ('plain', 'not-a-hash')"])


async def _users_query(appliance: Appliance, path: Path) -> dict[str, Any]:
    dev = as_role(appliance, "developer")
    ds = await create_datasource(dev, name=f"ds {path.parent.name}", kind="sqlite",
                                 config={"path": str(path)})
    return await create_query(dev, ds["id"], "SELECT username, password_hash FROM users",
                              name=f"users {path.parent.name}")


async def _assert_refused(appliance: Appliance, query: dict[str, Any], why: str) -> None:
    for role in ("developer", "viewer"):
        resp = await run(as_role(appliance, role), query["id"])
        assert resp.status == 502 and resp.code == "datasource_file_refused", resp.body
        text = str(resp.body)
        assert "argon2" not in text and "admin" not in text, text
        if role == "developer":
            assert why in resp.body["error"]["message"], resp.body
        else:
            assert str(appliance.state) not in text, text


async def test_a_file_replaced_by_a_symlink_to_the_store_is_refused(tmp_path: Path) -> None:
    path = _data(tmp_path / "data" / "users.sqlite")
    async with proxy(tmp_path / "state") as appliance:
        query = await _users_query(appliance, path)
        path.unlink()
        path.symlink_to(appliance.store_path)
        await _assert_refused(appliance, query, "symbolic link")
        # and the path cannot be saved again as it is now
        dev = as_role(appliance, "developer")
        resp = await dev.request("POST", "/api/v1/datasources",
                                 {"name": "again", "kind": "sqlite", "config": {"path": str(path)}})
        assert resp.status == 422 and "symbolic link" in resp.body["error"]["message"]


@pytest.mark.sqlite_store(reason="links to the SQLite store's file in the state directory; a "
                                   "PostgreSQL store has no file there")
async def test_a_directory_replaced_by_a_link_into_the_state_directory_is_refused(
        tmp_path: Path) -> None:
    path = _data(tmp_path / "data" / "appliance.db")
    async with proxy(tmp_path / "state") as appliance:
        query = await _users_query(appliance, path)
        path.parent.rename(tmp_path / "moved")
        path.parent.symlink_to(appliance.state, target_is_directory=True)
        await _assert_refused(appliance, query, "state directory")


@pytest.mark.sqlite_store(reason="links to the SQLite store's file in the state directory; a "
                                   "PostgreSQL store has no file there")
async def test_a_hard_link_to_the_store_is_refused(tmp_path: Path) -> None:
    path = _data(tmp_path / "data" / "users.sqlite")
    async with proxy(tmp_path / "state") as appliance:
        query = await _users_query(appliance, path)
        path.unlink()
        os.link(appliance.store_path, path)
        await _assert_refused(appliance, query, "same file")


async def test_a_directory_or_a_missing_file_is_not_a_500(tmp_path: Path) -> None:
    path = _data(tmp_path / "data" / "users.sqlite")
    async with proxy(tmp_path / "state") as appliance:
        query = await _users_query(appliance, path)
        path.unlink()
        resp = await run(as_role(appliance, "developer"), query["id"])
        assert resp.status == 502 and resp.code == "datasource_unreachable", resp.body
        path.mkdir()
        await _assert_refused(appliance, query, "not a regular file")


async def test_a_file_checked_at_open_still_works_and_so_does_the_demo_directory(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with proxy(state) as appliance:
        for path in (_data(tmp_path / "data" / "users.sqlite"),
                     _data(state / "demo" / "other.sqlite")):
            query = await _users_query(appliance, path)
            resp = await run(as_role(appliance, "viewer"), query["id"])
            assert resp.status == 200 and resp.body["rows"] == [["plain", "not-a-hash"]], \
                resp.body
