"""The MongoDB engine: one PyMongo `AsyncMongoClient` per datasource (its own pool), every
connection through the egress dialer.

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
from collections.abc import AsyncIterator
from typing import Any, Final

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

class MongoEngine(Engine):
    def __init__(self, target: Target, dialer: Dialer) -> None:
        super().__init__(target)
        self._dialer = dialer
        self._client: Any = None
        self._creating = asyncio.Lock()
        self._runs = EngineRuns(target.name)

    def _connect_timeout(self, timeout: float) -> float:
        """Connecting (and finding the server) takes at most the connect timeout, and less than
        the caller's own limit: then the dialer says why (refused, no answer, no such name)
        before the caller's wait runs out."""
        return max(0.5, min(CONNECT_TIMEOUT, timeout - 1))

    async def _new_client(self, connect_timeout: float, selection_timeout: float | None = None
                          ) -> Any:
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
        password = self.target.secret("password")
        if config.get("user"):
            allow_sha1 = config.get("allow_scram_sha1") is True
            options.update(username=str(config["user"]), password=password or "",
                           authSource=str(config["database"]),
                           **auth_mechanism(str(config.get("tls")), allow_scram_sha1=allow_sha1))
        return await pymongo_hook.connect_client(
            self._dialer, host=str(config["host"]), port=int(config["port"]),
            datasource=self.target.id, timeout=connect_timeout, **options)

    async def _get_client(self, timeout: float) -> Any:
        """The datasource's client, made (and its server reached) on first use. A client whose
        server PyMongo does not know right now (down since, or never up) has the server reached
        again first: a refusal then fails this run at once, in the dialer's words."""
        connect_timeout = self._connect_timeout(timeout)
        if self._client is None:
            async with self._creating:
                if self._client is None:
                    self._client = await self._new_client(connect_timeout)
                    return self._client
        if not self._client.topology_description.has_known_servers:
            config = self.target.config
            await pymongo_hook.reach(self._dialer, host=str(config["host"]),
                                     port=int(config["port"]), datasource=self.target.id,
                                     timeout=connect_timeout)
        return self._client

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
        with self._runs.run():  # EngineRetired once retired: never the old config's client
            try:
                async with asyncio.timeout(timeout):
                    client = await self._get_client(timeout)
                    collection = client[str(self.target.config["database"])][bound.collection]
                    columns, batches = await self._start(collection, bound, fetch, timeout)
            except BaseException as exc:
                raise self.translate(exc, timeout) from None
            yield RowStream(columns, self._guard(batches, timeout))

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

    async def _guard(self, batches: AsyncIterator[list[Any]], timeout: float
                     ) -> AsyncIterator[list[Any]]:
        try:
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
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


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
