"""Running a stored query: bind the values, take the datasource's engine, read rows up to the
limits, encode each row as JSON, and record the run's metadata in the audit log.

Owns the effective limits (a query may only tighten its datasource's), truncation, the byte cap
and the audit entry (query id, actor, duration, row count, outcome). Never logs, stores or caches
a parameter value or a row: rows exist only as they pass through.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from appliance import metrics
from appliance.audit import RUN_ACTION, RUN_START_ACTION, Context
from appliance.datasources.engine import Engine
from appliance.datasources.errors import EngineRetired
from appliance.errors import ApplianceError
from appliance.queries.result_json import dumps
from appliance.queries.service import CompiledQuery, QueryService

# How many engines a run may take when each is retired (its datasource changed, here or on
# another instance) before the run got a connection; then it fails with "being reconfigured".
ENGINE_TAKES = 3

# A run's mode, as its audit entry names it: how its rows are delivered.
BUFFERED = "json"  # every row read first, answered in one JSON body (`Runner.run_buffered`)
STREAMED = "ndjson"  # rows sent as they are read (`Runner.run_streamed`)
CSV = "csv"  # streamed too, written as CSV (`Runner.run_streamed(mode=CSV)`)


class Run:
    """One run: `columns`, and its rows as encoded JSON (bytes): all of them in `rows` when
    buffered (`Runner.run_buffered`), batch by batch from `encoded_batches()` when streamed
    (`Runner.run_streamed`)."""

    # Counters start at the class's values (one run is made per request: fewer stores).
    row_count = 0
    byte_count = 0
    truncated = False
    finished: float | None = None  # set with `duration_ms` by `finish`
    duration_ms = 0.0
    _batches: AsyncIterator[list[Any]] | None = None

    def __init__(self, query: CompiledQuery, datasource: str, max_rows: int, max_bytes: int,
                 timeout: float, started: float) -> None:
        self.query = query
        self.datasource = datasource
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.timeout = timeout  # seconds, for the statement and the wait for a connection
        self.started = started
        self.columns: list[str] = []
        self.rows: list[bytes] = []

    def encode(self, batch: list[Any]) -> list[bytes]:
        """The batch's rows as JSON, stopping at `max_rows` or `max_bytes` (then `truncated`)."""
        out: list[bytes] = []
        rows, size = self.row_count, self.byte_count
        max_rows, budget = self.max_rows, self.max_bytes
        for row in batch:
            if rows >= max_rows:
                self.truncated = True
                break
            line = dumps(list(row)).encode()
            if size + len(line) + 1 > budget:
                self.truncated = True
                break
            size += len(line) + 1
            rows += 1
            out.append(line)
        self.row_count, self.byte_count = rows, size
        return out

    def buffer(self, batch: list[Any]) -> bool:
        """Add the batch's rows (encoded) to `rows`; whether more are wanted."""
        self.rows.extend(self.encode(batch))
        return not self.truncated

    async def encoded_batches(self) -> AsyncIterator[list[bytes]]:
        """A streamed run's rows, encoded, batch by batch as they are read, up to the limits."""
        if self._batches is not None:
            async for batch in self._batches:
                out = self.encode(batch)
                if out:
                    yield out
                if self.truncated:
                    break
        self.finish()

    def finish(self) -> None:
        """The run has read its last row: its duration (milliseconds, to the microsecond)."""
        self.finished = time.perf_counter()
        self.duration_ms = round((self.finished - self.started) * 1000, 3)


class Runner:
    """Runs compiled queries against their datasources' engines: one path (`_RunScope`), two
    ways to deliver the rows (`run_buffered`, `run_streamed`).

    Fail-closed: no row leaves before the audit log holds an entry for its run. A buffered run's
    entry (outcome, row count) is committed before `run_buffered` returns; a streamed run's start
    is committed before its first row, and its outcome when it ends.
    """

    def __init__(self, queries: QueryService) -> None:
        self.queries = queries
        self.datasources = queries.datasources
        self.audit = queries.audit

    async def run_buffered(self, query_id: str, params: Any, *, context: Context) -> Run:
        """Run the query and read all its rows (up to the limits) into `run.rows`; return once
        its entry is recorded."""
        async with _RunScope(self, query_id, params, context, BUFFERED) as scope:
            run = scope.run
            for attempt in range(ENGINE_TAKES):
                try:
                    run.columns = await scope.engine.collect(
                        scope.bound, timeout=run.timeout, fetch=run.max_rows + 1,
                        take=run.buffer)
                    break
                except EngineRetired:
                    if run.row_count or attempt == ENGINE_TAKES - 1:
                        raise
                    await scope.take_new_engine()
            run.finish()
        return run

    @contextlib.asynccontextmanager
    async def run_streamed(self, query_id: str, params: Any, *, context: Context,
                           mode: str = STREAMED) -> AsyncIterator[Run]:
        """Bind, open, record the start, yield the run (its rows from `run.encoded_batches()`,
        sent inside the block); record the outcome once the statement's transaction has ended.
        `mode` is how the rows leave (`STREAMED` or `CSV`), as the audit entries name it."""
        async with _RunScope(self, query_id, params, context, mode) as scope, \
                contextlib.AsyncExitStack() as stack:
            run = scope.run
            for attempt in range(ENGINE_TAKES):
                try:
                    rows = await stack.enter_async_context(scope.engine.open(
                        scope.bound, timeout=run.timeout, fetch=run.max_rows + 1, stream=True))
                    break
                except EngineRetired:
                    if attempt == ENGINE_TAKES - 1:
                        raise
                    await scope.take_new_engine()
            run.columns, run._batches = rows.columns, rows.batches
            # Rows leave before the run ends: its start is audited first.
            await self.audit.record(
                action=RUN_START_ACTION, target=f"query:{run.query.id}", context=context,
                details={"datasource": run.query.datasource_id, "mode": mode})
            yield run

    @staticmethod
    def _run(compiled: CompiledQuery, engine: Engine, started: float) -> Run:
        """The run's effective limits: the query's where they are tighter than its datasource's."""
        limits = engine.target.limits
        max_rows = limits.max_rows
        timeout_ms = limits.statement_timeout_ms
        if compiled.max_rows and compiled.max_rows < max_rows:
            max_rows = compiled.max_rows
        if compiled.timeout_ms and compiled.timeout_ms < timeout_ms:
            timeout_ms = compiled.timeout_ms
        return Run(compiled, engine.target.name, max_rows, limits.max_response_bytes,
                   timeout_ms / 1000, started)

    async def _failed(self, compiled: CompiledQuery, run: Run | None, context: Context,
                      started: float, exc: BaseException, mode: str) -> None:
        """Record a run that did not succeed (not one whose own entry failed: that is it)."""
        if isinstance(exc, ApplianceError):
            if run is not None and not getattr(exc, "datasource", None):
                exc.datasource = run.datasource  # type: ignore[attr-defined]  # egress denials
            outcome = "denied" if exc.status in (401, 403) else "failed"
            await self._record(compiled, run, context, started, outcome, exc.code, mode)
        else:
            with contextlib.suppress(ApplianceError):
                await self._record(compiled, run, context, started, "error", "internal_error",
                                   mode)

    def _record(self, compiled: CompiledQuery, run: Run | None, context: Context,
                started: float, outcome: str, code: str | None, mode: str
                ) -> Coroutine[Any, Any, int]:
        """The run's audit entry (await it: it is committed then; metadata only) and its
        metric."""
        duration = (run.duration_ms if run is not None and run.finished is not None
                    else (time.perf_counter() - started) * 1000)
        metrics.observe_query_run(outcome, duration / 1000)
        metrics.observe_query_result(compiled.datasource_id,
                                     rows=run.row_count if run is not None else 0, error=code)
        details: dict[str, Any] = {
            "datasource": compiled.datasource_id, "duration_ms": round(duration, 3),
            "mode": mode, "row_count": run.row_count if run is not None else 0,
            "truncated": run is not None and run.truncated}
        if code is not None:
            details["error"] = code
        return self.audit.record(action=RUN_ACTION, target=f"query:{compiled.id}",
                                 outcome=outcome, details=details, context=context)


class _RunScope:
    """The one path of a run, whichever way its rows are delivered. Entered: the query is
    looked up, its values bound, its engine and limits taken (a failure from the binding on is
    recorded). Left: the outcome is recorded. In between, and until its entry is written, the
    run is under way for the audit log (`AuditLog.run_under_way`).

    A class, not a generator-based context manager: a buffered run is the hot path, and this
    costs two coroutines where `contextlib.asynccontextmanager` costs a generator and its
    wrappers."""

    __slots__ = (
        "bound",
        "compiled",
        "context",
        "engine",
        "mode",
        "params",
        "query_id",
        "run",
        "runner",
        "started",
        "under_way",
    )

    run: Run
    engine: Engine
    bound: Any

    def __init__(self, runner: Runner, query_id: str, params: Any, context: Context,
                 mode: str) -> None:
        self.runner = runner
        self.query_id = query_id
        self.params = params
        self.context = context
        self.mode = mode
        self.started = time.perf_counter()

    async def __aenter__(self) -> _RunScope:
        runner, started = self.runner, self.started
        queries = runner.queries
        # A query that is not found is not a run: nothing to record.
        compiled = self.compiled = await queries.compiled(self.query_id)
        under_way = self.under_way = runner.audit.run_under_way()
        under_way.__enter__()
        run: Run | None = None
        try:
            self.bound = compiled.template.bind(self.params)  # InvalidParameter (422) names it
            datasources = runner.datasources
            engine = self.engine = await datasources.engine(compiled.datasource_id)
            run = self.run = runner._run(compiled, engine, started)
        except BaseException as exc:
            try:
                await runner._failed(compiled, run, self.context, started, exc, self.mode)
            finally:
                under_way.__exit__(None, None, None)
            raise
        return self

    async def take_new_engine(self) -> None:
        """The engine this run took was retired before the run got a connection (its
        datasource changed): take the one that replaced it."""
        self.engine = await self.runner.datasources.engine(self.compiled.datasource_id)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        runner = self.runner
        try:
            if exc is None:
                await runner._record(self.compiled, self.run, self.context, self.started, "ok",
                                     None, self.mode)
            else:
                await runner._failed(self.compiled, self.run, self.context, self.started, exc,
                                     self.mode)
        finally:
            self.under_way.__exit__(None, None, None)
