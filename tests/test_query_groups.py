"""Who may run what (issue 25), through the real API of a real appliance on a real SQLite
datasource: a viewer sees and runs the queries for every viewer and those of their groups, and
any other query answers exactly as a missing one (404, the same bytes); developers see all;
a viewer's token likewise; a change of membership or of a query's groups counts from the next
request, also when another process (the CLI) makes it. Also the forced password change after
an administrator's reset."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clean_env, run_cli
from tests.support.app import PASSWORDS, Appliance, Client, running, store_env
from tests.support.queries import as_role, create_datasource, create_query, run, sqlite_database

MISSING = "q_0000000000000000"


async def cli(appliance: Appliance, *args: str) -> subprocess.CompletedProcess[str]:
    """`appliance ARGS --state-dir …` as another process, on the running appliance's store."""
    return await asyncio.to_thread(run_cli, *args, "--state-dir", str(appliance.state),
                                   env=clean_env(**store_env(appliance.state)))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return sqlite_database(tmp_path / "shop.db", [
        "CREATE TABLE t (n INTEGER)", "INSERT INTO t VALUES (1), (2)"])


async def _setup(appliance: Appliance, db: Path) -> dict[str, str]:
    dev = as_role(appliance, "developer")
    ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
    ids = {}
    for name, groups in (("public", None), ("for a", ["A"]), ("for b", ["b"]),
                         ("for a or b", ["b", "a"])):
        extra = {} if groups is None else {"groups": groups}
        made = await create_query(dev, ds["id"], "SELECT n FROM t ORDER BY n", name=name,
                                  **extra)
        ids[name] = made["id"]
    admin = as_role(appliance, "admin")
    resp = await admin.request("PATCH", "/api/v1/users/viewer", {"groups": ["a"]})
    assert resp.status == 200, resp.body
    assert resp.body["groups"] == ["a"]
    return ids


async def _raw(client: Client, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """Status and the body's exact bytes."""
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    if client.cookie:
        headers["Cookie"] = f"__Host-appliance-session={client.cookie}"
        if method != "GET":
            headers.update({"Origin": client.appliance.origin, "X-Appliance-CSRF": "1"})
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with client.http.request(method, client.appliance.url + path, data=data,
                                   headers=headers, ssl=client.appliance.ssl) as resp:
        return resp.status, await resp.read()


async def _names(client: Client) -> list[str]:
    resp = await client.request("GET", "/api/v1/queries")
    assert resp.status == 200, resp.body
    return [q["name"] for q in resp.body["queries"]]


async def _viewer_session(appliance: Appliance) -> Client:
    client = appliance.client()
    assert (await client.login("viewer")).status == 201
    return client


async def test_a_viewer_sees_and_runs_only_their_groups_queries(tmp_path: Path,
                                                                db: Path) -> None:
    async with running(tmp_path / "s", require_2fa="", tokens=True,
                       egress={"allow_private": True}) as appliance:
        ids = await _setup(appliance, db)
        token = as_role(appliance, "viewer")
        session = await _viewer_session(appliance)
        for viewer in (token, session):
            assert await _names(viewer) == ["for a", "for a or b", "public"]
            for name in ("public", "for a", "for a or b"):
                resp = await run(viewer, ids[name])
                assert resp.status == 200 and resp.body["rows"] == [[1], [2]], resp.body
                assert (await viewer.request("GET", f"/api/v1/queries/{ids[name]}")).status == 200
            # Another group's query: byte for byte the answer for one that does not exist.
            for method, suffix, body in (("GET", "", None), ("POST", "/run", {"params": {}})):
                hidden = await _raw(viewer, method, f"/api/v1/queries/{ids['for b']}{suffix}",
                                    body)
                missing = await _raw(viewer, method, f"/api/v1/queries/{MISSING}{suffix}", body)
                assert hidden[0] == missing[0] == 404
                assert hidden[1] == missing[1], (hidden, missing)
                assert b"for b" not in hidden[1]
            # Streamed too, and with a body the run would refuse.
            hidden = await viewer.request("POST", f"/api/v1/queries/{ids['for b']}/run",
                                          {"params": {"nope": 1}},
                                          headers={"Accept": "application/x-ndjson"})
            assert hidden.status == 404 and hidden.code == "query_not_found"
        # Developers and admins see and run everything, and see the groups.
        for role in ("developer", "admin"):
            client = as_role(appliance, role)
            assert await _names(client) == ["for a", "for a or b", "for b", "public"]
            assert (await run(client, ids["for b"])).status == 200
            got = await client.request("GET", f"/api/v1/queries/{ids['for a or b']}")
            assert got.body["groups"] == ["a", "b"]
        # A viewer never sees a query's groups.
        got = await token.request("GET", f"/api/v1/queries/{ids['for a']}")
        assert "groups" not in got.body
        # The own groups, read-only.
        me = await session.request("GET", "/api/v1/users/me")
        assert me.body["groups"] == ["a"]
        # Nothing of the hidden query's run reached the audit log as a run.
        runs = appliance.query("SELECT target FROM audit_log WHERE action = 'query.run'")
        assert f"query:{ids['for b']}" in {r["target"] for r in runs}  # the developers' runs
        viewer_runs = appliance.query(
            "SELECT target FROM audit_log WHERE action = 'query.run' AND actor LIKE 'viewer%'")
        assert f"query:{ids['for b']}" not in {r["target"] for r in viewer_runs}


async def test_changes_count_from_the_next_request(tmp_path: Path, db: Path) -> None:
    async with running(tmp_path / "s", require_2fa="", tokens=True,
                       egress={"allow_private": True}) as appliance:
        ids = await _setup(appliance, db)
        admin, dev = as_role(appliance, "admin"), as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        assert (await run(viewer, ids["for a"])).status == 200  # compiled and cached now
        # Membership: out of a, into b.
        resp = await admin.request("PATCH", "/api/v1/users/viewer", {"groups": ["B"]})
        assert resp.status == 200 and resp.body["groups"] == ["b"]
        assert (await run(viewer, ids["for a"])).status == 404
        assert (await run(viewer, ids["for b"])).status == 200
        assert await _names(viewer) == ["for a or b", "for b", "public"]
        # A query's groups: the public one restricted to c, then made public again.
        resp = await dev.request("PATCH", f"/api/v1/queries/{ids['public']}", {"groups": ["c"]})
        assert resp.status == 200 and resp.body["groups"] == ["c"]
        assert (await run(viewer, ids["public"])).status == 404
        resp = await dev.request("PATCH", f"/api/v1/queries/{ids['public']}", {"groups": []})
        assert (await run(viewer, ids["public"])).status == 200
        # Another process (the CLI) changes the membership: the next request follows it.
        out = await cli(appliance, "users", "groups", "viewer", "--remove", "b", "--add", "A")
        assert out.returncode == 0, out.stderr
        assert "viewer is in: a" in out.stdout
        resp = await viewer.request_until("POST", f"/api/v1/queries/{ids['for b']}/run",
                                          lambda r: r.status == 404)
        assert resp.status == 404
        assert (await run(viewer, ids["for a"])).status == 200
        # Audited with the names, from and to.
        entries = appliance.query(
            "SELECT action, details FROM audit_log WHERE action IN ('user.update',"
            " 'query.update') ORDER BY seq")
        details = [json.loads(e["details"]) for e in entries]
        assert {"added": ["b"], "removed": ["a"]} in [d.get("groups") for d in details]
        assert {"from": [], "to": ["c"]} in [d.get("groups") for d in details]


async def test_bad_groups_are_refused_and_nothing_is_written(tmp_path: Path, db: Path) -> None:
    async with running(tmp_path / "s", require_2fa="", tokens=True,
                       egress={"allow_private": True}) as appliance:
        ids = await _setup(appliance, db)
        admin, dev = as_role(appliance, "admin"), as_role(appliance, "developer")
        for bad in ("a", [""], ["a b"], [1], ["-x"], ["x" * 65], [f"g{i}" for i in range(51)]):
            resp = await dev.request("PATCH", f"/api/v1/queries/{ids['for a']}", {"groups": bad})
            assert resp.status in (400, 422) and resp.body["error"]["field"] == "groups", resp.body
            resp = await admin.request("PATCH", "/api/v1/users/viewer", {"groups": bad})
            assert resp.status == 400 and resp.code == "bad_group", resp.body
        got = await dev.request("GET", f"/api/v1/queries/{ids['for a']}")
        assert got.body["groups"] == ["a"] and got.body["version"] == 1
        assert (await admin.request("GET", "/api/v1/users/viewer")).body["groups"] == ["a"]
        # A viewer cannot change their own groups, nor a query's.
        viewer = as_role(appliance, "viewer")
        assert (await viewer.request("PATCH", "/api/v1/users/viewer",
                                     {"groups": ["b"]})).status == 403
        # A group no user has is allowed on a query (it is then for developers only).
        resp = await dev.request("PATCH", f"/api/v1/queries/{ids['for a']}",
                                 {"groups": ["nobody-yet"]})
        assert resp.status == 200 and resp.body["groups"] == ["nobody-yet"]


async def test_a_reset_password_must_be_changed_at_next_login(tmp_path: Path) -> None:
    async with running(tmp_path / "s", require_2fa="") as appliance:
        admin = appliance.client()
        assert (await admin.login("admin")).status == 201
        one_time = "one-time-password-0123"
        resp = await admin.request("PATCH", "/api/v1/users/viewer", {"password": one_time})
        assert resp.status == 200 and resp.body["must_change_password"] is True
        viewer = appliance.client()
        login = await viewer.login("viewer", one_time)
        assert login.status == 201 and login.body["password_change_required"] is True
        session = await viewer.request("GET", "/api/v1/session")
        assert session.status == 200 and session.body["password_change_required"] is True
        assert (await viewer.request("GET", "/api/v1/users/me")).status == 200
        assert (await viewer.request("GET", "/api/v1/roles")).status == 200
        for method, path in (("GET", "/api/v1/queries"), ("GET", "/api/v1/users/me/tokens"),
                             ("POST", "/api/v1/users/me/tokens"), ("POST", "/api/v1/users/me/2fa")):
            blocked = await viewer.request(method, path, {"name": "x"} if method == "POST"
                                           else None)
            assert blocked.status == 403 and blocked.code == "password_change_required", path
        # A wrong current password changes nothing.
        wrong = await viewer.request("POST", "/api/v1/users/me/password",
                                     {"current_password": "nope-nope-nope",
                                      "new_password": "a-new-password-0123"})
        assert wrong.status == 401
        done = await viewer.request("POST", "/api/v1/users/me/password",
                                    {"current_password": one_time,
                                     "new_password": "a-new-password-0123"})
        assert done.status == 200, done.body
        again = appliance.client()
        login = await again.login("viewer", "a-new-password-0123")
        assert login.status == 201 and login.body["password_change_required"] is False
        assert (await again.request("GET", "/api/v1/queries")).status == 200
        user = await admin.request("GET", "/api/v1/users/viewer")
        assert user.body["must_change_password"] is False
        assert PASSWORDS["viewer"] not in json.dumps(user.body)
        # The audit says the flag went on, then off (its value, not '<redacted>').
        flags = [json.loads(row[0]).get("change_at_next_login") for row in appliance.query(
            "SELECT details FROM audit_log WHERE action = 'user.update'"
            " AND target = 'user:viewer' ORDER BY seq")]
        assert flags == [True, False]


async def test_the_cli_reset_sets_the_flag(tmp_path: Path) -> None:
    async with running(tmp_path / "s", require_2fa="") as appliance:
        out = await cli(appliance, "users", "reset-password", "viewer")
        assert out.returncode == 0, out.stderr
        assert "must change it at their next login" in out.stdout
        one_time = out.stdout.strip().rsplit(": ", 1)[1]
        viewer = appliance.client()
        login = await viewer.login("viewer", one_time)
        assert login.status == 201 and login.body["password_change_required"] is True
        assert (await viewer.request("GET", "/api/v1/queries")).code == "password_change_required"


async def test_an_admin_created_user_chooses_their_own_password_first(tmp_path: Path) -> None:
    """The password an admin typed at `POST /api/v1/users` is the admin's: the new user's
    session reaches nothing but the password change until they choose their own."""
    async with running(tmp_path / "s", require_2fa="") as appliance:
        admin = appliance.client()
        assert (await admin.login("admin")).status == 201
        made = await admin.request("POST", "/api/v1/users", {
            "username": "nina", "role": "viewer", "password": "admin-chose-this-0123"})
        assert made.status == 201 and made.body["must_change_password"] is True
        nina = appliance.client()
        login = await nina.login("nina", "admin-chose-this-0123")
        assert login.status == 201 and login.body["password_change_required"] is True
        assert (await nina.request("GET", "/api/v1/queries")).code == "password_change_required"
        done = await nina.request("POST", "/api/v1/users/me/password",
                                  {"current_password": "admin-chose-this-0123",
                                   "new_password": "nina-own-password-0123"})
        assert done.status == 200, done.body
        again = appliance.client()
        login = await again.login("nina", "nina-own-password-0123")
        assert login.status == 201 and login.body["password_change_required"] is False
        assert (await again.request("GET", "/api/v1/queries")).status == 200
        [entry] = appliance.query("SELECT details FROM audit_log WHERE action = 'user.create'"
                                  " AND target = 'user:nina'")
        assert json.loads(entry[0])["change_at_first_login"] is True


async def test_users_add_flags_the_password_unless_told_not_to(tmp_path: Path) -> None:
    async with running(tmp_path / "s", require_2fa="") as appliance:
        generated = await cli(appliance, "users", "add", "gen", "--role", "viewer")
        assert generated.returncode == 0, generated.stderr
        assert "must change it at their first login" in generated.stdout
        one_time = generated.stdout.strip().rsplit(": ", 1)[1]
        login = await appliance.client().login("gen", one_time)
        assert login.status == 201 and login.body["password_change_required"] is True

        password_file = tmp_path / "pw"
        password_file.write_text("operator-chose-0123\n")
        from_file = await cli(appliance, "users", "add", "filed", "--role", "viewer",
                              "--password-file", str(password_file))
        assert from_file.returncode == 0, from_file.stderr
        assert "choose their own password at their first login" in from_file.stdout
        # An account for automation, whose password the operator manages: said explicitly.
        robot = await cli(appliance, "users", "add", "robot", "--role", "viewer",
                          "--password-file", str(password_file), "--no-password-change")
        assert robot.returncode == 0, robot.stderr
        assert "first login" not in robot.stdout
        # Without a file there is nothing the operator manages: refused, nothing created.
        refused = await cli(appliance, "users", "add", "nofile", "--role", "viewer",
                            "--no-password-change")
        assert refused.returncode == 2 and "needs --password-file" in refused.stderr
        flags = {row["username"]: row["must_change_password"] for row in appliance.query(
            "SELECT username, must_change_password FROM users")}
        assert flags == {"admin": 0, "viewer": 0, "developer": 0, "gen": 1, "filed": 1,
                         "robot": 0}
        login = await appliance.client().login("robot", "operator-chose-0123")
        assert login.status == 201 and login.body["password_change_required"] is False
        details = {row["target"]: json.loads(row["details"]) for row in appliance.query(
            "SELECT target, details FROM audit_log WHERE action = 'user.create'")}
        assert details["user:robot"]["change_at_first_login"] is False
        assert details["user:filed"]["change_at_first_login"] is True
