"""A real TCP relay to a test PostgreSQL server that can lose or hold back the answer to a COMMIT
(the server has committed; the client does not know yet, or never hears it), and a store opened
through it. For the tests of what the store and the audit log do when a COMMIT's answer is late
or lost."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from appliance import settings
from appliance.audit.sinks import Sinks, open_sinks
from appliance.egress import Dialer, PolicyHolder
from appliance.settings import SinkSpec
from appliance.store import Store, open_store
from tests.conftest import StoreDatabase

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message asyncpg sends for "COMMIT"


class LostCommitAnswer:
    """A relay to the PostgreSQL server; `arm()` makes it lose the answer to the next COMMIT,
    `arm(hold=True)` hold it back (`held` is set once the server has answered) until
    `released` is set."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.armed = False
        self.hold = False
        self.held = asyncio.Event()
        self.released = asyncio.Event()
        self.lost = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> LostCommitAnswer:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    def arm(self, *, hold: bool = False) -> None:
        self.armed, self.hold = True, hold

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target)
        commit_sent = False

        async def upstream() -> None:
            nonlocal commit_sent
            while data := await client_in.read(65536):
                if self.armed and COMMIT in data:
                    self.armed, commit_sent = False, True
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def downstream() -> None:
            nonlocal commit_sent
            while data := await server_in.read(65536):
                if commit_sent and self.hold:  # the server committed: the answer waits
                    commit_sent = False
                    self.held.set()
                    await self.released.wait()
                elif commit_sent:  # the server committed and said so: the client never hears it
                    self.lost += 1
                    client_out.transport.abort()
                    server_out.close()
                    return
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())


async def open_relayed(relay: LostCommitAnswer, database: StoreDatabase, tmp_path: Path
                       ) -> tuple[Store, Sinks]:
    """The store on `database`, reached through `relay`, and a file sink `audit.jsonl`."""
    env = database.env(
        APPLIANCE_STORE_URL=f"postgresql://app@127.0.0.1:{relay.port}/{database.name}")
    s = settings.load(env=env, flags={"state_dir": str(tmp_path / "state")})
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    return store, open_sinks([SinkSpec("file", str(tmp_path / "audit.jsonl"))])
