"""What a finished restore adds to the metrics: outcome, reason, durations by stage, bytes; low-cardinality labels."""

from prometheus_client import generate_latest

from daoflow_operator import metrics


def finished(phase: str, reason: str, ran: bool = True, bytes_: int | None = 4096, namespace: str = "shop") -> tuple:
    restore = {"metadata": {"name": "restore-x7", "namespace": namespace, "uid": "u1",
                            "creationTimestamp": "2026-11-27T12:00:00Z"}}
    trail = [{"time": "2026-11-27T12:00:01Z", "step": "queue", "outcome": "ok", "message": "Job created"}]
    if ran:
        trail.append({"time": "2026-11-27T12:00:10Z", "step": "fetch", "outcome": "ok", "message": "started"})
    status = {"phase": phase, "completionTime": "2026-11-27T12:01:10Z", "auditTrail": trail,
              "conditions": [{"type": "Succeeded", "status": "True" if phase == "Succeeded" else "False",
                              "reason": reason}],
              "result": {"bytes": bytes_}}
    return restore, status


def test_a_succeeded_restore_has_its_stages_and_bytes():
    o = metrics.outcome(*finished("Succeeded", "RestoreSucceeded"))
    assert (o.namespace, o.outcome, o.reason) == ("shop", "succeeded", "RestoreSucceeded")
    assert (o.total_seconds, o.queued_seconds, o.running_seconds) == (70, 10, 60)
    assert o.restored_bytes == 4096 and o.completed_at == 1795780870.0


def test_a_restore_whose_runner_never_ran_has_only_a_total():
    o = metrics.outcome(*finished("Rejected", "TargetNotAuthorized", ran=False))
    assert (o.outcome, o.total_seconds, o.queued_seconds, o.running_seconds) == ("rejected", 70, None, None)
    assert o.restored_bytes == 0


def test_a_failed_restore_counts_no_bytes_and_an_odd_reason_is_other():
    o = metrics.outcome(*finished("Failed", "not a reason: /etc/passwd"))
    assert (o.outcome, o.reason, o.restored_bytes) == ("failed", "Other", 0)
    assert metrics.outcome(*finished("Cancelled", "Cancelled")).outcome == "cancelled"


def test_the_registry_counts_each_finished_restore_once_and_never_names_it():
    m = metrics.Metrics()
    m.finished(*finished("Succeeded", "RestoreSucceeded"))
    m.finished(*finished("Succeeded", "RestoreSucceeded"))
    m.finished(*finished("Cancelled", "Cancelled"))
    m.finished(*finished("Rejected", "WaitDeadlineExceeded", ran=False))
    get = m.registry.get_sample_value
    assert get("daoflow_restores_total", {"namespace": "shop", "outcome": "succeeded",
                                          "reason": "RestoreSucceeded"}) == 2
    assert get("daoflow_restores_total", {"namespace": "shop", "outcome": "cancelled", "reason": "Cancelled"}) == 1
    assert get("daoflow_restore_duration_seconds_count", {"stage": "total"}) == 4
    assert get("daoflow_restore_duration_seconds_count", {"stage": "running"}) == 3
    assert get("daoflow_restore_bytes_total", {"namespace": "shop"}) == 8192
    assert get("daoflow_restore_last_success_timestamp_seconds", {"namespace": "shop"}) == 1795780870.0
    running = {"jobRef": {"name": "a-restore"}, "startTime": "2026-11-27T12:00:00Z"}
    stalled = {**running, "startTime": "2026-11-27T11:00:00Z",
               "conditions": [{"type": "Progressing", "status": "False", "reason": "Stalled"}]}
    m.observe(("shop", "a"), running)
    m.observe(("shop", "b"), stalled)
    assert (get("daoflow_restores_in_progress"), get("daoflow_restores_stalled")) == (2, 1)
    assert get("daoflow_restore_oldest_start_timestamp_seconds") == 1795777200.0
    m.observe(("shop", "b"), {**stalled, "completionTime": "2026-11-27T12:01:00Z"})
    m.observe(("shop", "a"), None)
    assert (get("daoflow_restores_in_progress"), get("daoflow_restores_stalled")) == (0, 0)
    oldest = get("daoflow_restore_oldest_start_timestamp_seconds")
    assert oldest != oldest  # NaN: none in progress
    assert "restore-x7" not in generate_latest(m.registry).decode()
