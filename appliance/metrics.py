"""Process metrics in Prometheus form: the counters others feed, and the collectors read at scrape.

Owns the metric names and the one process registry. A leaf module (imports nothing of the
appliance), so any layer may call `observe_query_run`, `observe_request` or `audit_write_failed`.
Never carries a parameter value, a result, a secret or a user-supplied path as a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=False)

HTTP_REQUESTS = Counter(
    "appliance_http_requests", "HTTP responses by method, route pattern and status.",
    ["method", "route", "status"], registry=REGISTRY)
QUERY_RUNS = Histogram(
    "appliance_query_run_seconds", "Query runs by outcome (ok, failed, denied, error).",
    ["outcome"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
AUDIT_WRITE_FAILURES = Counter(
    "appliance_audit_write_failures", "Audit entries that could not be written.",
    registry=REGISTRY)

OUTCOMES = ("ok", "failed", "denied", "error")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Labelled children, looked up once: the label sets are bounded (methods and route patterns of
# the router, statuses, the four outcomes).
_request_children: dict[tuple[str, str, int], Any] = {}
_run_children = {outcome: QUERY_RUNS.labels(outcome) for outcome in OUTCOMES}


def observe_request(method: str, route: str, status: int) -> None:
    """One HTTP response. `route` is the route's pattern (`/api/v1/queries/{id}`), never a path."""
    if method not in METHODS:
        method = "OTHER"  # the method is the client's: never an unbounded label
    key = (method, route, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = HTTP_REQUESTS.labels(method, route, str(status))
    child.inc()


def observe_query_run(outcome: str, seconds: float) -> None:
    """One finished query run (whatever its outcome) and how long it took."""
    _run_children.get(outcome, _run_children["error"]).observe(max(0.0, seconds))


def audit_write_failed(count: int = 1) -> None:
    AUDIT_WRITE_FAILURES.inc(count)


class AuditFailureCounter(logging.Handler):
    """Counts the audit log's own error records ('audit write failed', 'audit group commit
    failed'), so the audit module needs no knowledge of metrics."""

    MESSAGES = frozenset({"audit write failed", "audit group commit failed"})

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and record.getMessage() in self.MESSAGES:
            audit_write_failed(int(getattr(record, "entries", 1) or 1))


_audit_handler = AuditFailureCounter()


def install_audit_counter() -> None:
    """Attach the counter to the `appliance.audit` logger (once per process)."""
    logger = logging.getLogger("appliance.audit")
    if _audit_handler not in logger.handlers:
        logger.addHandler(_audit_handler)


@dataclass(frozen=True)
class PoolSample:
    """One datasource's connection pool at scrape time."""

    datasource: str
    kind: str
    size: int | None = None  # connections open (None: the engine does not say)
    idle: int | None = None


@dataclass(frozen=True)
class Sources:
    """What a scrape reads from the running application (callbacks; none may block)."""

    egress: Callable[[], dict[str, list[dict[str, Any]]]] | None = None
    certificate_not_after: Callable[[], float | None] | None = None
    pools: Callable[[], Iterable[PoolSample]] | None = None


class AppCollector(Collector):
    """Egress decisions, certificate expiry and pool sizes, read from their owners at scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        if self.sources.egress is not None:
            snapshot = self.sources.egress()
            decisions = CounterMetricFamily(
                "appliance_egress_decisions", "Egress decisions by purpose, result and rule.",
                labels=["purpose", "allowed", "rule"])
            for item in snapshot.get("decisions", []):
                decisions.add_metric([item["purpose"], str(bool(item["allowed"])).lower(),
                                      item["rule"]], item["count"])
            yield decisions
            connections = CounterMetricFamily(
                "appliance_egress_connections", "Outbound connections by purpose and outcome.",
                labels=["purpose", "outcome"])
            for item in snapshot.get("connections", []):
                connections.add_metric([item["purpose"], item["outcome"]], item["count"])
            yield connections
        if self.sources.certificate_not_after is not None:
            not_after = self.sources.certificate_not_after()
            if not_after is not None:
                yield GaugeMetricFamily(
                    "appliance_tls_certificate_not_after_seconds",
                    "Expiry of the served certificate (Unix time).", value=not_after)
        if self.sources.pools is not None:
            pools = GaugeMetricFamily("appliance_datasource_pools",
                                      "Open datasource connection pools by kind.", labels=["kind"])
            sizes = GaugeMetricFamily("appliance_datasource_pool_connections",
                                      "Connections in each datasource's pool, by state.",
                                      labels=["datasource", "kind", "state"])
            by_kind: dict[str, int] = {}
            for sample in self.sources.pools():
                by_kind[sample.kind] = by_kind.get(sample.kind, 0) + 1
                if sample.size is not None:
                    sizes.add_metric([sample.datasource, sample.kind, "open"], sample.size)
                if sample.idle is not None:
                    sizes.add_metric([sample.datasource, sample.kind, "idle"], sample.idle)
            for kind, count in sorted(by_kind.items()):
                pools.add_metric([kind], count)
            yield pools
            yield sizes


def exposition(app_registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition of the process metrics, then the application's."""
    out = generate_latest(REGISTRY)
    if app_registry is not None:
        out += generate_latest(app_registry)
    return out


def app_registry(sources: Sources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(sources))
    return registry
