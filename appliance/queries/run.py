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
from appliance.audit import Context
from appliance.datasources.engine import Engine
from appliance.datasources.values import dumps
from appliance.errors import ApplianceError
from appliance.queries.service import CompiledQuery, QueryService


class Run:
    """One run: `columns`, and its rows as encoded JSON (bytes): all of them in `rows` for an
    answer (`Runner.answer`), batch by batch from `lines()` for a stream (`Runner.stream`)."""

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

    def take(self, batch: list[Any]) -> bool:
        """Keep the batch's rows (encoded); whether more are wanted."""
        self.rows.extend(self.encode(batch))
        return not self.truncated

    async def lines(self) -> AsyncIterator[list[bytes]]:
        """A stream's encoded rows in batches, up to the limits."""
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
    """Runs compiled queries against their datasources' engines.

    Fail-closed: no row leaves before the audit log holds an entry for its run. An answer's
    entry (outcome, row count) is committed before `answer` returns; a stream's start is
    committed before its first row, and its outcome when it ends.
    """

    def __init__(self, queries: QueryService) -> None:
        self.queries = queries
        self.datasources = queries.datasources
        self.audit = queries.audit

    async def answer(self, query_id: str, params: Any, *, context: Context) -> Run:
        """Run the query and read all its rows (up to the limits); return once it is recorded."""
        started = time.perf_counter()
        compiled = self.queries.cached(query_id) or await self.queries.compiled(query_id)
        run: Run | None = None
        self.audit.runs_in_flight += 1  # until its entry is recorded: a batch waits for it
        try:
            try:
                bound = compiled.template.bind(params)  # InvalidParameter (422) names it
                engine = (self.datasources.started(compiled.datasource_id)
                          or await self.datasources.engine(compiled.datasource_id))
                run = self._run(compiled, engine, started)
                run.columns = await engine.collect(bound, timeout=run.timeout,
                                                   fetch=run.max_rows + 1, take=run.take)
                run.finish()
            except BaseException as exc:
                await self._failed(compiled, run, context, started, exc, "json")
                raise
            await self._record(compiled, run, context, started, "ok", None, "json")
        finally:
            self.audit.runs_in_flight -= 1
        return run  # type: ignore[return-value]  # set: the block above raised otherwise

    @contextlib.asynccontextmanager
    async def stream(self, query_id: str, params: Any, *, context: Context
                     ) -> AsyncIterator[Run]:
        """Bind, open, record the start, yield the run (rows from `run.lines()`, sent inside
        the block); record the outcome once the statement's transaction has ended."""
        started = time.perf_counter()
        compiled = self.queries.cached(query_id) or await self.queries.compiled(query_id)
        run: Run | None = None
        # Not counted in the audit log's `runs_in_flight`: a stream's entries come when it
        # opens and when it ends, too far apart for a batch to wait for them.
        try:
            bound = compiled.template.bind(params)
            engine = (self.datasources.started(compiled.datasource_id)
                      or await self.datasources.engine(compiled.datasource_id))
            run = self._run(compiled, engine, started)
            async with engine.open(  # type: ignore[call-arg]
                    bound, timeout=run.timeout, fetch=run.max_rows + 1,
                    stream=True) as rows:
                run.columns, run._batches = rows.columns, rows.batches
                # Rows leave before the run ends: its start is audited first.
                await self.audit.record_run_start(
                    actor=context.actor, query_id=compiled.id, client=context.client,
                    request_id=context.request_id,
                    details={"datasource": compiled.datasource_id, "mode": "ndjson"})
                yield run
        except BaseException as exc:
            await self._failed(compiled, run, context, started, exc, "ndjson")
            raise
        await self._record(compiled, run, context, started, "ok", None, "ndjson")

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
        """The run's audit entry (await it: it is committed then) and its metric."""
        duration = (run.duration_ms if run is not None and run.finished is not None
                    else (time.perf_counter() - started) * 1000)
        metrics.observe_query_run(outcome, duration / 1000)
        # The only run in flight commits its entry at once (an answer counts itself in
        # `runs_in_flight`, a stream does not).
        return self.audit.record_run(
            actor=context.actor, query_id=compiled.id, datasource=compiled.datasource_id,
            mode=mode, duration_ms=duration, row_count=run.row_count if run is not None else 0,
            outcome=outcome, truncated=run is not None and run.truncated, error=code,
            client=context.client, request_id=context.request_id,
            alone=self.audit.runs_in_flight <= (mode == "json"))
