"""Process metrics, rendered in the Prometheus text format at ``GET /metrics``.

Plain attributes, not a metrics library: the hot path pays one integer add.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
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

    def render(self, gauges: dict[str, float]) -> str:
        lines = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP canvashub_{name} {help}")
            lines.append(f"# TYPE canvashub_{name} {kind}")
            for labels, value in samples:
                lines.append(f"canvashub_{name}{labels} {value}")

        for name, value in gauges.items():
            metric(name, "gauge", name.replace("_", " "), [("", value)])
        metric("frames_received_total", "counter", "binary frames received from clients", [("", self.frames_received)])
        metric("bytes_received_total", "counter", "bytes received in frames", [("", self.bytes_received)])
        metric(
            "frame_handling_max_seconds",
            "gauge",
            "longest time one inbound frame held the event loop",
            [("", self.frame_handling_max_seconds)],
        )
        metric("connections_opened_total", "counter", "WebSocket connections accepted", [("", self.connections_opened)])
        metric(
            "closes_total",
            "counter",
            "connections closed by the server, by close code",
            [(f'{{code="{code}"}}', n) for code, n in sorted(self.closes_by_code.items())],
        )
        metric(
            "slow_client_disconnects_total",
            "counter",
            "clients dropped because their send queue filled",
            [("", self.slow_client_disconnects)],
        )
        for attr, help in (
            ("batches_committed", "group-commit batches appended to the update log"),
            ("updates_committed", "updates made durable"),
            ("bytes_committed", "update bytes made durable"),
            ("commit_seconds", "time spent in successful append round trips"),
            ("append_failures", "failed append attempts (each is retried)"),
            ("compactions", "successful compactions"),
            ("compaction_conflicts", "compaction attempts that lost the version race and retried"),
            ("compaction_failures", "compactions that gave up (rows stay in the log)"),
        ):
            metric(f"{attr}_total", "counter", help, [("", getattr(self, attr))])
        metric("webhook_events_total", "counter", "webhook events written to the outbox", [("", self.webhook_events)])
        metric(
            "webhook_attempts_total",
            "counter",
            "webhook delivery attempts by outcome (delivered, retry, dead; lease_lost: recorded too late)",
            [(f'{{outcome="{outcome}"}}', n) for outcome, n in sorted(self.webhook_attempts.items())],
        )
        return "\n".join(lines) + "\n"
