"""What a request's metrics cost, per request: the appliance's own counting (`appliance.metrics`:
the response counter, the duration histogram and the in-flight gauge, as `middleware.front` calls
them), the counter alone (what the middleware did before the histogram and the gauge), and the
same three through `prometheus_client` metric objects. Ratios against the appliance's, measured
in the same run, interleaved rounds.

    PYTHONPATH=. .venv/bin/python bench/metrics.py [--rounds 7] [--calls 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from appliance import metrics

ROUTE = "/api/v1/queries/{id}/run"


def ours() -> None:
    metrics.request_started()
    metrics.observe_request("POST", ROUTE, 200, 0.0123)
    metrics.request_ended()


def counter_only() -> None:
    metrics.observe_request("POST", ROUTE, 200)


def with_prometheus_client() -> Callable[[], None]:
    registry = CollectorRegistry()
    requests = Counter("bench_http_requests", "x", ["method", "route", "status"],
                       registry=registry)
    durations = Histogram("bench_http_request_duration_seconds", "x", ["route", "status_class"],
                          buckets=metrics.REQUEST_BUCKETS, registry=registry)
    in_flight = Gauge("bench_http_requests_in_flight", "x", registry=registry)

    def call() -> None:
        in_flight.inc()
        requests.labels("POST", ROUTE, "200").inc()
        durations.labels(ROUTE, "2xx").observe(0.0123)
        in_flight.dec()

    return call


def per_call(fn: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    variants = {"appliance (counter+histogram+gauge)": ours, "counter only (before)": counter_only,
                "prometheus_client (same three)": with_prometheus_client()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(per_call(fn, args.calls))
    base = statistics.median(times["appliance (counter+histogram+gauge)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40} {median:6.2f} us/request  ratio {median / base:5.2f}")


if __name__ == "__main__":
    main()
