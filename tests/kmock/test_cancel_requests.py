"""Deleting a restore cancels it: the requests, in order, of the finalizer, the cancel and the final record."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from daoflow_operator import handlers, jobs, status as status_
from kmock_world import JOBS, RESTORES, REVIEW, declare, operator_for, restore
from test_restore_pod import LEASE, TAKE_LEASE, queued_status, requests

BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"
RESTORE = ("GET", f"{BASE}/backuprestores/r1")
FINALIZE = ("PATCH", f"{BASE}/backuprestores/r1")  # the finalizer, added or removed
JOB = ("GET", "/apis/batch/v1/namespaces/ns/jobs/r1-restore")
LIST_PODS = ("GET", "/api/v1/namespaces/ns/pods")
PATCH = ("PATCH", f"{BASE}/backuprestores/r1/status")
EVENT = ("POST", "/api/v1/namespaces/ns/events")
DELETE_JOB = ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/r1-restore")
INTERRUPTED = {"bytes": 0, "files": 0, "verified": False, "durationSeconds": 3.0, "reason": "Interrupted",
               "message": "stopped by SIGTERM; nothing was committed"}


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    return kmock


@pytest.fixture
def records():
    """The final-record lines the operator logs."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("daoflow_operator.record")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)


def deleted_restore(k8s, status: dict | None = None, finalizer: bool = True) -> None:
    obj = restore("r1")
    obj["metadata"]["deletionTimestamp"] = "2026-11-27T12:05:00Z"
    obj["metadata"]["finalizers"] = [status_.FINALIZER] if finalizer else []
    if status is not None:
        obj["status"] = status
    k8s.objects[RESTORES, "ns", "r1"] = obj


def running_status() -> dict:
    st = queued_status(started="JobRunning", reason="Running", message="fetching")
    st["phase"] = "Running"
    return st


def running_job(**meta) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "r1-restore", "namespace": "ns", "uid": "uid-job", **meta,
                         "ownerReferences": [{"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
                                              "name": "r1", "uid": "uid-r1", "controller": True}]},
            "spec": {"template": {"spec": {"containers": [{"name": "runner", "image": "runner:test"}]}}},
            "status": {"active": 1, "ready": 1, "startTime": "2026-11-27T12:00:00Z"}}


def finalizers(k8s) -> list[str]:
    return k8s.objects[RESTORES, "ns", "r1"].raw["metadata"].get("finalizers") or []


def gone(k8s) -> bool:
    """Its finalizer removed, the deleted restore is gone."""
    return k8s.objects[RESTORES, "ns", "r1"].deleted


def written_status(k8s) -> dict:
    """The status of the last status patch (the object itself may be gone by now)."""
    return [r for r in k8s if r.url.path.endswith("/r1/status")][-1].data["status"]


async def test_a_new_restore_gets_the_finalizer_before_its_lease_and_its_job(k8s):
    obj = restore("r1")
    del obj["metadata"]["finalizers"]
    k8s.objects[RESTORES, "ns", "r1"] = obj

    assert await operator_for(k8s).process(("ns", "r1")) is None

    seen = requests(k8s)
    after_reviews = len(seen) - seen[::-1].index(REVIEW[-1])
    assert seen[after_reviews:] == [FINALIZE, TAKE_LEASE, ("POST", "/apis/batch/v1/namespaces/ns/jobs"),
                                                 PATCH, EVENT, EVENT]
    patch = list(k8s)[seen.index(FINALIZE)].data
    assert patch == {"metadata": {"finalizers": [status_.FINALIZER], "resourceVersion": "5"}}
    assert finalizers(k8s) == [status_.FINALIZER]


async def test_a_dry_run_never_gets_the_finalizer(k8s):
    obj = restore("r1")
    del obj["metadata"]["finalizers"]
    obj["spec"]["dryRun"] = True
    k8s.objects[RESTORES, "ns", "r1"] = obj

    await operator_for(k8s).process(("ns", "r1"))

    assert FINALIZE not in requests(k8s) and finalizers(k8s) == []
    assert k8s.objects[RESTORES, "ns", "r1"].raw["status"]["phase"] == "Planned"


async def test_deleting_a_running_restore_deletes_its_job_in_the_foreground_and_keeps_the_record(k8s, records):
    deleted_restore(k8s, running_status())
    k8s.objects[JOBS, "ns", "r1-restore"] = running_job()
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) == operator.config.pod_start_poll_seconds

    assert requests(k8s) == [RESTORE, JOB, LIST_PODS, PATCH, EVENT, DELETE_JOB]
    delete = list(k8s)[-1].data
    assert delete["propagationPolicy"] == "Foreground" and delete["preconditions"] == {"uid": "uid-job"}
    status = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == status_.CANCELLING
    assert not status.get("completionTime") and finalizers(k8s) == [status_.FINALIZER] and records == []


async def test_a_cancel_whose_pod_went_before_a_pass_read_it_uses_the_report_its_pod_event_showed(k8s, records):
    st = running_status()
    st["conditions"][-1].update(reason=status_.CANCELLING, message="being deleted")
    deleted_restore(k8s, st)
    operator = operator_for(k8s)
    operator.reports[("ns", "r1")] = ("uid-r1", json.dumps(INTERRUPTED))  # as pod_event keeps it

    assert await operator.process(("ns", "r1")) is None

    # The Job is gone (404); the status is final, the event posted, the target let go of, the finalizer removed.
    assert requests(k8s) == [RESTORE, JOB, PATCH, EVENT, LEASE, FINALIZE]
    assert list(k8s)[-1].data["metadata"]["finalizers"] is None and gone(k8s)
    status = written_status(k8s)
    assert status["phase"] == "Cancelled" and status["completionTime"]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == status_.CANCELLED and "rolled the target back" in succeeded["message"]
    assert len(records) == 1
    record = json.loads(records[0])
    assert (record["name"], record["uid"], record["phase"], record["reason"], record["deleted"]) == (
        "r1", "uid-r1", "Cancelled", status_.CANCELLED, True)
    assert ("ns", "r1") not in operator.reports


async def test_a_report_of_a_namesake_is_not_taken_for_this_restores(k8s):
    deleted_restore(k8s, running_status())
    operator = operator_for(k8s)
    operator.reports[("ns", "r1")] = ("uid-of-an-older-r1", json.dumps(INTERRUPTED))

    await operator.process(("ns", "r1"))

    succeeded = next(c for c in written_status(k8s)["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == status_.CANCELLED and "not known" in succeeded["message"]


async def test_after_a_restart_mid_cancel_only_the_finalizer_is_removed(k8s, records):
    final = running_status()
    final.update(phase="Failed", completionTime="2026-11-27T12:06:00Z")
    deleted_restore(k8s, final)

    assert await operator_for(k8s).process(("ns", "r1")) is None

    assert requests(k8s) == [RESTORE, JOB, FINALIZE]  # no status write, no event, no second record
    assert gone(k8s) and records == []


async def test_a_final_restore_whose_job_still_runs_keeps_the_finalizer_until_it_ended(k8s):
    final = running_status()
    final.update(phase="Failed", completionTime="2026-11-27T12:06:00Z")
    deleted_restore(k8s, final)
    k8s.objects[JOBS, "ns", "r1-restore"] = running_job(deletionTimestamp="2026-11-27T12:05:00Z")
    k8s.objects["v1/pods", "ns", "r1-restore-x7k2p"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "r1-restore-x7k2p", "namespace": "ns", "uid": "uid-pod",
                     "labels": {"batch.kubernetes.io/controller-uid": "uid-job"}},
        "spec": {"containers": [{"name": "runner", "image": "runner:test"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "runner", "image": "runner:test", "ready": True, "restartCount": 0, "imageID": "",
            "state": {"running": {"startedAt": "2026-11-27T12:00:01Z"}}}]}}
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) == operator.config.pod_start_poll_seconds
    assert requests(k8s) == [RESTORE, JOB, LIST_PODS] and finalizers(k8s) == [status_.FINALIZER]


async def test_a_waiting_restore_that_is_deleted_is_released_without_a_job(k8s, records):
    # Waiting for its BackupRun; it may have taken its target in a pass that died before the Job.
    deleted_restore(k8s, {"phase": "Pending", "plan": {"target": {
        "type": "volume", "persistentVolumeClaim": {"claimName": "data"}}}})

    assert await operator_for(k8s).process(("ns", "r1")) is None

    seen = requests(k8s)
    assert ("POST", "/apis/batch/v1/namespaces/ns/jobs") not in seen and TAKE_LEASE not in seen
    assert seen == [RESTORE, JOB, PATCH, EVENT, LEASE, FINALIZE]  # no Job left by a pass that died (404)
    status = written_status(k8s)
    assert status["phase"] == "Cancelled" and "before its Job was created" in status["conditions"][-1]["message"]
    assert gone(k8s)
    assert len(records) == 1 and json.loads(records[0])["reason"] == status_.CANCELLED


async def test_a_pod_event_keeps_the_report_of_a_restore_being_deleted_and_wakes_it(k8s):
    operator = operator_for(k8s)
    woken = []
    operator.queue.add = lambda key, delay=0.0: woken.append(key)
    memo = SimpleNamespace(operator=operator)
    message = json.dumps(INTERRUPTED)
    job = running_job(deletionTimestamp="2026-11-27T12:05:00Z")
    k8s.objects[JOBS, "ns", "r1-restore"] = job
    owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": "r1-restore", "uid": "uid-job", "controller": True}]
    body = {"metadata": {"name": "r1-restore-x7k2p", "creationTimestamp": "2026-11-27T12:00:01Z",
                         "ownerReferences": owner},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "runner", "state": {"terminated": {"exitCode": 10, "message": message}}}]}}
    being_deleted = {("ns", "uid-r1"): ["r1"]}

    # A pod that only carries the labels (no Job controls it) reports nothing, though it wakes the restore.
    forged = {**body, "metadata": {**body["metadata"], "name": "forged", "ownerReferences": []}}
    await handlers.pod_event(namespace="ns", labels={jobs.LABEL_RESTORE_UID: "uid-r1"}, body=forged,
                             restores_being_deleted=being_deleted, memo=memo)
    assert operator.reports == {}

    await handlers.pod_event(namespace="ns", labels={jobs.LABEL_RESTORE_UID: "uid-r1"}, body=body,
                             restores_being_deleted=being_deleted, memo=memo)
    assert operator.reports == {("ns", "r1"): ("uid-r1", message)} and ("ns", "r1") in woken
    woken.clear()

    # The pod of a restore that is not being deleted is none of this handler's business.
    await handlers.pod_event(namespace="ns", labels={jobs.LABEL_RESTORE_UID: "uid-r2"}, body=body,
                             restores_being_deleted=being_deleted, memo=memo)
    assert list(operator.reports) == [("ns", "r1")] and woken == []


async def test_a_final_restore_that_still_holds_the_finalizer_is_looked_at_again(k8s):
    operator = operator_for(k8s)
    woken = []
    operator.queue.add = lambda key, delay=0.0: woken.append(key)
    memo = SimpleNamespace(operator=operator)
    final = {"phase": "Failed", "completionTime": "2026-11-27T12:06:00Z"}

    await handlers.restore_event(event={"type": "MODIFIED"}, namespace="ns", name="r1", status=final,
                                 restores_by_target={}, memo=memo, meta={"finalizers": [status_.FINALIZER]})
    await handlers.restore_event(event={"type": "MODIFIED"}, namespace="ns", name="r2", status=final,
                                 restores_by_target={}, memo=memo, meta={"finalizers": []})
    assert woken == [("ns", "r1")]  # a final restore without it costs nothing


async def test_a_restore_deleted_after_a_crash_between_its_job_and_its_record_cancels_that_job(k8s, records):
    deleted_restore(k8s, {"phase": "Pending", "plan": {"target": {
        "type": "volume", "persistentVolumeClaim": {"claimName": "data"}}}})
    k8s.objects[JOBS, "ns", "r1-restore"] = running_job()
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) == operator.config.pod_start_poll_seconds

    assert requests(k8s) == [RESTORE, JOB, LIST_PODS, PATCH, EVENT, DELETE_JOB]
    assert list(k8s)[-1].data["propagationPolicy"] == "Foreground"
    status = written_status(k8s)
    assert status["jobRef"] == {"name": "r1-restore"} and not status.get("completionTime")
    assert finalizers(k8s) == [status_.FINALIZER] and records == []
