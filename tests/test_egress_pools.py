"""Pooled database connections and a change of the egress policy, through the real API against
real servers: the PostgreSQL cluster and MariaDB (the session fixtures) and a server speaking
MongoDB's wire protocol. A connection dialed under the old policy is never used under the new
one: after a change that denies the destination, the next run is refused by the policy (not
served over a kept connection), the kept connections are closed on the server's side, and once
the destination is allowed again a run dials afresh. The change comes from the API, or from a
reloaded settings file; a run under way at the change ends normally on its connection."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.datasources.engine import Target
from appliance.egress import Dialer, EgressDenied, PolicyHolder, StaticResolver
from appliance.parameters import parse_parameters
from appliance.settings import EgressSettings
from tests.conftest import PG_PASSWORD, TEST_STORE, PostgresServer
from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER, MariaDBServer
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

pytest.importorskip("asyncpg")
pytest.importorskip("asyncmy")
pytest.importorskip("pymongo")
bson = pytest.importorskip("bson")

from tests.support.mongo_wire import WireServer  # noqa: E402

OPEN = EgressSettings(source_address=(), mode="default", allow=(), deny=(), allow_private=True)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def denied_then_dialed_afresh(tmp_path: Path, port: int, kind: str, config: dict[str, Any],
                                    secrets: dict[str, str], body: Any,
                                    alive: Callable[[Any], bool]) -> None:
    """Two runs share one kept connection (`body` answers the server's id of the connection; one
    connection at most, so the second run waits for the first one's to come back);
    an API change denies 127.0.0.1:`port`: the next run is refused by the policy and the kept
    connection ends (`alive(id)` turns false); with the change undone, a run dials afresh."""
    async with proxy(tmp_path / "state") as appliance:
        admin = as_role(appliance, "admin")
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="db", kind=kind, secrets=secrets,
                                     config={**config, "max_connections": 1})
        q = await create_query(dev, ds["id"], body, name="who")
        served = [await run(dev, q["id"]) for _ in range(2)]
        assert all(resp.status == 200 for resp in served), [r.body for r in served]
        kept = served[0].body["rows"][0][0]
        assert served[1].body["rows"][0][0] == kept and alive(kept)  # the premise: kept

        changed = await admin.request("PUT", "/api/v1/egress", {"deny": [f"127.0.0.1:{port}"]})
        assert changed.status == 200, changed.body
        denied = await run(dev, q["id"])
        assert denied.status == 403 and denied.code == "egress_denied", denied.body
        await until(lambda: not alive(kept), "the kept connection is still open")

        undone = await admin.request("PUT", "/api/v1/egress", {"deny": None})
        assert undone.status == 200, undone.body
        again = await run(dev, q["id"])
        assert again.status == 200, again.body
        assert again.body["rows"][0][0] != kept


async def test_postgres(tmp_path: Path, postgres_server: PostgresServer) -> None:
    if TEST_STORE == "postgres":  # the store is on this server, and a deny of it is refused
        pytest.skip("the store is this PostgreSQL server: egress_denies_store (test_propagation)"
                    "; the pool does not depend on the store, tested on SQLite's run")
    pg = postgres_server
    await denied_then_dialed_afresh(
        tmp_path, pg.port, "postgres",
        {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
         "tls": "disable"}, {"password": PG_PASSWORD}, "SELECT pg_backend_pid() AS id",
        lambda backend: pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}"
                               ).strip() == "1")


async def test_mariadb(tmp_path: Path, mariadb_server: MariaDBServer) -> None:
    maria = mariadb_server
    await denied_then_dialed_afresh(
        tmp_path, maria.port, "mysql",
        {"host": "127.0.0.1", "port": maria.port, "database": DATABASE, "user": NATIVE_USER,
         "tls": "disable", "allow_password_without_verified_tls": True},
        {"password": NATIVE_PASSWORD}, "SELECT CONNECTION_ID() AS id",
        lambda thread: maria.sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                 f"WHERE ID = {int(thread)}").strip() == "1")


_PORT: contextvars.ContextVar[int] = contextvars.ContextVar("client_port")


class Connections(WireServer):
    """Answers `find` with one document naming the client port of its connection; `open`: the
    client ports connected now (the client's pool and its monitors)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: set[int] = set()

    async def _handle(self, reader: Any, writer: Any) -> None:
        port = int(writer.get_extra_info("peername")[1])
        _PORT.set(port)  # each connection is served in a task of its own
        self.open.add(port)
        try:
            await super()._handle(reader, writer)
        finally:
            self.open.discard(port)

    def reply(self, command: dict[str, Any], sequences: dict[str, list[Any]]) -> dict[str, Any]:
        name = next(iter(command))
        if name != "find":
            return super().reply(command, sequences)
        return {"cursor": {"firstBatch": [{"port": _PORT.get()}], "id": bson.Int64(0),
                           "ns": f"{command.get('$db')}.{command[name]}"}, "ok": 1.0}


@pytest.fixture
async def mongo() -> AsyncIterator[Connections]:
    server = await Connections().start()
    yield server
    await server.close()


FIND = {"collection": "c", "operation": "find", "filter": {}}


async def test_mongodb(tmp_path: Path, mongo: Connections) -> None:
    await denied_then_dialed_afresh(
        tmp_path, mongo.port, "mongodb",
        {"host": "127.0.0.1", "port": mongo.port, "database": "app", "tls": "disable"}, {},
        FIND, lambda document: document["port"] in mongo.open)


async def test_mongodb_a_run_under_way_at_a_change_ends_on_its_connection(
        mongo: Connections) -> None:
    """A run that took the client before the change sends its command over the kept connection
    and gets its answer; then the old client and all its connections (monitors too) are closed,
    and the next run is refused by the policy."""
    from appliance.kinds.mongodb.binding import compile_mongo
    from appliance.kinds.mongodb.engine import MongoEngine

    holder = PolicyHolder(OPEN)
    target = Target(id="ds_m", name="m", kind="mongodb", version=1, config={
        "host": "127.0.0.1", "port": mongo.port, "database": "app", "tls": "disable"})
    engine = MongoEngine(target, Dialer(holder, resolver=StaticResolver({})))
    find = compile_mongo(FIND, parse_parameters([])).bind({})

    async def ports_of(stream: Any) -> list[int]:
        return [row[0]["port"] async for batch in stream.batches for row in batch]

    try:
        async with engine.open(find, timeout=10, fetch=10) as first:
            (kept,) = await ports_of(first)
        async with engine.open(find, timeout=10, fetch=10) as under_way:
            holder.update(dataclasses.replace(OPEN, deny=(f"127.0.0.1:{mongo.port}",)))
            assert await ports_of(under_way) == [kept]  # the command went over the kept one
        await until(lambda: not mongo.open, "the old client's connections are still open")
        with pytest.raises(EgressDenied):
            async with engine.open(find, timeout=10, fetch=10):
                pass
        assert not mongo.open
    finally:
        await engine.close()


async def test_a_reloaded_settings_file_reaches_a_mariadb_pool(mariadb_server: MariaDBServer
                                                               ) -> None:
    """The settings file reloaded (`RuntimeEgress.rebase`, as on SIGHUP) denies the server while
    a run holds a connection: that run ends normally, its connection is closed on the server, and
    the next run is refused by the policy."""
    from appliance.egress.runtime import RuntimeEgress
    from appliance.kinds.mysql.binding import compile_mysql
    from appliance.kinds.mysql.engine import MysqlEngine
    from appliance.secret import Secret

    maria = mariadb_server
    runtime = RuntimeEgress(OPEN, Dialer(PolicyHolder(OPEN), resolver=StaticResolver({})))
    target = Target(id="ds_my", name="my", kind="mysql", version=1, config={
        "host": "127.0.0.1", "port": maria.port, "database": DATABASE, "user": NATIVE_USER,
        "tls": "disable", "allow_password_without_verified_tls": True},
        secrets={"password": Secret(NATIVE_PASSWORD)})
    engine = MysqlEngine(target, runtime.dialer)
    who = compile_mysql("SELECT CONNECTION_ID() AS id", parse_parameters([])).bind({})

    def alive(thread: int) -> bool:
        return maria.sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                         f"WHERE ID = {thread}").strip() == "1"

    try:
        async with engine.open(who, timeout=10, fetch=10) as under_way:
            await runtime.rebase(dataclasses.replace(OPEN, deny=(f"127.0.0.1:{maria.port}",)))
            ((thread,),) = [row async for batch in under_way.batches for row in batch]
        await until(lambda: not alive(int(thread)), "the connection is still open")
        with pytest.raises(EgressDenied):
            async with engine.open(who, timeout=10, fetch=10):
                pass
    finally:
        await engine.close()
