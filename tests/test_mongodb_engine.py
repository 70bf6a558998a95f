"""The MongoDB engine through the real API against a server speaking the MongoDB wire protocol
(OP_MSG; no real MongoDB can be installed here): operator injection through every parameter type
never reaches the server, values arrive as values, results come back as documents."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.queries import as_role, create_datasource, create_query, proxy, run

bson = pytest.importorskip("bson")
pytest.importorskip("pymongo")

from tests.support.mongo_wire import WireServer as BaseWireServer  # noqa: E402

DOCS = [{"_id": 1, "owner": "alice", "secret": "alice-secret"}]


class WireServer(BaseWireServer):
    """Answers find, aggregate and insert over DOCS, and records every other command."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[dict[str, Any]] = []

    def reply(self, command: dict[str, Any], sequences: dict[str, list[Any]]) -> dict[str, Any]:
        name = next(iter(command))
        if name.lower() in ("hello", "ismaster", "ping", "endsessions"):
            return super().reply(command, sequences)
        self.commands.append({**command, **sequences})
        namespace = f"{command.get('$db')}.{command[name]}"
        if name == "find":
            matched = [d for d in DOCS if all(d.get(k) == v for k, v in
                                              command.get("filter", {}).items())]
            return {"cursor": {"firstBatch": matched, "id": bson.Int64(0), "ns": namespace},
                    "ok": 1.0}
        if name == "aggregate":
            return {"cursor": {"firstBatch": [{"_id": 1, "n": 0}], "id": bson.Int64(0),
                               "ns": namespace}, "ok": 1.0}
        if name == "insert":
            return {"n": len(sequences.get("documents", command.get("documents", []))),
                    "ok": 1.0}
        return {"ok": 0.0, "errmsg": f"no such command: {name}", "code": 59}


@pytest.fixture
async def mongo() -> AsyncIterator[WireServer]:
    server = await WireServer().start()
    yield server
    await server.close()


TYPES: dict[str, Any] = {"string": "s", "integer": 1, "number": 1.5, "boolean": True,
                         "date": "2024-01-02", "datetime": "2024-01-02T03:04:05Z",
                         "array<string>": ["a"], "json": {"k": 1}}
INJECTIONS = [{"$ne": None}, {"$gt": ""}, {"$where": "sleep(1000)"}, ["$ne", None],
              {"$regex": ".*"}, {"owner": {"$ne": None}}]


async def test_operator_injection_through_every_type(tmp_path: Path, mongo: WireServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="mongo", kind="mongodb",
                                     config={"host": "127.0.0.1", "port": mongo.port,
                                             "database": "app", "tls": "disable"})
        queries = {}
        for kind in TYPES:
            queries[kind] = (await create_query(
                dev, ds["id"], {"collection": "vault", "operation": "find",
                                "filter": {"owner": "{{ v }}"}},
                [{"name": "v", "type": kind}], name=f"find {kind.replace('<', '-')[:-1]}"
                if "<" in kind else f"find {kind}"))["id"]
        for kind, query_id in queries.items():
            ok = await run(dev, query_id, {"v": TYPES[kind]})
            assert ok.status == 200, (kind, ok.body)
            for payload in INJECTIONS:
                before = len(mongo.commands)
                resp = await run(dev, query_id, {"v": payload})
                if kind == "json" and "'$" not in str(payload if isinstance(payload, dict)
                                                      else {}):
                    assert resp.status == 200  # no operator key: for json, just a value
                    continue
                assert resp.status == 422 and resp.code == "invalid_parameter", (kind, payload)
                assert len(mongo.commands) == before  # nothing reached the server
        # a string that looks like an operator is just a string
        resp = await run(dev, queries["string"], {"v": "$ne"})
        assert resp.status == 200 and resp.body["rows"] == []
        assert mongo.commands[-1]["filter"] == {"owner": "$ne"}
        resp = await run(dev, queries["string"], {"v": "alice"})
        assert resp.body["columns"] == ["document"]
        assert resp.body["rows"] == [[DOCS[0]]]
        sent = [c for c in mongo.commands if "find" in c]
        assert all(isinstance(c["filter"]["owner"], str | int | float | bool | dt.datetime | list)
                   or c["filter"]["owner"] == {"k": 1} for c in sent)

        inserted = await create_query(dev, ds["id"], {"collection": "log",
                                                      "operation": "insert_one",
                                                      "document": {"who": "{{ who }}"}},
                                      [{"name": "who", "type": "string"}], name="insert")
        resp = await run(dev, inserted["id"], {"who": "bob"})
        assert resp.status == 200 and resp.body["columns"] == ["inserted_id"]
        refused = await dev.request("POST", "/api/v1/queries", {
            "name": "where", "datasource_id": ds["id"],
            "body": {"collection": "vault", "operation": "find",
                     "filter": {"$where": "this.a == 1"}}})
        assert refused.status == 422


async def test_a_run_that_took_a_retired_engine_takes_its_replacement(
        tmp_path: Path, mongo: WireServer) -> None:
    """A datasource changed (here, or on another instance) just after a run took its engine:
    the run is sent by the new engine with the new config, never by a client the old engine
    would open again with the old config (and never close)."""
    from appliance.datasources.engine import Engine
    from appliance.http.app_keys import CORE

    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="mongo", kind="mongodb",
                                     config={"host": "127.0.0.1", "port": mongo.port,
                                             "database": "app", "tls": "disable"})
        q = await create_query(dev, ds["id"], {"collection": "vault", "operation": "find",
                                               "filter": {}}, name="all")
        assert (await run(dev, q["id"])).status == 200
        assert mongo.commands[-1]["$db"] == "app"
        service = appliance.app[CORE].datasources
        old = await service.engine(ds["id"])
        # Another instance changes the database: its row moves, this one follows the store.
        ((config,),) = appliance.outside.query("SELECT config FROM datasources WHERE id = ?",
                                               (ds["id"],))
        appliance.outside.execute(
            "UPDATE datasources SET config = ?, version = version + 1 WHERE id = ?",
            (json.dumps({**json.loads(config), "database": "app2"}), ds["id"]))
        await service.follow()
        assert service.cached_version(ds["id"]) is None  # retired; the next run builds anew
        real_engine = service.engine
        handed: list[Engine] = []

        async def took_it_just_before(datasource_id: str) -> Engine:
            engine = old if not handed else await real_engine(datasource_id)
            handed.append(engine)
            return engine

        service.engine = took_it_just_before  # type: ignore[method-assign]  # the race, made certain
        try:
            resp = await run(dev, q["id"])
        finally:
            service.engine = real_engine  # type: ignore[method-assign]  # restored
        assert resp.status == 200, resp.body
        assert [engine is old for engine in handed] == [True, False]  # moved to the new one
        assert mongo.commands[-1]["$db"] == "app2"
        assert old._current.client is None  # type: ignore[attr-defined]  # nothing reopened on it


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def mongo_query(dev: Any, name: str, port: int, body: dict[str, Any],
                      **config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A MongoDB datasource on 127.0.0.1:`port` (no TLS, no user) and one query on it."""
    ds = await create_datasource(dev, name=name, kind="mongodb", config={
        "host": "127.0.0.1", "port": port, "database": "app", "tls": "disable", **config})
    return ds, await create_query(dev, ds["id"], body, name=name)


async def test_a_refused_connection_fails_at_once_in_the_dialer_s_words(tmp_path: Path) -> None:
    """Nothing listens: the test and a run answer as fast as the other kinds (not after
    PyMongo's server selection gives up), naming the refusal as every kind does."""
    import time

    port = closed_port()
    words = f"is unreachable: connection refused by 127.0.0.1 port {port}"
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds, q = await mongo_query(dev, "refused", port, {"collection": "c",
                                                         "operation": "count"})
        for attempt in ("run", "run again", "test"):
            started = time.monotonic()
            if attempt == "test":
                resp = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
            else:
                resp = await run(dev, q["id"])
            took = time.monotonic() - started
            assert resp.status == 502, (attempt, resp.body)
            assert resp.body["error"]["code"] == "datasource_unreachable", (attempt, resp.body)
            assert words in resp.body["error"]["message"], (attempt, resp.body)
            assert took < 3, (attempt, took)


class GoingDownWireServer(WireServer):
    """`down()` stops listening and hangs up every connection (a server that went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[Any] = []

    async def _handle(self, reader: Any, writer: Any) -> None:
        self.writers.append(writer)
        await super()._handle(reader, writer)

    async def down(self) -> None:
        await self.close()
        for writer in self.writers:
            writer.transport.abort()


async def test_a_server_that_went_down_is_said_in_the_dialer_s_words(tmp_path: Path) -> None:
    """The client exists (a run succeeded), then the server goes away under its pooled
    connection. The run that finds that connection dead fails as fast as a refused connection
    does, in the dialer's words (PyMongo alone would retry it until the run's time limit, 5 s
    here, and say only that the connection was lost); so does every run after it."""
    import time

    server = await GoingDownWireServer().start()
    port = server.port
    try:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            _, q = await mongo_query(dev, "gone", port, {"collection": "c", "operation": "find",
                                                         "filter": {}},
                                     statement_timeout_ms=5000)
            assert (await run(dev, q["id"])).status == 200
            await server.down()
            for attempt in ("over the dead connection", "after", "after again"):
                started = time.monotonic()
                resp = await run(dev, q["id"])
                took = time.monotonic() - started
                assert resp.status == 502 and resp.code == "datasource_unreachable", resp.body
                assert (f"is unreachable: connection refused by 127.0.0.1 port {port}"
                        in resp.body["error"]["message"]), (attempt, resp.body)
                assert took < 1.5, (attempt, took)
    finally:
        await server.close()


async def test_a_server_that_hung_up_but_still_answers_gets_the_run_retried(
        tmp_path: Path) -> None:
    """Every connection is cut but the server still listens (a proxy restarted, say): the
    dialer reaches it, so the run is left to PyMongo's retry, over a new connection."""
    server = await GoingDownWireServer().start()
    try:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            _, q = await mongo_query(dev, "cut", server.port,
                                     {"collection": "c", "operation": "find", "filter": {}},
                                     statement_timeout_ms=5000)
            assert (await run(dev, q["id"])).status == 200
            connections = len(server.writers)
            for writer in server.writers:
                writer.transport.abort()
            resp = await run(dev, q["id"])
            assert resp.status == 200, resp.body
            assert len(server.writers) > connections  # over a new connection
    finally:
        await server.close()


async def test_a_datasource_without_a_user_can_be_changed(tmp_path: Path,
                                                          mongo: WireServer) -> None:
    """No user is stored as `user: ""`: a PATCH that does not name the user keeps none (the
    stored default is not checked again as if given), and a user given must still be a name."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds, q = await mongo_query(dev, "nouser", mongo.port, {"collection": "c",
                                                              "operation": "find",
                                                              "filter": {}})
        assert ds["config"]["user"] == ""
        path = f"/api/v1/datasources/{ds['id']}"
        for change in ({"statement_timeout_ms": 5000}, {"database": "app2"}, {"user": None},
                       {"tls": "disable"}):
            resp = await dev.request("PATCH", path, {"config": change})
            assert resp.status == 200, (change, resp.body)
            assert resp.body["config"]["user"] == "", change
        assert resp.body["config"]["database"] == "app2"
        assert resp.body["config"]["statement_timeout_ms"] == 5000
        assert (await run(dev, q["id"])).status == 200  # no login attempted
        assert mongo.commands[-1]["$db"] == "app2"
        # A user given is still a real name (as at creation): none, or control characters.
        for user in ("", "a\nb"):
            bad = await dev.request("PATCH", path, {"config": {"user": user}})
            assert bad.status == 422 and bad.body["error"]["field"] == "config.user", bad.body


class AuthWireServer(BaseWireServer):
    """Lists only `mechanisms` for the user (saslSupportedMechs), never completes a speculative
    authentication, refuses every saslStart (code 18), and records each mechanism the client
    tried and every payload it sent."""

    def __init__(self, mechanisms: list[str]) -> None:
        super().__init__()
        self.mechanisms = mechanisms
        self.tried: list[str] = []
        self.payloads: list[bytes] = []

    def reply(self, command: dict[str, Any], sequences: dict[str, list[Any]]) -> dict[str, Any]:
        name = next(iter(command))
        if name.lower() in ("hello", "ismaster"):
            answer = self.hello()
            speculative = command.get("speculativeAuthenticate")
            if speculative:
                self.tried.append(str(speculative.get("mechanism", "MONGODB-X509")))
                self.payloads.append(bytes(speculative.get("payload", b"")))
            if "saslSupportedMechs" in command:
                answer["saslSupportedMechs"] = self.mechanisms
            return answer
        if name == "saslStart":
            self.tried.append(str(command.get("mechanism")))
            self.payloads.append(bytes(command.get("payload", b"")))
            return {"ok": 0.0, "errmsg": "Authentication failed.", "code": 18,
                    "codeName": "AuthenticationFailed"}
        return super().reply(command, sequences)


MONGO_PASSWORD = "mongo-Pa55word-must-stay-home"


@pytest.mark.parametrize("offered", [["SCRAM-SHA-1"], ["PLAIN"], ["PLAIN", "SCRAM-SHA-1"]])
async def test_without_verified_tls_only_scram_sha_256_is_tried(tmp_path: Path,
                                                                offered: list[str]) -> None:
    """A server (or an impostor on the path) that offers only weaker mechanisms gets a
    SCRAM-SHA-256 attempt, never SCRAM-SHA-1 nor PLAIN (which would carry the password)."""
    server = await AuthWireServer(offered).start()
    try:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="mongo", kind="mongodb", config={
                "host": "127.0.0.1", "port": server.port, "database": "app", "user": "reader",
                "tls": "disable", "statement_timeout_ms": 3000},
                secrets={"password": MONGO_PASSWORD})
            tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
    finally:
        await server.close()
    assert tested.status == 502 and tested.body["error"]["code"] == "datasource_auth_failed"
    assert server.tried and set(server.tried) == {"SCRAM-SHA-256"}, server.tried
    assert not any(MONGO_PASSWORD.encode() in p for p in server.payloads)
    assert MONGO_PASSWORD not in str(tested.body)


async def test_allow_scram_sha1_lets_pymongo_negotiate(tmp_path: Path) -> None:
    server = await AuthWireServer(["SCRAM-SHA-1"]).start()
    try:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="mongo", kind="mongodb", config={
                "host": "127.0.0.1", "port": server.port, "database": "app", "user": "reader",
                "tls": "disable", "allow_scram_sha1": True, "statement_timeout_ms": 3000},
                secrets={"password": MONGO_PASSWORD})
            assert ds["config"]["allow_scram_sha1"] is True
            tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
            bad = await dev.request("POST", "/api/v1/datasources", {
                "name": "bad", "kind": "mongodb", "config": {
                    "host": "127.0.0.1", "database": "app", "allow_scram_sha1": "yes"}})
    finally:
        await server.close()
    assert tested.status == 502 and tested.body["error"]["code"] == "datasource_auth_failed"
    assert "SCRAM-SHA-1" in server.tried and "PLAIN" not in server.tried
    assert bad.status == 422 and "allow_scram_sha1" in bad.body["error"]["message"]
