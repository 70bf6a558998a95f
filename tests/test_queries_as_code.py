"""Queries as code (issue 26): `appliance export DIR` / `appliance import DIR`, `GET
/api/v1/export` and `POST /api/v1/import`, against real appliances on real stores and real CLI
subprocesses: round trips byte for byte for every kind, minimal diffs, dry runs that change
nothing, an import killed mid-way that changes nothing, malformed files named at their place,
and a canary secret that appears nowhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, clean_env, run_cli
from tests.support.app import Appliance, store_env
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

CANARY = "canary-Zq8vX2pL9wK4"
EVERY_TYPE = [
    {"name": "s", "type": "string", "default": "Grüße, ☃"},
    {"name": "i", "type": "integer", "required": False},
    {"name": "n", "type": "number", "default": 1.5},
    {"name": "b", "type": "boolean", "default": True},
    {"name": "d", "type": "date", "required": False},
    {"name": "dt", "type": "datetime", "required": False},
    {"name": "j", "type": "json", "required": False},
    {"name": "ids", "type": "array<integer>", "required": False},
    {"name": "c", "type": "string", "choices": ["a", "b"], "default": "a"},
    {"name": "t", "type": "identifier", "choices": ["items", "other"]},
]
EVERY_TYPE_SQL = ("SELECT {{ s }}, {{ i }}, {{ n }}, {{ b }}, {{ d }}, {{ dt }}, {{ j }}, "
                  "{{ c }}\n  FROM {{ t }}\n WHERE id IN ({{ ids }})  -- café ☕")


def env_of(appliance: Appliance) -> dict[str, str]:
    return clean_env(**store_env(appliance.state))


def cli(appliance: Appliance, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--state-dir", str(appliance.state), env=env_of(appliance),
                   timeout=timeout)


async def populate(appliance: Appliance, db: Path) -> dict[str, Any]:
    """A datasource of every kind (secrets set on some: the canary) and queries on them."""
    admin = as_role(appliance, "admin")
    made = {}
    made["shop"] = await create_datasource(admin, name="shop", kind="sqlite",
                                           config={"path": str(db)})
    made["pg"] = await create_datasource(
        admin, name="pg main", kind="postgres",
        config={"host": "db.internal", "database": "orders", "user": "app", "tls": "disable"},
        secrets={"password": CANARY})
    made["my"] = await create_datasource(
        admin, name="my-sql", kind="mysql",
        config={"host": "mysql.internal", "database": "shop", "user": "ro",
                "max_rows": 500})
    made["api"] = await create_datasource(
        admin, name="api", kind="rest",
        config={"base_url": "https://api.example.com/v1", "auth": "bearer"},
        secrets={"token": CANARY + "-token"})
    made["mongo"] = await create_datasource(
        admin, name="m.db", kind="mongodb",
        config={"host": "mongo.internal", "database": "d", "tls": "disable"})
    await create_query(admin, made["shop"]["id"], EVERY_TYPE_SQL, EVERY_TYPE,
                       name="every type", description="Alle Typen — ünïcödé", timeout_ms=5000,
                       max_rows=10)
    await create_query(admin, made["shop"]["id"], "SELECT 1\n", name="trailing newline")
    await create_query(admin, made["pg"]["id"], "SELECT * FROM orders WHERE id = {{ id }}",
                       [{"name": "id", "type": "integer"}], name="order")
    await create_query(admin, made["my"]["id"], "SELECT `x` FROM t WHERE a = {{ a }}",
                       [{"name": "a", "type": "string"}], name="my q")
    await create_query(admin, made["api"]["id"],
                       {"path": "/users/{{ u }}", "query": {"z": "1", "a": "{{ u }}"}},
                       [{"name": "u", "type": "string"}], name="user")
    await create_query(admin, made["mongo"]["id"],
                       {"collection": "c", "operation": "find", "filter": {"k": "{{ k }}"}},
                       [{"name": "k", "type": "string"}], name="find k")
    return made


def sqlite_db(path: Path) -> Path:
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO items VALUES (1, 'mug')")
    conn.commit()
    conn.close()
    return path


async def export_api(appliance: Appliance) -> dict[str, str]:
    resp = await as_role(appliance, "admin").request("GET", "/api/v1/export")
    assert resp.status == 200, resp.body
    files: dict[str, str] = resp.body["files"]
    return files


def snapshot(appliance: Appliance) -> list[Any]:
    """What the store holds, table by table (the SQLite file's bytes move on a checkpoint of
    earlier commits, whoever reads)."""
    return [appliance.query(f"SELECT * FROM {table} ORDER BY 1")
            for table in ("datasources", "queries", "sealed_fields", "audit_log", "meta")]


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


async def test_round_trip_every_kind_is_byte_identical(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a, proxy(tmp_path / "b") as b:
        made = await populate(a, db)
        out_a = tmp_path / "export-a"
        done = cli(a, "export", str(out_a))
        assert done.returncode == 0, done.stderr
        tree = read_tree(out_a)
        files = await export_api(a)
        assert {k: v.encode() for k, v in files.items()} == tree  # CLI and API: the same bytes
        assert sorted(tree) == [
            "datasources/api.json", "datasources/m.db.json", "datasources/my-sql.json",
            "datasources/pg main.json", "datasources/shop.json", "manifest.json",
            "queries/every type.meta.json", "queries/every type.sql", "queries/find k.json",
            "queries/find k.meta.json", "queries/my q.meta.json", "queries/my q.sql",
            "queries/order.meta.json", "queries/order.sql", "queries/trailing newline.meta.json",
            "queries/trailing newline.sql", "queries/user.json", "queries/user.meta.json"]
        assert tree["queries/every type.sql"] == (EVERY_TYPE_SQL + "\n").encode()
        assert tree["queries/trailing newline.sql"] == b"SELECT 1\n\n"
        assert json.loads(tree["datasources/pg main.json"])["secrets_set"] == ["password"]
        assert all(v.endswith(b"\n") and b"\r" not in v for v in tree.values())
        assert b"timestamp" not in tree["manifest.json"]
        # Unchanged appliance → byte-identical export.
        assert cli(a, "export", str(out_a)).returncode == 0
        assert read_tree(out_a) == tree

        # Into a fresh appliance, over the API (a CI pipeline's way).
        admin_b = as_role(b, "admin")
        dry = await admin_b.request("POST", "/api/v1/import", {"files": files, "dry_run": True})
        assert dry.status == 200, dry.body
        assert dry.body["summary"] == {"create": 11, "update": 0, "delete": 0, "unchanged": 0}
        assert dry.body["applied"] is False and b.query("SELECT id FROM queries") == []
        done_b = await admin_b.request("POST", "/api/v1/import", {"files": files})
        assert done_b.status == 200 and done_b.body["applied"] is True, done_b.body
        assert done_b.body["needs_secrets"] == {"api": ["token"], "pg main": ["password"]}
        # Ids are kept: a link to a query works on both.
        assert {r["id"] for r in b.query("SELECT id FROM queries")} == \
            {r["id"] for r in a.query("SELECT id FROM queries")}
        every = next(r["id"] for r in b.query("SELECT id FROM queries WHERE name = ?",
                                              ("every type",)))
        ran = await run(admin_b, every, {"t": "items", "ids": [1]})
        assert ran.status == 200 and ran.body["rows"][0][0] == "Grüße, ☃", ran.body
        # Audited per object, with how.
        entries = b.query("SELECT action, details FROM audit_log WHERE action LIKE 'query.%' "
                          "OR action LIKE 'datasource.%' OR action = 'config.import'")
        assert sorted(e["action"] for e in entries).count("query.create") == 6
        vias = [(e["action"], json.loads(e["details"]).get("via")) for e in entries
                if e["action"].endswith((".create", ".update", ".delete"))]
        assert all(via == "import" for _, via in vias), vias
        # The secrets were not carried: entered now, the exports match byte for byte.
        for name, field, value in (("pg", "password", CANARY), ("api", "token", "t")):
            patched = await admin_b.request("PATCH", f"/api/v1/datasources/{made[name]['id']}",
                                            {"secrets": {field: value}})
            assert patched.status == 200, patched.body
        out_b = tmp_path / "export-b"
        assert cli(b, "export", str(out_b)).returncode == 0
        assert read_tree(out_b) == tree
        again = await admin_b.request("POST", "/api/v1/import", {"files": files})
        assert again.body["summary"]["unchanged"] == 11 and again.body["diff"] == ""
        assert again.body["applied"] is False


async def test_a_change_is_a_minimal_diff_and_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        await populate(a, db)
        out = tmp_path / "export"
        assert cli(a, "export", str(out)).returncode == 0
        body = out / "queries" / "every type.sql"
        body.write_text(body.read_text().replace("-- café ☕", "-- tea"))
        meta = out / "queries" / "order.meta.json"
        meta.write_text(meta.read_text().replace('"timeout_ms": null', '"timeout_ms": 250'))
        before_bytes = snapshot(a)
        before_rows = a.query("SELECT id, version FROM queries ORDER BY id")
        dry = cli(a, "import", str(out), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "plan: 0 to create, 2 to update, 0 to delete, 9 unchanged" in dry.stdout
        diff = dry.stdout[dry.stdout.index("--- "):]
        assert diff.count("--- a/") == 2
        changed = [line for line in diff.splitlines()
                   if line[:1] in "+-" and not line.startswith(("---", "+++"))]
        assert changed == [
            "- WHERE id IN ({{ ids }})  -- café ☕", "+ WHERE id IN ({{ ids }})  -- tea",
            '-  "timeout_ms": null', '+  "timeout_ms": 250']
        assert "dry run: nothing changed" in dry.stdout
        assert snapshot(a) == before_bytes
        assert a.query("SELECT id, version FROM queries ORDER BY id") == before_rows
        # Without --yes and no terminal: refused, nothing changed.
        refused = cli(a, "import", str(out))
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert a.query("SELECT id, version FROM queries ORDER BY id") == before_rows
        applied = cli(a, "import", str(out), "--yes")
        assert applied.returncode == 0, applied.stderr
        again = cli(a, "import", str(out), "--dry-run")
        assert "0 to update" in again.stdout and "11 unchanged" in again.stdout


async def test_prune_deletes_queries_first_and_keeps_a_datasource_in_use(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        made = await populate(a, db)
        files = await export_api(a)
        admin = as_role(a, "admin")
        extra = await create_query(admin, made["shop"]["id"], "SELECT 2", name="extra")
        spare = await create_datasource(admin, name="spare", kind="sqlite",
                                        config={"path": str(db)})
        kept = await admin.request("POST", "/api/v1/import", {"files": files})
        assert kept.body["summary"]["delete"] == 0  # without prune nothing goes
        dry = await admin.request("POST", "/api/v1/import",
                                  {"files": files, "prune": True, "dry_run": True})
        assert [(c["action"], c["type"], c["id"]) for c in dry.body["changes"]] == [
            ("delete", "query", extra["id"]), ("delete", "datasource", spare["id"])]
        assert "--- a/queries/extra.sql\n+++ /dev/null\n" in dry.body["diff"]
        # A query of the files on a datasource the files lack: prune refuses to delete it.
        del files["datasources/shop.json"]
        refused = await admin.request("POST", "/api/v1/import", {"files": files, "prune": True})
        assert refused.status == 409 and refused.code == "datasource_in_use", refused.body
        assert len(a.query("SELECT id FROM queries")) == 7


async def test_a_name_held_by_another_id_is_refused(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a, proxy(tmp_path / "b") as b:
        made = await populate(a, db)
        files = await export_api(a)
        other = await create_datasource(as_role(b, "admin"), name="SHOP", kind="sqlite",
                                        config={"path": str(db)})
        resp = await as_role(b, "admin").request("POST", "/api/v1/import", {"files": files})
        assert resp.status == 409 and resp.code == "name_held_by_another_id", resp.body
        message = resp.body["error"]["message"]
        assert other["id"] in message and made["shop"]["id"] in message
        assert "datasources/shop.json" in message
        assert b.query("SELECT id FROM queries") == []


def bad_files(files: dict[str, str]) -> list[tuple[str, dict[str, str], str]]:
    """(case, files, what the message must say) for each malformed input."""
    meta = "queries/order.meta.json"
    cases = []

    def case(name: str, change: dict[str, str | None], expect: str) -> None:
        changed = dict(files)
        for path, text in change.items():
            if text is None:
                changed.pop(path)
            else:
                changed[path] = text
        cases.append((name, changed, expect))

    case("bad json", {meta: files[meta].replace('"id"', '"id" 1', 1)},
         f"{meta}:5:8: not valid JSON")
    case("wrong type", {meta: files[meta].replace('"max_rows": null', '"max_rows": "10"')},
         f"{meta}:6:3: max_rows: must be an integer or null")
    case("unknown key", {meta: files[meta].replace('{\n', '{\n  "groups2": [],\n', 1)},
         f"{meta}:2:3: groups2: unknown key")
    case("missing body", {"queries/order.sql": None}, f"{meta}: its body is missing")
    case("traversal", {"queries/../../etc/passwd": "x"}, "not a path inside the directory")
    case("stray file", {"queries/notes.txt": "x"}, "queries/notes.txt: belongs to no query")
    case("bad parameter", {meta: files[meta].replace('"type": "integer"', '"type": "int"')},
         f"{meta}:11:7: parameters[0].type:")
    case("bad sql binding", {"queries/order.sql": "SELECT {{ nope }}\n"},
         "queries/order.sql:1:8:")
    case("no datasource", {meta: files[meta].replace('"pg main"', '"gone"')},
         f"{meta}:2:3: datasource: no datasource named 'gone'")
    case("bad config", {"datasources/shop.json": files["datasources/shop.json"].replace(
        '"read_only": true', '"read_only": "yes"')}, "datasources/shop.json:")
    case("bad id", {meta: files[meta].replace('"id": "q_', '"id": "x_')},
         f"{meta}:5:3: id: must look like q_")
    case("duplicate key", {meta: files[meta].replace('{\n', '{\n  "max_rows": 1,\n', 1)},
         f"{meta}:7:3: max_rows: the key appears twice")
    case("no manifest", {"manifest.json": None}, "manifest.json: is missing")
    return cases


async def test_malformed_files_are_named_and_change_nothing(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        await populate(a, db)
        files = await export_api(a)
        admin = as_role(a, "admin")
        before = snapshot(a)
        for name, changed, expect in bad_files(files):
            resp = await admin.request("POST", "/api/v1/import", {"files": changed})
            assert resp.status in (400, 422), (name, resp.body)
            assert expect in resp.body["error"]["message"], (name, resp.body)
        # The same through the CLI: exit 2, the place on stderr.
        for name, changed, expect in bad_files(files):
            if ".." in "".join(changed):
                continue  # a directory cannot hold such a name
            root = tmp_path / f"bad-{name.replace(' ', '-')}"
            for path, text in changed.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(text)
            done = cli(a, "import", str(root), "--yes")
            assert done.returncode == 2, (name, done.stdout, done.stderr)
            assert expect in done.stderr, (name, done.stderr)
        assert snapshot(a) == before


async def test_directory_refusals(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        await populate(a, db)
        out = tmp_path / "export"
        assert cli(a, "export", str(out)).returncode == 0
        before = snapshot(a)
        outside = tmp_path / "outside.sql"
        outside.write_text("SELECT 'secret outside'\n")
        body = out / "queries" / "order.sql"
        body.unlink()
        body.symlink_to(outside)
        done = cli(a, "import", str(out), "--yes")
        assert done.returncode == 2 and "queries/order.sql: a symbolic link" in done.stderr
        body.unlink()
        with body.open("wb") as handle:  # 100 MiB, sparse: refused before it is read
            handle.truncate(100 * 1024 * 1024)
        done = cli(a, "import", str(out), "--yes")
        assert done.returncode == 2 and "queries/order.sql: larger than 4 MiB" in done.stderr
        body.write_bytes(b"SELECT \xff\n")
        done = cli(a, "import", str(out), "--yes")
        assert done.returncode == 2 and "queries/order.sql:1:8: not UTF-8" in done.stderr
        assert snapshot(a) == before
        # export refuses a directory that is not an export, and leaves it alone
        other = tmp_path / "not-an-export"
        other.mkdir()
        (other / "precious.txt").write_text("keep me")
        done = cli(a, "export", str(other))
        assert done.returncode == 2 and "not an earlier export" in done.stderr
        assert (other / "precious.txt").read_text() == "keep me"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


async def test_an_import_killed_midway_changes_nothing(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        await populate(a, db)
        files = await export_api(a)
        meta = json.loads(files["queries/trailing newline.meta.json"])
        for n in range(1500):
            meta["id"] = f"q_{n:016x}"
            files[f"queries/bulk {n:04d}.meta.json"] = json.dumps(meta)
            files[f"queries/bulk {n:04d}.sql"] = f"SELECT {n} FROM items\n"
        root = tmp_path / "big"
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        before = await export_api(a)
        before_rows = a.query("SELECT id, version FROM queries ORDER BY id")
        audit_before = len(a.audit_actions())
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "import", str(root), "--yes",
             "--state-dir", str(a.state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env_of(a), cwd=ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("applying"):
                break
        proc.send_signal(signal.SIGKILL)  # the transaction takes seconds (1,500 queries)
        proc.wait(30)
        assert "applied" not in proc.stdout.read()  # killed inside it, not after
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        a.close_outside()
        assert a.query("SELECT id, version FROM queries ORDER BY id") == before_rows
        assert len(a.audit_actions()) == audit_before + 0  # nothing of the import committed
        assert await export_api(a) == before
        # And the same import, let run, applies whole.
        started = time.monotonic()
        done = cli(a, "import", str(root), "--yes", timeout=300)
        assert done.returncode == 0, done.stderr
        print(f"the whole import took {time.monotonic() - started:.1f} s;",
              done.stdout.splitlines()[-1])
        assert len(a.query("SELECT id FROM queries")) == 1506


async def test_a_canary_secret_appears_in_no_file_response_or_log(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a, proxy(tmp_path / "b") as b:
        await populate(a, db)
        out = tmp_path / "export"
        done = cli(a, "export", str(out))
        texts = [done.stdout, done.stderr]
        texts += [p.read_text() for p in out.rglob("*") if p.is_file()]
        resp = await as_role(a, "admin").request("GET", "/api/v1/export")
        texts.append(json.dumps(resp.body))
        files = resp.body["files"]
        for target in (a, b):
            for dry in (True, False):
                answer = await as_role(target, "admin").request(
                    "POST", "/api/v1/import", {"files": files, "dry_run": dry})
                texts.append(json.dumps(answer.body))
        texts.append(cli(b, "import", str(out), "--dry-run").stdout)
        texts += [json.dumps(r) for r in a.query("SELECT details FROM audit_log")]
        texts += [json.dumps(r) for r in b.query("SELECT details FROM audit_log")]
        assert all(CANARY not in text for text in texts)
        assert sum("secrets_set" in text for text in texts) > 0


@pytest.mark.parametrize("role", ["developer", "viewer"])
async def test_only_an_admin_exports_or_imports(tmp_path: Path, role: str) -> None:
    async with proxy(tmp_path / "a") as a:
        client = as_role(a, role)
        assert (await client.request("GET", "/api/v1/export")).status == 403
        resp = await client.request("POST", "/api/v1/import", {"files": {}})
        assert resp.status == 403
        admin = as_role(a, "admin")
        resp = await admin.request("POST", "/api/v1/import", {"files": {}, "extra": 1})
        assert resp.status == 400
        resp = await admin.request("POST", "/api/v1/import", {"files": [], "dry_run": True})
        assert resp.status == 400 and resp.body["error"]["field"] == "files"


async def test_a_config_change_and_a_rename_keep_the_id(tmp_path: Path) -> None:
    """A datasource's config is replaced, not merged (a key the file drops goes, or takes its
    default again); a rename is the same id under a new file name."""
    db = sqlite_db(tmp_path / "shop.sqlite")
    async with proxy(tmp_path / "a") as a:
        made = await populate(a, db)
        files = await export_api(a)
        mongo = json.loads(files.pop("datasources/m.db.json"))
        mongo["config"]["port"] = 27018
        mongo["config"]["user"] = "reader"
        files["datasources/mongo.json"] = json.dumps(mongo)
        meta = json.loads(files["queries/find k.meta.json"])
        meta["datasource"] = "mongo"
        files["queries/find k.meta.json"] = json.dumps(meta)
        admin = as_role(a, "admin")
        resp = await admin.request("POST", "/api/v1/import", {"files": files})
        assert resp.status == 200, resp.body
        assert [(c["action"], c["name"]) for c in resp.body["changes"]] == [
            ("update", "mongo"), ("update", "find k")]
        assert "--- a/datasources/m.db.json\n+++ b/datasources/mongo.json\n" in resp.body["diff"]
        stored = (await admin.request("GET", f"/api/v1/datasources/{made['mongo']['id']}")).body
        assert stored["name"] == "mongo" and stored["config"]["port"] == 27018
        mongo["config"].pop("user")  # dropped: back to its default ("", no user)
        files["datasources/mongo.json"] = json.dumps(mongo)
        resp = await admin.request("POST", "/api/v1/import", {"files": files})
        assert resp.status == 200, resp.body
        stored = (await admin.request("GET", f"/api/v1/datasources/{made['mongo']['id']}")).body
        assert stored["config"]["user"] == ""


async def test_a_secret_pasted_into_an_imported_query_refuses_the_import(tmp_path: Path) -> None:
    """Imports are saves: the secret scan of issue 26 refuses a credential in a body file, the
    whole import changes nothing, and neither the answer nor the CLI's output holds the key."""
    import random

    from tests.support.fake_keys import github_token

    db = sqlite_db(tmp_path / "shop.sqlite")
    token = github_token(random.Random(7))
    async with proxy(tmp_path / "a") as a:
        await populate(a, db)
        files = await export_api(a)
        files["queries/order.sql"] = files["queries/order.sql"].rstrip("\n") + f" -- {token}\n"
        admin = as_role(a, "admin")
        before = snapshot(a)
        resp = await admin.request("POST", "/api/v1/import", {"files": files})
        assert resp.status == 422 and resp.code == "secret_in_query", resp.body
        assert resp.body["error"]["message"].startswith("queries/order.sql: line 1, column")
        assert token not in json.dumps(resp.body)
        assert snapshot(a) == before
        root = tmp_path / "with-a-key"
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        done = cli(a, "import", str(root), "--yes")
        assert done.returncode == 2, (done.stdout, done.stderr)
        # The plan's diff shows the user's own file on their terminal; the error names the file
        # and the place, and holds no more than a hint of the key.
        error = done.stderr.splitlines()[-1]
        assert error.startswith("error: queries/order.sql: line 1, column"), done.stderr
        assert "GitHub token" in error and token not in error
        assert snapshot(a) == before
