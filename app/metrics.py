"""Prometheus metrics. Job metrics are kept in Redis, so every API replica reports the same
numbers for work done by any worker; HTTP metrics are per API process.

Exported:
- nvc_jobs_active{state}                      gauge: jobs queued / running now
- nvc_jobs_total{kind,state}                  counter: jobs that entered each state
- nvc_job_duration_seconds{kind,phase}        histogram: phase = queue | codec | verify | total
- nvc_bytes_in_total{kind}, nvc_bytes_out_total{kind}   counters: uploaded / produced bytes
- nvc_queue_depth{queue}                      gauge: messages waiting in each Celery queue
- nvc_http_requests_total{method,route,status}, nvc_http_request_duration_seconds{method,route}
"""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

from service.jobs import ACTIVE_STATES, DURATION_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpMetrics:
    """Per-process request counters, recorded by `MetricsMiddleware`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nvc_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "nvc_http_request_duration_seconds", "Time to answer HTTP requests", ["method", "route"],
            registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )


class MetricsMiddleware:
    """Counts requests by route template (not raw path: job ids would explode cardinality)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


class _JobCollector:
    def __init__(self, stats: dict[str, str], hist: dict[str, str], depths: dict[str, int]):
        self.stats, self.hist, self.depths = stats, hist, depths

    def collect(self):
        active = GaugeMetricFamily("nvc_jobs_active", "Jobs queued or running now", labels=["state"])
        for state in ACTIVE_STATES:
            active.add_metric([state], max(0, int(self.stats.get(f"current:{state}", 0))))
        yield active

        total = CounterMetricFamily("nvc_jobs", "Jobs that entered each state", labels=["kind", "state"])
        for field, value in sorted(self.stats.items()):
            if field.startswith("total:"):
                _, kind, state = field.split(":", 2)
                total.add_metric([kind, state], int(value))
        yield total

        for direction in ("in", "out"):
            family = CounterMetricFamily(
                f"nvc_bytes_{direction}", f"Bytes {'uploaded' if direction == 'in' else 'produced'} by jobs",
                labels=["kind"],
            )
            for field, value in sorted(self.stats.items()):
                if field.startswith(f"bytes_{direction}:"):
                    family.add_metric([field.split(":", 1)[1]], int(value))
            yield family

        depth = GaugeMetricFamily("nvc_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, count in sorted(self.depths.items()):
            depth.add_metric([queue], count)
        yield depth

        series: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for field, value in self.hist.items():
            name, labels, rest = field.split("|", 2)
            series[(name, labels)][rest] = float(value)
        families: dict[str, HistogramMetricFamily] = {}
        for (name, labels), values in sorted(series.items()):
            kind, phase = labels.split(",", 1)
            family = families.setdefault(
                name, HistogramMetricFamily(f"nvc_{name}_seconds", f"Job {name} by phase", labels=["kind", "phase"])
            )
            buckets = [(str(float(b)), values.get(f"le|{b}", 0.0)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", values.get("le|+Inf", 0.0)))
            family.add_metric([kind, phase], buckets, values.get("sum", 0.0))
        yield from families.values()


def render(stats: dict[str, str], hist: dict[str, str], depths: dict[str, int], http: HttpMetrics) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JobCollector(stats, hist, depths))
    return generate_latest(registry) + generate_latest(http.registry)
