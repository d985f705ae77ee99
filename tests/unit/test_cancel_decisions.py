"""Deleting a restore cancels it: the pure decisions (finalizer, cancel, final record, grace period)."""

import json
from datetime import datetime, timedelta, timezone

from daoflow_operator import jobs, status
from daoflow_operator.config import Config
from daoflow_operator.status import Observation, decide

from objects import SHA, allowed, free, pod, restore, run, s3_destination, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
DELETED_AT = "2026-11-27T12:05:00Z"


def deleted(obj: dict) -> dict:
    return {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": DELETED_AT,
                                "finalizers": [status.FINALIZER]}}


def running_restore() -> dict:
    """A real restore whose Job was created and whose runner runs."""
    r = restore()
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    r = {**r, "status": d.status}
    d = decide(r, Observation(job=running_job()), T0 + timedelta(seconds=1))
    assert d.status["phase"] == "Running"
    return {**r, "status": d.status}


def running_job(deleting: bool = False) -> dict:
    meta = {"name": "r1-restore", "uid": "job-uid"}
    if deleting:
        meta["deletionTimestamp"] = DELETED_AT
    return {"metadata": meta, "status": {"active": 1, "ready": 1}}


def ended_pod(reason: str | None, exit_code: int) -> dict:
    report = {"bytes": 0, "files": 0, "sha256": None, "verified": False, "durationSeconds": 9.0}
    if reason:
        report.update(reason=reason, message="stopped by SIGTERM; nothing was committed")
    else:
        report.update(bytes=1234, files=3, sha256=SHA, verified=True)
    return pod(phase="Failed" if exit_code else "Succeeded", terminated={
        "exitCode": exit_code, "startedAt": "2026-11-27T12:00:01Z", "message": json.dumps(report)})


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def test_a_real_restore_needs_the_finalizer_until_it_ends_and_a_dry_run_never():
    r = restore()
    assert status.needs_finalizer(r, {})
    assert not status.needs_finalizer(restore(dry_run=True), {})
    assert not status.needs_finalizer(r, {"completionTime": "2026-11-27T12:00:00Z"})
    assert not status.needs_finalizer(deleted(restore()), {})
    held = {**r, "metadata": {**r["metadata"], "finalizers": ["other", status.FINALIZER]}}
    assert not status.needs_finalizer(held, {}) and status.has_finalizer(held)


def test_a_waiting_restore_that_is_deleted_is_released_and_never_gets_a_job():
    r = deleted(restore())
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert not d.create_job and d.acquire is None and d.review is None
    assert d.status["completionTime"] and d.status["phase"] == "Cancelled"
    assert cond(d.status, "Succeeded")["reason"] == status.CANCELLED
    assert "before its Job was created" in cond(d.status, "Ready")["message"]
    assert [e.reason for e in d.events] == [status.CANCELLED]
    assert d.status["auditTrail"][-1]["step"] == "record"


def test_a_running_restore_that_is_deleted_cancels_its_job_and_waits_for_the_pod():
    r = deleted(running_restore())
    d = decide(r, Observation(job=running_job(), pods=[pod(phase="Running", running=True)]), T0 + timedelta(seconds=5))
    assert d.cancel_job and not d.delete_job and not status.is_final(d.status)
    assert d.release_target is None  # the runner may still write: the target stays held
    assert cond(d.status, "Ready")["reason"] == status.CANCELLING
    assert [e.reason for e in d.events] == [status.CANCELLING]
    assert d.requeue_after

    # The Job is marked for deletion and its pod is in its grace period: nothing new, nothing deleted twice.
    r = {**r, "status": d.status}
    again = decide(r, Observation(job=running_job(deleting=True), pods=[pod(phase="Running", running=True)]),
                   T0 + timedelta(seconds=6))
    assert not again.cancel_job and not status.changed(r["status"], again.status) and again.events == []


def test_a_cancel_whose_runner_rolled_back_is_cancelled():
    r = deleted(running_restore())
    r = {**r, "status": decide(r, Observation(job=running_job(), pods=[]), T0).status}
    ended = ended_pod("Interrupted", 10)
    d = decide(r, Observation(job=running_job(deleting=True), pods=[ended],
                              report=ended["status"]["containerStatuses"][0]["state"]["terminated"]["message"]),
               T0 + timedelta(seconds=9))
    st = d.status
    assert st["phase"] == "Cancelled" and st["completionTime"]
    assert cond(st, "Succeeded")["reason"] == status.CANCELLED
    assert "rolled the target back" in cond(st, "Succeeded")["message"]
    assert st["result"]["reason"] == "Interrupted"
    assert d.release_target == "pvc/data"
    assert [e.reason for e in d.events] == [status.CANCELLED]


def test_a_cancel_that_came_after_the_commit_is_honestly_succeeded():
    r = deleted(running_restore())
    ended = ended_pod(None, 0)
    report = ended["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    d = decide(r, Observation(job=running_job(deleting=True), pods=[ended], report=report), T0 + timedelta(seconds=9))
    assert d.status["phase"] == "Succeeded"
    assert "had already committed" in cond(d.status, "Succeeded")["message"]


def test_a_cancelled_job_gone_without_a_report_says_that_the_outcome_is_not_known():
    r = deleted(running_restore())
    d = decide(r, Observation(job_missing=True), T0 + timedelta(seconds=9))
    assert d.status["phase"] == "Cancelled"
    assert cond(d.status, "Succeeded")["reason"] == status.CANCELLED
    assert "not known" in cond(d.status, "Succeeded")["message"]


def test_the_job_is_over_once_gone_ended_or_its_pod_ended():
    assert status.job_over(None, None)
    assert status.job_over({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, None)
    assert not status.job_over(running_job(deleting=True), None)  # pods not read: not known
    assert not status.job_over(running_job(deleting=True), [pod(phase="Running", running=True)])
    assert status.job_over(running_job(deleting=True), [ended_pod("Interrupted", 10)])
    assert status.job_over(running_job(deleting=True), [])


def test_the_final_record_is_one_flat_json_object_with_a_stable_schema():
    r = deleted(running_restore())
    ended = ended_pod("Interrupted", 10)
    report = ended["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    st = decide(r, Observation(job=running_job(deleting=True), pods=[ended], report=report), T0).status
    record = status.final_record(r, st)
    line = json.dumps(record)
    assert "\n" not in line and json.loads(line) == record
    assert set(record) == {"record", "kind", "namespace", "name", "uid", "backupRun", "dryRun", "phase", "reason",
                           "message", "requestedBy", "startTime", "completionTime", "deleted", "cancelRequestedBy", "verified", "bytes",
                           "files", "sha256", "planHash", "target", "job"}
    assert (record["kind"], record["name"], record["uid"]) == ("BackupRestore", "r1", "restore-uid")
    assert (record["phase"], record["reason"], record["deleted"]) == ("Cancelled", status.CANCELLED, True)
    assert record["requestedBy"] == "alice" and record["job"] == "r1-restore"
    assert record["target"]["persistentVolumeClaim"]["claimName"] == "data" and record["planHash"]


def test_the_pod_has_a_grace_period_for_the_rollback_and_it_is_configurable(monkeypatch):
    r = running_restore()
    job = jobs.build_job(r, r["status"]["plan"], s3_destination(), Config())
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    monkeypatch.setenv("DAOFLOW_RUNNER_TERMINATION_GRACE_SECONDS", "600")
    job = jobs.build_job(r, r["status"]["plan"], s3_destination(), Config.from_env())
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600


def test_a_deleted_restore_whose_job_was_left_unrecorded_follows_and_cancels_that_job():
    r = deleted(restore())
    d = decide(r, Observation(job=running_job(), pods=[pod(phase="Running", running=True)]), T0)
    assert d.status["jobRef"] == {"name": "r1-restore"} and d.cancel_job and not d.create_job
    assert not status.is_final(d.status)
