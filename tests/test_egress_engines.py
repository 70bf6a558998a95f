"""The engine hooks into the egress dialer, shown from the peer's side: a real PostgreSQL cluster
whose pg_hba.conf accepts only 127.0.0.2 (asyncpg), and a MongoDB wire-protocol server (PyMongo)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from appliance.egress import Dialer, EgressDenied, PolicyHolder, StaticResolver
from appliance.settings import EgressSettings

from .conftest import PostgresCluster, postgres_cluster

asyncpg = pytest.importorskip("asyncpg")
pymongo = pytest.importorskip("pymongo")
bson = pytest.importorskip("bson")

from appliance.egress import asyncpg_hook, pymongo_hook  # noqa: E402
from tests.support.mongo_wire import WireServer  # noqa: E402


def egress(**overrides) -> EgressSettings:
    base = {"source_address": (), "mode": "default", "allow": (), "deny": (),
            "allow_private": True}
    base.update(overrides)
    return EgressSettings(**base)


def dialer_for(resolver=None, **overrides) -> Dialer:
    return Dialer(PolicyHolder(egress(**overrides)), resolver=resolver or StaticResolver({}))


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    # The only way in: TCP from 127.0.0.2. Not 127.0.0.1, not the Unix socket.
    with postgres_cluster(name="egress", hba="host all all 127.0.0.2/32 trust\n",
                          conf="log_connections = on\nmax_connections = 20\n") as cluster:
        yield cluster


async def test_asyncpg_connects_from_the_source_address(postgres):
    dialer = dialer_for(StaticResolver({"pg.example": ["127.0.0.1"]}),
                        source_address=("127.0.0.2",))
    conn = await asyncpg_hook.connect(dialer, host="pg.example", port=postgres.port,
                                      datasource="ds_pg", user="postgres", database="postgres",
                                      timeout=10, ssl=False)
    try:
        assert await conn.fetchval("SELECT host(inet_client_addr())") == "127.0.0.2"
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()
    assert {"purpose": "postgres", "outcome": "connected", "count": 1} in \
        dialer.counters.snapshot()["connections"]


async def test_asyncpg_without_the_source_address_is_refused_by_pg_hba(postgres):
    dialer = dialer_for()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'no pg_hba\.conf entry for host "127\.0\.0\.1"'):
        await asyncpg_hook.connect(dialer, host="127.0.0.1", port=postgres.port,
                                   user="postgres", database="postgres", timeout=10, ssl=False)


async def test_asyncpg_denied_destination_never_reaches_postgres(postgres):
    before = postgres.connections_from("127.0.0.2") + postgres.connections_from("127.0.0.1")
    dialer = dialer_for(source_address=("127.0.0.2",), deny=(f"127.0.0.1:{postgres.port}",))
    with pytest.raises(EgressDenied, match=f"deny: 127.0.0.1:{postgres.port}"):
        await asyncpg_hook.connect(dialer, host="127.0.0.1", port=postgres.port,
                                   user="postgres", database="postgres", timeout=10, ssl=False)
    rebinding = dialer_for(StaticResolver({"pg.example": [["169.254.169.254"], ["127.0.0.1"]]}),
                           source_address=("127.0.0.2",))
    with pytest.raises(EgressDenied, match="cloud metadata"):
        await asyncpg_hook.connect(rebinding, host="pg.example", port=postgres.port,
                                   user="postgres", database="postgres", timeout=10, ssl=False)
    await asyncio.sleep(0.2)
    after = postgres.connections_from("127.0.0.2") + postgres.connections_from("127.0.0.1")
    assert after == before


async def test_asyncpg_cancel_requests_go_through_the_dialer(postgres):
    dialer = dialer_for(source_address=("127.0.0.2",))
    conn = await asyncpg_hook.connect(dialer, host="127.0.0.1", port=postgres.port,
                                      user="postgres", database="postgres", timeout=10,
                                      ssl=False)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    connections = dialer.counters.snapshot()["connections"]
    assert connections == [{"purpose": "postgres", "outcome": "connected", "count": 2}]


async def test_asyncpg_unix_sockets_are_refused(postgres):
    dialer = dialer_for()
    with pytest.raises(EgressDenied, match="unix socket not allowed"):
        await asyncpg_hook.connect(dialer, host=str(postgres.root), port=postgres.port,
                                   user="postgres", database="postgres", timeout=5)


async def test_asyncpg_loop_proxy_keeps_loop_methods_but_never_the_connect_ones():
    loop = asyncio.get_running_loop()
    proxy = asyncpg_hook.EgressLoop(dialer_for(), purpose="postgres")
    assert proxy.call_later == loop.call_later  # the loop's own method, and kept
    assert vars(proxy)["call_later"] == loop.call_later
    assert proxy.get_debug() == loop.get_debug()
    # A value that is not a method is read from the loop every time, never kept.
    loop.slow_callback_duration, before = 0.25, loop.slow_callback_duration
    try:
        assert proxy.slow_callback_duration == 0.25
        assert "slow_callback_duration" not in vars(proxy)
    finally:
        loop.slow_callback_duration = before
    # The dialing methods are the proxy's own, however often the others are looked up.
    assert proxy.create_connection.__func__ is asyncpg_hook.EgressLoop.create_connection
    with pytest.raises(EgressDenied, match="unix socket not allowed"):
        await proxy.create_unix_connection(asyncio.Protocol, "/tmp/x.sock")


# --- MongoDB wire protocol -------------------------------------------------------------------

class MongoWireServer(WireServer):
    """Answers hello, ping and endSessions; records command names."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[str] = []

    def reply(self, command: dict, sequences: dict) -> dict:
        self.commands.append(next(iter(command)).lower())
        return super().reply(command, sequences)


@pytest.fixture
async def mongo():
    server = await MongoWireServer().start()
    yield server
    pymongo_hook.uninstall()
    await server.close()


@pytest.mark.parametrize(("source", "peer"), [(("127.0.0.2",), "127.0.0.2"), ((), "127.0.0.1")])
async def test_pymongo_connects_from_the_source_address(mongo, source, peer):
    dialer = dialer_for(StaticResolver({"mongo.example": ["127.0.0.1"]}), source_address=source)
    client = await pymongo_hook.connect_client(dialer, host="mongo.example", port=mongo.port,
                                               datasource="ds_mongo", timeout=5,
                                               directConnection=True)
    try:
        assert (await client.admin.command("ping"))["ok"] == 1.0
    finally:
        await client.close()
    assert "ping" in mongo.commands
    assert mongo.peers and set(mongo.peers) == {peer}  # monitors and the pool alike
    decisions = dialer.counters.snapshot()["decisions"]
    assert all(d["purpose"] == "mongodb" and d["allowed"] for d in decisions)


async def test_pymongo_denied_destination_fails_at_once(mongo):
    dialer = dialer_for(StaticResolver({"evil.example": ["169.254.169.254"]}))
    with pytest.raises(EgressDenied, match="cloud metadata"):
        await pymongo_hook.connect_client(dialer, host="evil.example", port=mongo.port)


async def test_pymongo_every_connection_is_checked_even_without_the_helper(mongo):
    dialer = dialer_for(deny=(f"127.0.0.1:{mongo.port}",))
    pymongo_hook.install(dialer)
    client = pymongo.AsyncMongoClient("127.0.0.1", mongo.port, serverSelectionTimeoutMS=300,
                                      connectTimeoutMS=300, directConnection=True)
    try:
        with pytest.raises(pymongo.errors.ServerSelectionTimeoutError, match="denied by rule"):
            await client.admin.command("ping")
    finally:
        await client.close()
    assert mongo.peers == []


def test_the_pymongo_seam_still_exists():
    from pymongo import pool_shared

    assert callable(pool_shared._async_create_connection)
    names = pool_shared._configured_protocol_interface.__code__.co_names
    assert "_async_create_connection" in names
