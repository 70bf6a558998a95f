"""Process metrics in Prometheus form: the counters others feed, and the collectors read at scrape.

Owns the metric names and the process's counters (docs/metrics.md lists every family and its
labels). A leaf module (imports nothing of the appliance), so any layer may call `observe_request`,
`observe_query_run`, `login_failed` or `audit_write_failed`. `prometheus_client` writes the
exposition and supplies the process collector (CPU, memory, open fds); it is imported at the first
scrape. What a request or a run counts is a dictionary update here instead of a
`prometheus_client` metric: measured with `bench/metrics.py` (a loaded 2-core machine), a
request's counter, duration histogram and in-flight gauge cost 9.5 us through `prometheus_client`
(`labels()` takes a lock and builds a key per call) against 2.1 us here (4.6x), that is 3 % of a
query run's 310 us of server CPU against 0.7 %.
Never carries a parameter value, a result, a secret or a user-supplied path as a label.
"""

from __future__ import annotations

import bisect
import functools
import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OUTCOMES = ("ok", "failed", "denied", "error")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
LOGIN_FAILURES = ("bad_credentials", "bad_code")

# HTTP responses by (method, route pattern, status): bounded by the router and HTTP itself.
_requests: dict[tuple[str, str, int], int] = {}
# Their durations by (route pattern, status class): [count per bucket (the last is +Inf), sum].
_request_seconds: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
_in_flight = [0]
# Query runs by outcome: [count per bucket (the last is +Inf), sum of seconds].
_runs: dict[str, tuple[list[int], list[float]]] = {
    outcome: ([0] * (len(RUN_BUCKETS) + 1), [0.0]) for outcome in OUTCOMES}
# Runs that did not succeed, by (datasource id, error code); rows sent back by datasource id.
# Bounded by the datasources and the error codes (constants in the code).
_query_errors: dict[tuple[str, str], int] = {}
_query_rows: dict[str, int] = {}
_login_failures = dict.fromkeys(LOGIN_FAILURES, 0)
_login_throttled = [0]
_audit_failures = [0]
_audit_verified = [0, 0]  # the last position the background verifier found intact; its failures
# Client connections the listeners closed on a limit, by rule (appliance.http.connection_limits).
LISTENER_DROPS = ("max_connections", "max_connections_per_address", "handshake_timeout",
                  "handshake_failed", "first_byte_timeout", "request_head_timeout",
                  "plain_http")
_listener_drops = dict.fromkeys(LISTENER_DROPS, 0)
_audit_lock = threading.Lock()  # the one counter a non-loop thread may feed (through logging)
# Audit sinks (`[audit] sinks`, by their settings name): [lines written, lines failed]. Fed from
# the store's writer thread, under their own lock.
_audit_sinks: dict[str, list[int]] = {}
_sinks_lock = threading.Lock()


def request_started() -> None:
    """A request entered the middleware (`request_ended` when its response is done)."""
    _in_flight[0] += 1


def request_ended() -> None:
    _in_flight[0] -= 1


def observe_request(method: str, route: str, status: int, seconds: float | None = None) -> None:
    """One HTTP response, and how long it took. `route` is the route's pattern
    (`/api/v1/queries/{id}`), never a path."""
    if method not in METHODS:
        method = "OTHER"  # the method is the client's: never an unbounded label
    key = (method, route, status)
    _requests[key] = _requests.get(key, 0) + 1
    if seconds is not None:
        by_class = (route, STATUS_CLASSES[min(max(status // 100, 1), 5) - 1])
        found = _request_seconds.get(by_class)
        if found is None:
            found = _request_seconds[by_class] = ([0] * (len(REQUEST_BUCKETS) + 1), [0.0])
        seconds = max(0.0, seconds)
        found[0][bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1
        found[1][0] += seconds


def observe_query_run(outcome: str, seconds: float) -> None:
    """One finished query run (whatever its outcome) and how long it took."""
    counts, total = _runs.get(outcome) or _runs["error"]
    seconds = max(0.0, seconds)
    counts[bisect.bisect_left(RUN_BUCKETS, seconds)] += 1
    total[0] += seconds


def observe_query_result(datasource_id: str, *, rows: int, error: str | None) -> None:
    """A run's rows sent back, and its error code when it did not succeed (`datasource_timeout`,
    `invalid_parameter`, …: the code the API answered, a constant of the code base)."""
    if rows:
        _query_rows[datasource_id] = _query_rows.get(datasource_id, 0) + rows
    if error is not None:
        failed = (datasource_id, error)
        _query_errors[failed] = _query_errors.get(failed, 0) + 1


def login_failed(reason: str) -> None:
    """A refused login: `bad_credentials` (unknown user or wrong password) or `bad_code`."""
    _login_failures[reason if reason in _login_failures else "bad_credentials"] += 1


def login_throttled() -> None:
    """A login refused by the throttle, before its password was checked."""
    _login_throttled[0] += 1


def listener_dropped(rule: str) -> None:
    """A client connection refused at accept or closed on a time limit; `rule` is a setting's
    name from LISTENER_DROPS (or `handshake_failed`)."""
    _listener_drops[rule] += 1


def audit_write_failed(count: int = 1) -> None:
    with _audit_lock:
        _audit_failures[0] += count


def audit_sink_written(sink: str, count: int) -> None:
    with _sinks_lock:
        _audit_sinks.setdefault(sink, [0, 0])[0] += count


def audit_sink_failed(sink: str, count: int) -> None:
    with _sinks_lock:
        _audit_sinks.setdefault(sink, [0, 0])[1] += count
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
    waiting: int | None = None  # runs waiting for a connection now
    waits: int | None = None  # runs that had to wait, since the pool opened


@dataclass(frozen=True)
class TLSTimes:
    """The certificate's schedule at scrape time (Unix times; None: not known)."""

    not_after: float | None = None
    next_renewal: float | None = None
    acme_last_success: float | None = None


@dataclass(frozen=True)
class Sources:
    """What a scrape reads from the running application (callbacks; none may block)."""

    egress: Callable[[], dict[str, list[dict[str, Any]]]] | None = None
    certificate_not_after: Callable[[], float | None] | None = None
    pools: Callable[[], Iterable[PoolSample]] | None = None
    tls: Callable[[], TLSTimes] | None = None
    # Datasource ids to the label they get (their names, with `[metrics] datasource_names`);
    # None, or an id it does not hold: labelled by id.
    datasource_labels: Callable[[], dict[str, str]] | None = None


@functools.cache
def build_labels(version: str, commit: str) -> tuple[str, str, str]:
    """`appliance_build_info`'s labels: version, commit ("unknown" when not known), python."""
    return version, commit, platform.python_version()


class AppCollector:
    """Egress decisions, certificate times and pool sizes, read from their owners at scrape."""

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
        if self.sources.tls is not None:
            times = self.sources.tls()
            if times.next_renewal is not None:
                yield GaugeMetricFamily(
                    "appliance_tls_next_renewal_seconds",
                    "When the certificate is next renewed (Unix time).", value=times.next_renewal)
            if times.acme_last_success is not None:
                yield GaugeMetricFamily(
                    "appliance_acme_last_success_seconds",
                    "The last successful ACME issuance (Unix time).",
                    value=times.acme_last_success)
        if self.sources.pools is not None:
            pools = GaugeMetricFamily("appliance_datasource_pools",
                                      "Open datasource connection pools by kind.", labels=["kind"])
            sizes = GaugeMetricFamily("appliance_datasource_pool_connections",
                                      "Connections in each datasource's pool, by state.",
                                      labels=["datasource", "kind", "state"])
            waiting = GaugeMetricFamily("appliance_datasource_pool_waiting",
                                        "Runs waiting for a pool connection now.",
                                        labels=["datasource", "kind"])
            waits = CounterMetricFamily("appliance_datasource_pool_waits",
                                        "Runs that had to wait for a pool connection.",
                                        labels=["datasource", "kind"])
            by_kind: dict[str, int] = {}
            for sample in self.sources.pools():
                by_kind[sample.kind] = by_kind.get(sample.kind, 0) + 1
                labels = [sample.datasource, sample.kind]
                if sample.size is not None:
                    sizes.add_metric([*labels, "open"], sample.size)
                if sample.idle is not None:
                    sizes.add_metric([*labels, "idle"], sample.idle)
                if sample.waiting is not None:
                    waiting.add_metric(labels, sample.waiting)
                if sample.waits is not None:
                    waits.add_metric(labels, sample.waits)
            for kind, count in sorted(by_kind.items()):
                pools.add_metric([kind], count)
            yield pools
            yield sizes
            yield waiting
            yield waits
        names = self.sources.datasource_labels() if self.sources.datasource_labels else {}
        # Two ids may share a label (a datasource deleted and made again by the same name):
        # summed, since one exposition may not repeat a label set.
        by_code: dict[tuple[str, str], int] = {}
        for (ds_id, code), count in _query_errors.items():
            key = (names.get(ds_id, ds_id), code)
            by_code[key] = by_code.get(key, 0) + count
        errors = CounterMetricFamily(
            "appliance_query_errors", "Query runs that did not succeed, by datasource and error "
            "code (datasource_timeout: a time limit).", labels=["datasource", "code"])
        for (label, code), count in sorted(by_code.items()):
            errors.add_metric([label, code], count)
        yield errors
        by_label: dict[str, int] = {}
        for ds_id, count in _query_rows.items():
            by_label[names.get(ds_id, ds_id)] = by_label.get(names.get(ds_id, ds_id), 0) + count
        rows = CounterMetricFamily("appliance_query_rows",
                                   "Result rows sent back, by datasource.", labels=["datasource"])
        for label, count in sorted(by_label.items()):
            rows.add_metric([label], count)
        yield rows


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative (le, count) pairs, +Inf last."""
    from prometheus_client.utils import floatToGoString

    cumulative, out = 0, list[tuple[str, float]]()
    for bound, count in zip((*map(floatToGoString, bounds), "+Inf"), counts, strict=True):
        cumulative += count
        out.append((bound, cumulative))
    return out


class _ProcessCollector:
    """The process's own counters, as Prometheus metric families."""

    def __init__(self, build: tuple[str, str, str] | None = None) -> None:
        self.build = build

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        if self.build is not None:
            info = GaugeMetricFamily("appliance_build_info",
                                     "The running build: version, commit, Python (always 1).",
                                     labels=["version", "commit", "python"])
            info.add_metric(list(self.build), 1)
            yield info
        requests = CounterMetricFamily(
            "appliance_http_requests", "HTTP responses by method, route pattern and status.",
            labels=["method", "route", "status"])
        for (method, route, status), count in sorted(_requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "appliance_http_request_duration_seconds",
            "HTTP request durations by route pattern and status class (2xx, 4xx, ...).",
            labels=["route", "status_class"])
        for (route, status_class), (counts, total) in sorted(_request_seconds.items()):
            durations.add_metric([route, status_class], _buckets(REQUEST_BUCKETS, counts),
                                 total[0])
        yield durations
        yield GaugeMetricFamily("appliance_http_requests_in_flight",
                                "HTTP requests being handled now.", value=_in_flight[0])
        runs = HistogramMetricFamily(
            "appliance_query_run_seconds", "Query runs by outcome (ok, failed, denied, error).",
            labels=["outcome"])
        for outcome, (counts, total) in _runs.items():
            runs.add_metric([outcome], _buckets(RUN_BUCKETS, counts), total[0])
        yield runs
        logins = CounterMetricFamily("appliance_login_failures",
                                     "Refused logins by reason (bad_credentials, bad_code).",
                                     labels=["reason"])
        for reason, count in _login_failures.items():
            logins.add_metric([reason], count)
        yield logins
        yield CounterMetricFamily("appliance_login_throttled",
                                  "Logins refused by the login throttle.",
                                  value=_login_throttled[0])
        failures = CounterMetricFamily(
            "appliance_audit_write_failures", "Audit entries that could not be written.")
        failures.add_metric([], _audit_failures[0])
        yield failures
        sink_lines = CounterMetricFamily(
            "appliance_audit_sink_lines", "Audit lines (entries, anchors) written to each sink.",
            labels=["sink"])
        sink_failures = CounterMetricFamily(
            "appliance_audit_sink_failures", "Audit lines a sink did not take.", labels=["sink"])
        with _sinks_lock:
            sinks = sorted((name, list(counts)) for name, counts in _audit_sinks.items())
        for name, (written, failed) in sinks:
            sink_lines.add_metric([name], written)
            sink_failures.add_metric([name], failed)
        yield sink_lines
        yield sink_failures
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


@functools.cache
def _os_process() -> Any:
    """prometheus_client's collector of the process's CPU, memory, open and maximum fds and
    start time (`process_*`; read from /proc, so Linux only), made once."""
    from prometheus_client import ProcessCollector

    return ProcessCollector(registry=None)


def exposition(sources: Sources | None = None,
               build: tuple[str, str, str] | None = None) -> bytes:
    """The text exposition of the process metrics, then the application's (read from
    `sources` now); `build`: `build_labels(...)`. Imports `prometheus_client` on first use."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector(build))
    registry.register(_os_process())
    if sources is not None:
        registry.register(AppCollector(sources))
    return bytes(generate_latest(registry))
