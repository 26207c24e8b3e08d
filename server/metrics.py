"""Process metrics, rendered by prometheus-client in the Prometheus text format at ``GET /metrics``.

Counters on the hot path stay plain attributes (one integer add per frame); a collector reads them
when ``/metrics`` is scraped. Latencies are prometheus-client histograms (about 1 µs an
observation): durable-ack latency, commit time, frame handling time, HTTP request duration by
route, method and status, and labelled counters for hook calls and job state changes. Each
``Metrics`` has its own registry, so several servers in one process (tests) never share samples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from well under a millisecond (a frame, a local commit) to the seconds of an outage.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SLOW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

COUNTERS = (
    ("frames_received", "binary frames received from clients"),
    ("bytes_received", "bytes received in frames"),
    ("connections_opened", "WebSocket connections accepted"),
    ("slow_client_disconnects", "clients dropped because their send queue filled or stalled"),
    ("batches_committed", "group-commit batches appended to the update log"),
    ("updates_committed", "updates made durable"),
    ("bytes_committed", "update bytes made durable"),
    ("commit_seconds", "time spent in successful append round trips"),
    ("append_failures", "failed append attempts (each is retried)"),
    ("compactions", "successful compactions"),
    ("compaction_conflicts", "compaction attempts that lost the version race and retried"),
    ("compaction_failures", "compactions that gave up (rows stay in the log)"),
    ("webhook_events", "webhook events written to the outbox"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.frames_received = 0
        self.bytes_received = 0
        self.frame_handling_max_seconds = 0.0
        self.connections_opened = 0
        self.closes_by_code: Counter[int] = Counter()
        self.slow_client_disconnects = 0
        self.batches_committed = 0
        self.updates_committed = 0
        self.bytes_committed = 0
        self.commit_seconds = 0.0
        self.append_failures = 0
        self.compactions = 0
        self.compaction_conflicts = 0
        self.compaction_failures = 0
        self.webhook_events = 0  # events written to the outbox by this process (one per event, not per endpoint)
        self.webhook_attempts: Counter[str] = Counter()  # by outcome: delivered, retry, dead, lease_lost
        self.gauges: Callable[[], dict[str, float]] = dict  # set by the composition root: hub stats, pub/sub
        self.durable_ack = Histogram(
            "canvashub_durable_ack_seconds",
            "from a change's arrival to its commit in the store (what a 'saved' acknowledgement waited)",
            buckets=SLOW_BUCKETS,
            registry=self.registry,
        )
        self.commit = Histogram(
            "canvashub_commit_duration_seconds",
            "one group-commit append round trip (successful attempts)",
            buckets=SLOW_BUCKETS,
            registry=self.registry,
        )
        self.frame_handling = Histogram(
            "canvashub_frame_handling_seconds",
            "CPU time one inbound frame held the event loop (parse, apply, fan-out; the loop thread's own time)",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Histogram(
            "canvashub_http_request_duration_seconds",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            buckets=SLOW_BUCKETS,
            registry=self.registry,
        )
        self.hook_calls = PromCounter(
            "canvashub_hook_calls",
            "extension hook calls by hook and outcome (ok, error, timeout, refused, dropped)",
            ["hook", "outcome"],
            registry=self.registry,
        )
        self.job_transitions = PromCounter(
            "canvashub_job_transitions",
            "generation jobs entering a state, as seen by this process",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(_Attributes(self))

    def frame_handled(self, seconds: float) -> None:
        self.frame_handling.observe(seconds)
        if seconds > self.frame_handling_max_seconds:
            self.frame_handling_max_seconds = seconds

    def hook_outcome(self, hook: str, outcome: str) -> None:
        self.hook_calls.labels(hook, outcome).inc()

    def job_state(self, status: str) -> None:
        self.job_transitions.labels(status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Attributes(Collector):
    """The plain-attribute counters and the gauges, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        for attr, help in COUNTERS:
            yield CounterMetricFamily(f"canvashub_{attr}", help, value=getattr(m, attr))
        closes = CounterMetricFamily(
            "canvashub_closes", "connections closed by the server, by close code", labels=["code"]
        )
        for code, n in sorted(m.closes_by_code.items()):
            closes.add_metric([str(code)], n)
        yield closes
        attempts = CounterMetricFamily(
            "canvashub_webhook_attempts",
            "webhook delivery attempts by outcome (delivered, retry, dead; lease_lost: recorded too late)",
            labels=["outcome"],
        )
        for outcome, n in sorted(m.webhook_attempts.items()):
            attempts.add_metric([outcome], n)
        yield attempts
        yield GaugeMetricFamily(
            "canvashub_frame_handling_max_seconds",
            "longest CPU time one inbound frame held the event loop",
            value=m.frame_handling_max_seconds,
        )
        for name, value in m.gauges().items():
            yield GaugeMetricFamily(f"canvashub_{name}", name.replace("_", " "), value=value)
