"""The MongoDB engine: one PyMongo `AsyncMongoClient` per datasource (its own pool), every
connection through the egress dialer.

PyMongo's pool cannot be told that the egress policy changed: at a change the engine replaces
its client (the next run makes a new one, whose every connection is checked under the new
policy) and closes the old one once the runs on it have ended. A server that dies under a pooled
connection is reached again through the dialer the moment PyMongo clears its pool, so the run
fails at once in the dialer's words, not after PyMongo's retry has waited out its time limit.

Owns running a bound `MongoCommand` (find, aggregate, count, and the insert/update/delete forms)
and translating PyMongo's errors (a sentence per error code, never the server's message, which
quotes values). Documents come back whole, one per row, in a single `document` column. Never logs
a filter, a document or a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Final, TypeVar

from pymongo import monitoring

from appliance.datasources.config import CONNECT_TIMEOUT
from appliance.datasources.engine import Engine, EngineRuns, RowStream, Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceTimeout,
    DatasourceTLSError,
    DatasourceUnreachable,
    QueryFailed,
    connection_failure,
)
from appliance.egress import Dialer, pymongo_hook
from appliance.errors import ApplianceError
from appliance.kinds.mongodb.binding import MongoCommand

BATCH = 1000
# PyMongo's DEBUG command log quotes commands and replies (filters, documents): never below INFO.
logging.getLogger("pymongo").setLevel(logging.INFO)
_AUTH_CODES = frozenset({11, 13, 18})  # UserNotFound, Unauthorized, AuthenticationFailed
# What a failed command says, by error code. Never the server's errmsg, errInfo or keyValue: they
# quote the values of the command and of stored documents ("dup key: { x: … }").
_SENTENCES: Final = {
    2: "a value or option is not valid (BadValue)",
    9: "the command could not be parsed (FailedToParse)",
    14: "a value has the wrong type (TypeMismatch)",
    26: "the namespace does not exist (NamespaceNotFound)",
    28: "a path cannot be created in the document (PathNotViable)",
    40: "an update has conflicting paths (ConflictingUpdateOperators)",
    52: "a field name is not valid (DollarPrefixedFieldName)",
    66: "an immutable field such as _id would change (ImmutableField)",
    121: "a document failed the collection's validation (DocumentValidationFailure)",
    168: "a query operator is not valid (InvalidPipelineOperator)",
    11000: "a unique index would be violated (duplicate key)",
}


def auth_mechanism(tls: str, *, allow_scram_sha1: bool) -> dict[str, str]:
    """PyMongo's `authMechanism` for a password login. PyMongo never sends PLAIN (the password in
    clear) unless asked, but by default takes SCRAM-SHA-1 from a server that does not list
    SCRAM-SHA-256: without verified TLS, an impostor could ask for it. SCRAM-SHA-256 is pinned
    then, unless the datasource allows SCRAM-SHA-1."""
    if tls == "verify-full" or allow_scram_sha1:
        return {}  # PyMongo's negotiation: SCRAM-SHA-256, or SCRAM-SHA-1 if the server lacks it
    return {"authMechanism": "SCRAM-SHA-256"}


# What the egress dialer says of a failed connect (egress.dialer.describe_connect_error), found
# in pymongo's summary of its attempts: only these words of the dialer are taken from it.
_DIALER_WORDS = re.compile(r"connection refused by [0-9a-fA-F.:]+ port \d+|no answer from "
                           r"[0-9a-fA-F.:]+ port \d+ \(timed out\)|no route to [0-9a-fA-F.:]+ "
                           r"\((?:host|network) unreachable\)|the name [A-Za-z0-9.-]+ does not "
                           r"resolve to an address")
T = TypeVar("T")


class _PoolCleared(monitoring.ConnectionPoolListener):
    """Hears PyMongo clear a client's pool (a network error on one of its connections, or a
    failed heartbeat: the server is then Unknown). PyMongo publishes pool events in the event
    loop, at the moment they happen. `cleared` is done at the next clearing."""

    def __init__(self) -> None:
        self.cleared: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        done, self.cleared = self.cleared, self.cleared.get_loop().create_future()
        done.set_result(None)

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        pass

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        pass

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        pass

    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent
                                     ) -> None:
        pass

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent
                                    ) -> None:
        pass

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        pass

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        pass


class _Client:
    """One client of the engine, made on its first run, and the runs on it: replaced when the
    egress policy changes, then closed once those runs have ended."""

    def __init__(self, datasource: str) -> None:
        self.client: Any = None
        self.creating = asyncio.Lock()
        self.runs = EngineRuns(datasource)
        self.clearings: _PoolCleared | None = None  # its pool clearings, heard


class MongoEngine(Engine):
    def __init__(self, target: Target, dialer: Dialer) -> None:
        super().__init__(target)
        self._dialer = dialer
        self._current = _Client(target.name)
        self._replaced: set[asyncio.Task[None]] = set()  # old clients closing
        self._watching = False
        self._runs = EngineRuns(target.name)

    def _connect_timeout(self, timeout: float) -> float:
        """Connecting (and finding the server) takes at most the connect timeout, and less than
        the caller's own limit: then the dialer says why (refused, no answer, no such name)
        before the caller's wait runs out."""
        return max(0.5, min(CONNECT_TIMEOUT, timeout - 1))

    async def _new_client(self, connect_timeout: float, selection_timeout: float | None = None,
                          clearings: _PoolCleared | None = None) -> Any:
        config = self.target.config
        limits = self.target.limits
        options: dict[str, Any] = {
            "maxPoolSize": limits.max_connections,
            "timeoutMS": limits.statement_timeout_ms,
            "tls": config.get("tls") == "verify-full",
            "appname": "appliance",
            "serverSelectionTimeoutMS": int(connect_timeout * 1000),
        }
        if selection_timeout is not None:
            options["serverSelectionTimeoutMS"] = int(selection_timeout * 1000)
            options["timeoutMS"] = int(selection_timeout * 1000)
        if clearings is not None:
            options["event_listeners"] = [clearings]
        password = self.target.secret("password")
        if config.get("user"):
            allow_sha1 = config.get("allow_scram_sha1") is True
            options.update(username=str(config["user"]), password=password or "",
                           authSource=str(config["database"]),
                           **auth_mechanism(str(config.get("tls")), allow_scram_sha1=allow_sha1))
        return await pymongo_hook.connect_client(
            self._dialer, host=str(config["host"]), port=int(config["port"]),
            datasource=self.target.id, timeout=connect_timeout, **options)

    async def _get_client(self, current: _Client, timeout: float) -> Any:
        """`current`'s client, made (and its server reached) on first use. A client whose
        server PyMongo does not know right now (down since, or never up) has the server reached
        again first: a refusal then fails this run at once, in the dialer's words."""
        if not self._watching:  # in the loop the clients live in
            self._dialer.policy.on_change(self._policy_changed, asyncio.get_running_loop())
            self._watching = True
        if current.client is None:
            async with current.creating:
                if current.client is None:
                    current.clearings = _PoolCleared()
                    current.client = await self._new_client(self._connect_timeout(timeout),
                                                            clearings=current.clearings)
                    return current.client
        if not current.client.topology_description.has_known_servers:
            await self._reach(timeout)
        return current.client

    async def _reach(self, timeout: float) -> None:
        """Connect to the server through the dialer and hang up: the dialer's refusal, at once."""
        config = self.target.config
        await pymongo_hook.reach(self._dialer, host=str(config["host"]), port=int(config["port"]),
                                 datasource=self.target.id,
                                 timeout=self._connect_timeout(timeout))

    async def _unless_gone(self, current: _Client, step: Awaitable[T], timeout: float) -> T:
        """`step` (a command, a batch), unless the server is found gone meanwhile. When a pooled
        connection fails under a command, PyMongo clears the pool and retries after a server
        selection that waits out the whole time limit if the server is down. At the clearing,
        the server is reached through the dialer: a refusal ends the run there, in the dialer's
        words; a server that answers is left to PyMongo's retry."""
        task = asyncio.ensure_future(step)
        try:
            if current.clearings is not None:
                cleared = current.clearings.cleared
                await asyncio.wait((task, cleared), return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    await self._reach(timeout)
            return await task
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # PyMongo's own clean-up of the step, before the run ends
            raise

    def _policy_changed(self) -> None:
        """The egress policy changed: the next run makes a new client (every connection dialed
        through the new policy); the old client is closed once its runs have ended."""
        old, self._current = self._current, _Client(self.target.name)
        closing = asyncio.ensure_future(self._close_client(old))
        self._replaced.add(closing)
        closing.add_done_callback(self._replaced.discard)

    @staticmethod
    async def _close_client(old: _Client) -> None:
        await old.runs.retire()  # the commands under way (and their cursors) end first
        client, old.client = old.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def test(self, timeout: float) -> None:
        client = None
        try:
            async with asyncio.timeout(timeout):
                client = await self._new_client(self._connect_timeout(timeout),
                                                selection_timeout=max(0.5, timeout - 2))
                await client[str(self.target.config["database"])].command("ping")
        except BaseException as exc:
            raise self.translate(exc, timeout) from None
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    @contextlib.asynccontextmanager
    async def open(self, bound: MongoCommand, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[RowStream]:
        current = self._current  # its runs entered at once: it closes after this one
        with self._runs.run(), current.runs.run():  # EngineRetired once the engine is retired
            try:
                async with asyncio.timeout(timeout):
                    client = await self._get_client(current, timeout)
                    collection = client[str(self.target.config["database"])][bound.collection]
                    columns, batches = await self._unless_gone(
                        current, self._start(collection, bound, fetch, timeout), timeout)
            except BaseException as exc:
                raise self.translate(exc, timeout) from None
            yield RowStream(columns, self._guard(current, batches, timeout))

    async def _start(self, collection: Any, command: MongoCommand, fetch: int, timeout: float
                     ) -> tuple[list[str], AsyncIterator[list[Any]]]:
        args = command.arguments
        operation = command.operation
        max_ms = max(1, int(timeout * 1000))
        if operation == "find":
            limit = args.get("limit") or 0
            limit = min(limit, fetch) if limit else fetch
            sort = list(args["sort"].items()) if args.get("sort") else None
            cursor = collection.find(args.get("filter") or {}, projection=args.get("projection"),
                                     sort=sort, skip=args.get("skip") or 0, limit=limit,
                                     batch_size=min(BATCH, fetch), max_time_ms=max_ms)
            return ["document"], _cursor_batches(cursor, fetch)
        if operation == "aggregate":
            cursor = await collection.aggregate(args["pipeline"], batchSize=min(BATCH, fetch),
                                                maxTimeMS=max_ms)
            return ["document"], _cursor_batches(cursor, fetch)
        if operation == "count":
            options = {k: args[k] for k in ("skip", "limit") if args.get(k)}
            count = await collection.count_documents(args.get("filter") or {}, maxTimeMS=max_ms,
                                                     **options)
            return ["count"], _single([count])
        if operation == "insert_one":
            result = await collection.insert_one(args["document"])
            return ["inserted_id"], _single([result.inserted_id])
        if operation == "insert_many":
            result = await collection.insert_many(args["documents"])
            return ["inserted_ids"], _single([list(result.inserted_ids)])
        if operation in ("update_one", "update_many"):
            method = getattr(collection, operation)
            result = await method(args["filter"], args["update"],
                                  upsert=bool(args.get("upsert", False)))
            return (["matched_count", "modified_count", "upserted_id"],
                    _single([result.matched_count, result.modified_count, result.upserted_id]))
        if operation in ("delete_one", "delete_many"):
            result = await getattr(collection, operation)(args["filter"])
            return ["deleted_count"], _single([result.deleted_count])
        raise QueryFailed(self.name, f"unsupported operation {operation!r}")

    async def _guard(self, current: _Client, batches: AsyncIterator[list[Any]], timeout: float
                     ) -> AsyncIterator[list[Any]]:
        try:
            # A find's command is sent for its first batch: watched like `_start`'s commands. The
            # rest are getMores, which PyMongo never retries: a dead connection fails them at once.
            try:
                first = await self._unless_gone(current, anext(batches), timeout)
            except StopAsyncIteration:
                return
            yield first
            async for batch in batches:
                yield batch
        except BaseException as exc:
            raise self.translate(exc, timeout) from None

    def translate(self, exc: BaseException, timeout: float) -> BaseException:
        from pymongo import errors

        name = self.name
        common = connection_failure(name, exc, CONNECT_TIMEOUT)
        if common is not None:
            return common
        if isinstance(exc, ApplianceError):
            return exc
        if isinstance(exc, errors.ExecutionTimeout | TimeoutError):
            return DatasourceTimeout(name, timeout, "finish the command")
        if isinstance(exc, errors.ServerSelectionTimeoutError):
            text = str(exc)
            if "denied by rule" in text:
                return DatasourceUnreachable(name, "unreachable (egress policy)")
            if "SSL" in text or "certificate" in text:
                return DatasourceTLSError(name, "handshake failed")
            said = _DIALER_WORDS.search(text)  # the egress dialer's own sentence, never pymongo's
            if said:
                return DatasourceUnreachable(name, f"unreachable: {said.group(0)}")
            return DatasourceUnreachable(name, "unreachable (no server answered)")
        if isinstance(exc, errors.OperationFailure) and exc.code in _AUTH_CODES:
            return DatasourceAuthFailed(name, "authentication failed (user or password "
                                              "refused)")
        if isinstance(exc, errors.NetworkTimeout):
            return DatasourceTimeout(name, timeout)
        if isinstance(exc, errors.ConnectionFailure):
            return DatasourceUnreachable(name, "unreachable (the connection was lost)")
        if isinstance(exc, errors.OperationFailure):
            code = _failure_code(exc)
            return QueryFailed(name, _SENTENCES.get(code, "the command failed"), f"code {code}")
        if isinstance(exc, errors.PyMongoError):
            return QueryFailed(name, type(exc).__name__)
        return DatasourceUnreachable(name, f"unreachable ({type(exc).__name__})")

    async def close(self) -> None:
        await self._runs.retire()  # the commands under way (and their cursors) end first
        await self._close_client(self._current)
        if self._replaced:
            await asyncio.gather(*self._replaced, return_exceptions=True)


def _failure_code(exc: Any) -> int:
    """The error's code; for a bulk write, its first write error's (a duplicate key, say)."""
    details = exc.details if isinstance(exc.details, dict) else {}
    write_errors = details.get("writeErrors")
    if isinstance(write_errors, list) and write_errors and isinstance(write_errors[0], dict):
        first = write_errors[0].get("code")
        if type(first) is int:
            return first
    return exc.code if type(exc.code) is int else 0


async def _cursor_batches(cursor: Any, fetch: int) -> AsyncIterator[list[Any]]:
    batch: list[Any] = []
    count = 0
    try:
        async for document in cursor:
            batch.append([document])
            count += 1
            if len(batch) >= BATCH:
                yield batch
                batch = []
            if count >= fetch:
                break
        if batch:
            yield batch
    finally:
        await cursor.close()


async def _single(row: list[Any]) -> AsyncIterator[list[Any]]:
    yield [row]
