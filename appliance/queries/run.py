"""Running a stored query: bind the values, take the datasource's engine, read rows up to the
limits, encode each row as JSON, and record the run's metadata in the audit log.

Owns the effective limits (a query may only tighten its datasource's), truncation, the byte cap
and the audit entry (query id, actor, duration, row count, outcome). Never logs, stores or caches
a parameter value or a row: rows exist only as they pass through.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from appliance import metrics
from appliance.audit import Context
from appliance.datasources.values import dumps
from appliance.errors import ApplianceError
from appliance.queries.service import CompiledQuery, QueryService


@dataclass
class Run:
    """One run in progress: `columns`, then `lines()` gives each row as encoded JSON (bytes)."""

    query: CompiledQuery
    datasource: str
    columns: list[str]
    max_rows: int
    max_bytes: int
    _batches: AsyncIterator[list[Any]]
    started: float = field(default_factory=time.perf_counter)
    row_count: int = 0
    byte_count: int = 0
    truncated: bool = False
    finished: float | None = None

    async def lines(self) -> AsyncIterator[list[bytes]]:
        """Encoded rows in batches, stopping at `max_rows` or `max_bytes` (then `truncated`)."""
        budget = self.max_bytes
        async for batch in self._batches:
            out: list[bytes] = []
            for row in batch:
                if self.row_count >= self.max_rows:
                    self.truncated = True
                    break
                line = dumps(list(row)).encode("utf-8")
                if self.byte_count + len(line) + 1 > budget:
                    self.truncated = True
                    break
                self.byte_count += len(line) + 1
                self.row_count += 1
                out.append(line)
            if out:
                yield out
            if self.truncated:
                break
        self.finished = time.perf_counter()

    @property
    def duration_ms(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return round((end - self.started) * 1000, 3)


class Runner:
    """Runs compiled queries against their datasources' engines."""

    def __init__(self, queries: QueryService) -> None:
        self.queries = queries
        self.datasources = queries.datasources
        self.audit = queries.audit
        self._in_flight = 0  # runs between bind and their audit entry

    @contextlib.asynccontextmanager
    async def run(self, query_id: str, params: Any, *, context: Context, stream: bool,
                  mode: str) -> AsyncIterator[Run]:
        """Bind, open, yield the run; record it in the audit log (metadata only).

        Fail-closed: a JSON run's entry is committed before the context exits normally, so a
        caller that sends the result after the block never sends one that was not audited. A
        stream's rows are sent inside the block: its start is committed before the run is
        yielded, and the entry with the outcome and row count when it ends.
        """
        started = time.perf_counter()
        compiled = await self.queries.compiled(query_id)
        run: Run | None = None
        datasource: str | None = None
        recorded = False  # an entry is attempted once, whatever happens after
        self._in_flight += 1
        try:
            bound = compiled.template.bind(params)  # InvalidParameter (422) names the parameter
            engine = await self.datasources.engine(compiled.datasource_id)
            datasource = engine.target.name
            limits = engine.target.limits
            max_rows = min(compiled.max_rows or limits.max_rows, limits.max_rows)
            timeout_ms = min(compiled.timeout_ms or limits.statement_timeout_ms,
                             limits.statement_timeout_ms)
            async with engine.open(bound, timeout=timeout_ms / 1000, fetch=max_rows + 1,
                                   stream=stream) as rows:  # type: ignore[call-arg]
                run = Run(compiled, engine.target.name, rows.columns, max_rows,
                          limits.max_response_bytes, rows.batches, started=started)
                if stream:
                    # Rows leave before the run ends: its start is audited first (fail-closed).
                    await self.audit.record_run_start(
                        actor=context.actor, query_id=compiled.id, client=context.client,
                        request_id=context.request_id,
                        details={"datasource": compiled.datasource_id, "mode": mode})
                yield run
                if not stream:
                    # All rows are read and nothing is left to fail: record the run before the
                    # engine lets go of its connection, so the answer leaves first.
                    recorded = True
                    await self._record(compiled, run, context, started, "ok", None, mode)
            if not recorded:  # a stream, once its transaction has committed
                recorded = True
                await self._record(compiled, run, context, started, "ok", None, mode)
        except ApplianceError as exc:
            if datasource is not None and not getattr(exc, "datasource", None):
                exc.datasource = datasource  # type: ignore[attr-defined]  # e.g. egress denials
            if not recorded:
                recorded = True
                outcome = "denied" if exc.status in (401, 403) else "failed"
                await self._record(compiled, run, context, started, outcome, exc.code, mode)
            raise
        except BaseException:
            if not recorded:
                recorded = True
                with contextlib.suppress(ApplianceError):
                    await self._record(compiled, run, context, started, "error",
                                       "internal_error", mode)
            raise
        finally:
            self._in_flight -= 1

    async def _record(self, compiled: CompiledQuery, run: Run | None, context: Context,
                      started: float, outcome: str, code: str | None, mode: str) -> None:
        duration = run.duration_ms if run is not None else (time.perf_counter() - started) * 1000
        metrics.observe_query_run(outcome, duration / 1000)
        details: dict[str, Any] = {"datasource": compiled.datasource_id, "mode": mode,
                                   "truncated": bool(run and run.truncated)}
        if code is not None:
            details["error"] = code
        await self.audit.record_run(actor=context.actor, query_id=compiled.id,
                                    duration_ms=duration,
                                    row_count=run.row_count if run is not None else 0,
                                    outcome=outcome, client=context.client,
                                    request_id=context.request_id, details=details,
                                    alone=self._in_flight <= 1)
