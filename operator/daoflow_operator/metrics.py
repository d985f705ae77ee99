"""The operator's Prometheus metrics (docs/metrics.md), served on DAOFLOW_METRICS_PORT.

Labels stay low-cardinality: a namespace, an outcome from a fixed set, a reason (a CamelCase word from
the operator's own set or the runner's, anything else counted as `Other`), a stage, an HTTP code. No
restore, Job or pod name is ever a label: each restore would leave a series behind for ever.

What a finished restore contributes is computed by `outcome()`, a pure function of its object and
final status; the shell calls `Metrics.finished()` once, on the transition to the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import access

OUTCOMES = {"Succeeded": "succeeded", "Failed": "failed", "Cancelled": "cancelled", "Rejected": "rejected",
            "Planned": "planned"}
REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,47}$")
# Restores last seconds to hours: from a second to a day.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


@dataclass(frozen=True)
class Outcome:
    namespace: str
    outcome: str
    reason: str
    total_seconds: float | None
    queued_seconds: float | None  # creation to the runner seen running
    running_seconds: float | None  # the runner seen running to the end
    restored_bytes: int  # the runner's report of a succeeded restore, else 0
    completed_at: float | None  # the end, as a Unix time


def outcome(restore: dict, status: dict) -> Outcome:
    """What a restore that reached its end adds to the metrics. Pure."""
    meta = restore.get("metadata") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    cond = conditions.get("Succeeded") or conditions.get("Ready") or {}
    reason = cond.get("reason") or ""
    created = access.parse_time(meta.get("creationTimestamp"))
    ended = access.parse_time(status.get("completionTime"))
    # The runner was seen running when the fetch step was recorded.
    ran = next((access.parse_time(e.get("time")) for e in status.get("auditTrail") or []
                if e.get("step") == "fetch"), None)

    def span(a, b) -> float | None:
        return max(0.0, (b - a).total_seconds()) if a is not None and b is not None else None

    phase = status.get("phase") or ""
    result = status.get("result") or {}
    restored = result.get("bytes") if phase == "Succeeded" and isinstance(result.get("bytes"), int) else 0
    return Outcome(namespace=meta.get("namespace") or "", outcome=OUTCOMES.get(phase, "other"),
                   reason=reason if REASON.match(reason) else "Other", total_seconds=span(created, ended),
                   queued_seconds=span(created, ran), running_seconds=span(ran, ended),
                   restored_bytes=max(0, restored), completed_at=ended.timestamp() if ended else None)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.restores = Counter("daoflow_restores", "Restores that reached their end.",
                                ["namespace", "outcome", "reason"], registry=r)
        self.duration = Histogram("daoflow_restore_duration_seconds",
                                  "Time of finished restores: queued (creation to the runner running), running "
                                  "(to the end) and total (creation to the end).", ["stage"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.bytes = Counter("daoflow_restore_bytes", "Bytes restored by succeeded restores.", ["namespace"],
                             registry=r)
        self.in_progress = Gauge("daoflow_restores_in_progress", "Restores queued or running (a Job exists).",
                                 registry=r)
        self.stalled = Gauge("daoflow_restores_stalled", "Running restores marked Progressing=False/Stalled.",
                             registry=r)
        self.oldest_start = Gauge("daoflow_restore_oldest_start_timestamp_seconds",
                                  "When the Job of the oldest restore in progress was created (NaN: none).",
                                  registry=r)
        self.oldest_start.set(float("nan"))
        self.last_success = Gauge("daoflow_restore_last_success_timestamp_seconds",
                                  "When the last restore of the namespace succeeded.", ["namespace"], registry=r)
        self.queue_depth = Gauge("daoflow_workqueue_depth", "Restores waiting for a reconcile.", registry=r)
        self.queue_latency = Histogram("daoflow_workqueue_latency_seconds",
                                       "Time a restore waited in the work queue before its reconcile.",
                                       buckets=QUEUE_BUCKETS, registry=r)
        self.queue_work = Histogram("daoflow_workqueue_work_duration_seconds", "Time of one reconcile.",
                                    buckets=QUEUE_BUCKETS, registry=r)
        self.queue_retries = Counter("daoflow_workqueue_retries", "Reconciles that failed and were retried "
                                     "after a backoff.", registry=r)
        self.api_errors = Counter("daoflow_api_errors", "Error answers of the Kubernetes API server, by HTTP code "
                                  "(404 included: a missing object is often expected).", ["code"], registry=r)
        self._running: dict = {}  # key -> (Job start as a Unix time, stalled)

    def finished(self, restore: dict, status: dict) -> None:
        o = outcome(restore, status)
        self.restores.labels(o.namespace, o.outcome, o.reason).inc()
        for stage, seconds in (("total", o.total_seconds), ("queued", o.queued_seconds),
                               ("running", o.running_seconds)):
            if seconds is not None:
                self.duration.labels(stage).observe(seconds)
        if o.outcome == "succeeded":
            self.bytes.labels(o.namespace).inc(o.restored_bytes)
            if o.completed_at is not None:
                self.last_success.labels(o.namespace).set(o.completed_at)

    def observe(self, key: tuple[str, str], status: dict | None) -> None:
        """The restore's latest status (None: gone). One with a Job that has not ended is in progress."""
        status = status or {}
        if status.get("jobRef") and not status.get("completionTime"):
            started = access.parse_time(status.get("startTime"))
            stalled = any(c.get("type") == "Progressing" and c.get("reason") == "Stalled"
                          for c in status.get("conditions") or [])
            self._running[key] = (started.timestamp() if started else float("nan"), stalled)
        else:
            self._running.pop(key, None)
        self.in_progress.set(len(self._running))
        self.stalled.set(sum(1 for _, stalled in self._running.values() if stalled))
        starts = [s for s, _ in self._running.values() if s == s]
        self.oldest_start.set(min(starts) if starts else float("nan"))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)


METRICS = Metrics()
