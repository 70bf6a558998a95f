"""Process metrics in Prometheus form: the counters others feed, and the collectors read at scrape.

Owns the metric names and the process's counters. A leaf module (imports nothing of the appliance),
so any layer may call `observe_query_run`, `observe_request` or `audit_write_failed`. Counting is a
dictionary update on the request path; `prometheus_client` is imported at the first scrape and
writes the exposition. Never carries a parameter value, a result, a secret or a user-supplied path
as a label.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OUTCOMES = ("ok", "failed", "denied", "error")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# HTTP responses by (method, route pattern, status): bounded by the router and HTTP itself.
_requests: dict[tuple[str, str, int], int] = {}
# Query runs by outcome: [count per bucket (the last is +Inf), sum of seconds].
_runs: dict[str, tuple[list[int], list[float]]] = {
    outcome: ([0] * (len(RUN_BUCKETS) + 1), [0.0]) for outcome in OUTCOMES}
_audit_failures = [0]
_audit_verified = [0, 0]  # the last position the background verifier found intact; its failures
# Client connections the listeners closed on a limit, by rule (appliance.http.connection_limits).
LISTENER_DROPS = ("max_connections", "max_connections_per_address", "handshake_timeout",
                  "handshake_failed", "first_byte_timeout", "request_head_timeout")
_listener_drops = dict.fromkeys(LISTENER_DROPS, 0)
_audit_lock = threading.Lock()  # the one counter a non-loop thread may feed (through logging)


def observe_request(method: str, route: str, status: int) -> None:
    """One HTTP response. `route` is the route's pattern (`/api/v1/queries/{id}`), never a path."""
    if method not in METHODS:
        method = "OTHER"  # the method is the client's: never an unbounded label
    key = (method, route, status)
    _requests[key] = _requests.get(key, 0) + 1


def observe_query_run(outcome: str, seconds: float) -> None:
    """One finished query run (whatever its outcome) and how long it took."""
    counts, total = _runs.get(outcome) or _runs["error"]
    seconds = max(0.0, seconds)
    counts[bisect.bisect_left(RUN_BUCKETS, seconds)] += 1
    total[0] += seconds


def listener_dropped(rule: str) -> None:
    """A client connection refused at accept or closed on a time limit; `rule` is a setting's
    name from LISTENER_DROPS (or `handshake_failed`)."""
    _listener_drops[rule] += 1


def audit_write_failed(count: int = 1) -> None:
    with _audit_lock:
        _audit_failures[0] += count


def audit_verified(position: int) -> None:
    """The background verifier found the chain intact through `position`."""
    _audit_verified[0] = position


def audit_verify_failed() -> None:
    """The background verifier found the chain broken."""
    _audit_verified[1] += 1


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

    datasource: str  # its id (its name only with `[metrics] datasource_names = true`)
    kind: str
    size: int | None = None  # connections open (None: the engine does not say)
    idle: int | None = None


@dataclass(frozen=True)
class Sources:
    """What a scrape reads from the running application (callbacks; none may block)."""

    egress: Callable[[], dict[str, list[dict[str, Any]]]] | None = None
    certificate_not_after: Callable[[], float | None] | None = None
    pools: Callable[[], Iterable[PoolSample]] | None = None


class AppCollector:
    """Egress decisions, certificate expiry and pool sizes, read from their owners at scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class _ProcessCollector:
    """The process's own counters, as Prometheus metric families."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        requests = CounterMetricFamily(
            "appliance_http_requests", "HTTP responses by method, route pattern and status.",
            labels=["method", "route", "status"])
        for (method, route, status), count in sorted(_requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        runs = HistogramMetricFamily(
            "appliance_query_run_seconds", "Query runs by outcome (ok, failed, denied, error).",
            labels=["outcome"])
        for outcome, (counts, total) in _runs.items():
            cumulative, buckets = 0, []
            bounds = (*map(floatToGoString, RUN_BUCKETS), "+Inf")
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            runs.add_metric([outcome], buckets, total[0])
        yield runs
        failures = CounterMetricFamily(
            "appliance_audit_write_failures", "Audit entries that could not be written.")
        failures.add_metric([], _audit_failures[0])
        yield failures
        verified = GaugeMetricFamily(
            "appliance_audit_verified_position",
            "The last audit position the background verifier found intact.")
        verified.add_metric([], _audit_verified[0])
        yield verified
        broken = CounterMetricFamily(
            "appliance_audit_verify_failures", "Background verifications that found a break.")
        broken.add_metric([], _audit_verified[1])
        yield broken
        drops = CounterMetricFamily(
            "appliance_listener_connections_dropped",
            "Client connections refused at accept or closed on a time limit, by rule.",
            labels=["rule"])
        for rule, count in _listener_drops.items():
            drops.add_metric([rule], count)
        yield drops


def exposition(sources: Sources | None = None) -> bytes:
    """The text exposition of the process metrics, then the application's (read from
    `sources` now). Imports `prometheus_client` on first use."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector())
    if sources is not None:
        registry.register(AppCollector(sources))
    return bytes(generate_latest(registry))
