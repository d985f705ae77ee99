"""The shell's requests around a restore pod: read while it starts, deleted when it cannot, and no more."""

from __future__ import annotations

import pytest

from daoflow_operator import targets
from kmock_world import CLAIMS, JOBS, PODS, RESTORES, REVIEW, declare, operator_for, restore

SHA = "c" * 64
BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"
RESTORE = ("GET", f"{BASE}/backuprestores/r1")
JOB = ("GET", "/apis/batch/v1/namespaces/ns/jobs/r1-restore")
LIST_PODS = ("GET", "/api/v1/namespaces/ns/pods")
LIST_EVENTS = ("GET", "/api/v1/namespaces/ns/events")
PATCH = ("PATCH", f"{BASE}/backuprestores/r1/status")
EVENT = ("POST", "/api/v1/namespaces/ns/events")
DELETE_JOB = ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/r1-restore")
UNFINALIZE = ("PATCH", f"{BASE}/backuprestores/r1")  # the restore ended: its finalizer is removed
LEASE_NAME = targets.lease_name("pvc/data")
LEASE = ("GET", f"/apis/coordination.k8s.io/v1/namespaces/ns/leases/{LEASE_NAME}")
TAKE_LEASE = ("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases")


def requests(k8s, since: int = 0) -> list[tuple[str, str]]:
    return [(str(r.method.value).upper(), r.url.path) for r in list(k8s)[since:]]


def queued_status(**ready) -> dict:
    """The status of a restore whose Job was created, as the first pass writes it."""
    return {
        "phase": "Queued", "jobRef": {"name": "r1-restore"}, "startTime": "2026-11-27T12:00:00Z",
        "observedGeneration": 1, "requestedBy": "alice",
        "plan": {"artifact": {"location": "pvc://backups/a.tar.zst", "sha256": SHA},
                 "target": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
        "conditions": [
            {"type": "Validated", "status": "True", "reason": "Validated", "message": "ok",
             "lastTransitionTime": "2026-11-27T12:00:00Z", "observedGeneration": 1},
            {"type": "Started", "status": "True", "reason": ready.get("started", "JobCreated"),
             "message": "Job r1-restore created", "lastTransitionTime": "2026-11-27T12:00:00Z",
             "observedGeneration": 1},
            {"type": "Ready", "status": "False", "reason": ready.get("reason", "Queued"),
             "message": ready.get("message", "Job r1-restore created; waiting for its pod to start"),
             "lastTransitionTime": "2026-11-27T12:00:00Z", "observedGeneration": 1},
        ],
        "auditTrail": [],
    }


def job(**status) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "r1-restore", "namespace": "ns", "uid": "uid-job",
                         "ownerReferences": [{"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
                                              "name": "r1", "uid": "uid-r1", "controller": True}]},
            "spec": {"template": {"spec": {"containers": [{"name": "runner", "image": "runner:test"}]}}},
            "status": {"active": 1, "ready": 0, "startTime": "2026-11-27T12:00:00Z", **status}}


def pod(waiting: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "r1-restore-x7k2p", "namespace": "ns", "uid": "uid-pod",
                         "creationTimestamp": "2026-11-27T12:00:01Z",
                         "labels": {"batch.kubernetes.io/controller-uid": "uid-job"},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "r1-restore",
                                              "uid": "uid-job", "controller": True}]},
            "spec": {"containers": [{"name": "runner", "image": "runner:test"}]},
            "status": {"phase": "Pending",
                       "conditions": [{"type": "PodScheduled", "status": "True",
                                       "lastTransitionTime": "2026-11-27T12:00:01Z"}],
                       "containerStatuses": [{"name": "runner", "image": "runner:test", "ready": False,
                                              "restartCount": 0, "imageID": "",
                                              "state": {"waiting": {"reason": waiting}}}]}}


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    return kmock


def with_restore(k8s, status: dict | None = None) -> None:
    obj = restore("r1")
    if status is not None:
        obj["status"] = status
    k8s.objects[RESTORES, "ns", "r1"] = obj


async def test_the_first_pass_reads_the_target_claim_before_it_creates_the_job(k8s):
    with_restore(k8s)
    assert await operator_for(k8s).process(("ns", "r1")) is None
    assert requests(k8s) == [
        RESTORE, ("GET", f"{BASE}/backupruns/nightly"), ("GET", f"{BASE}/backupdestinations/shared"),
        ("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/data"), LEASE, LIST_PODS, *REVIEW, TAKE_LEASE,
        ("POST", "/apis/batch/v1/namespaces/ns/jobs"), PATCH, EVENT, EVENT]
    # Before the Job, the target is taken: no Lease and no pod on the target, so a new Lease.
    assert list(k8s)[5].params["labelSelector"] == f"backup.daoflow.dev/target={targets.target_hash('pvc/data')}"
    status = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert {c["name"]: c["status"] for c in status["plan"]["preflightChecks"]}["targetClaim"] == "ok"
    # Right before the Job: may alice, with her groups, still restore the BackupRun, and restore into the claim?
    assert list(k8s)[10].data["spec"]["resourceAttributes"]["resource"] == "backupruns"
    assert list(k8s)[11].data["spec"] == {
        "user": "alice", "groups": ["system:authenticated"],
        "resourceAttributes": {"namespace": "ns", "verb": "restore", "group": "", "resource": "persistentvolumeclaims",
                               "name": "data"}}
    assert {c["name"]: c["status"] for c in status["plan"]["preflightChecks"]}["targetAuthorized"] == "ok"


async def test_a_missing_target_claim_rejects_the_restore_and_creates_no_job(k8s):
    del k8s.objects[CLAIMS, "ns", "data"]
    with_restore(k8s)
    assert await operator_for(k8s).process(("ns", "r1")) is None
    status = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert status["phase"] == "Rejected" and status["completionTime"]
    assert ("POST", "/apis/batch/v1/namespaces/ns/jobs") not in requests(k8s)


async def test_a_pending_pod_is_read_with_its_events_and_looked_at_again_without_writes(k8s):
    with_restore(k8s, queued_status())
    k8s.objects[JOBS, "ns", "r1-restore"] = job()
    k8s.objects[PODS, "ns", "r1-restore-x7k2p"] = pod("ContainerCreating")
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) == operator.config.pod_start_poll_seconds
    assert requests(k8s) == [RESTORE, JOB, LIST_PODS, LIST_EVENTS, PATCH]
    assert list(k8s)[3].params["fieldSelector"] == "involvedObject.uid=uid-pod"
    ready = next(c for c in k8s.objects[RESTORES, "ns", "r1"].raw["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "Job r1-restore created; pod r1-restore-x7k2p is Pending: ContainerCreating"

    seen = len(list(k8s))
    assert await operator.process(("ns", "r1")) == operator.config.pod_start_poll_seconds
    assert requests(k8s, seen) == [RESTORE, JOB, LIST_PODS, LIST_EVENTS]  # nothing changed: nothing written


async def test_a_pod_that_cannot_pull_its_image_fails_the_restore_and_its_job_is_deleted_after(k8s):
    with_restore(k8s, queued_status())
    k8s.objects[JOBS, "ns", "r1-restore"] = job()
    k8s.objects[PODS, "ns", "r1-restore-x7k2p"] = pod("ImagePullBackOff")

    assert await operator_for(k8s).process(("ns", "r1")) is None

    # No events are read: the pod's own status says enough. The status is written before the delete,
    # and the target is let go of last (here it has no Lease any more: nothing to delete).
    assert requests(k8s) == [RESTORE, JOB, LIST_PODS, PATCH, EVENT, DELETE_JOB, LEASE, UNFINALIZE]
    delete = list(k8s)[-3]
    assert delete.data["propagationPolicy"] == "Background"
    assert delete.data["preconditions"] == {"uid": "uid-job"}
    status = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert status["phase"] == "Failed" and status["completionTime"]
    assert next(c for c in status["conditions"] if c["type"] == "Succeeded")["reason"] == "ImagePullFailed"
    assert k8s.objects[JOBS, "ns", "r1-restore"].deleted


async def test_a_job_left_behind_by_a_crash_after_the_final_status_is_deleted_by_the_next_pass(k8s):
    final = queued_status(reason="ImagePullFailed", message="Job r1-restore cannot run: ...")
    final["conditions"].append({"type": "Succeeded", "status": "False", "reason": "ImagePullFailed",
                                "message": "Job r1-restore cannot run: ...",
                                "lastTransitionTime": "2026-11-27T12:01:00Z", "observedGeneration": 1})
    final.update(phase="Failed", completionTime="2026-11-27T12:01:00Z")
    with_restore(k8s, final)
    k8s.objects[JOBS, "ns", "r1-restore"] = job()
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) is None
    assert requests(k8s) == [RESTORE, JOB, DELETE_JOB, UNFINALIZE]
    seen = len(list(k8s))
    assert await operator.process(("ns", "r1")) is None
    assert requests(k8s, seen) == [RESTORE, JOB]  # gone (404): nothing more to do
    assert k8s.objects[RESTORES, "ns", "r1"].raw["status"] == final  # a final record is never written


async def test_a_running_restore_reads_its_pods_only_for_progress_and_a_finished_one_reads_nothing_more(k8s):
    running = queued_status(started="JobRunning", reason="Running", message="fetching")
    running["phase"] = "Running"
    with_restore(k8s, running)
    k8s.objects[JOBS, "ns", "r1-restore"] = job(ready=0)
    operator = operator_for(k8s)
    assert await operator.process(("ns", "r1")) is None
    # No progress written yet, so a progress read is due: its pods (none here, so no log to read).
    assert requests(k8s) == [RESTORE, JOB, LIST_PODS]
    running["progress"] = {"bytesDone": 1, "lastProgressTime": "2999-01-01T00:00:00Z"}
    with_restore(k8s, running)
    seen = len(list(k8s))
    assert await operator.process(("ns", "r1")) is None
    assert requests(k8s, seen) == [RESTORE, JOB]  # a write within the interval: no read at all

    done = queued_status(started="JobRunning", reason="RestoreSucceeded", message="restored")
    done.update(phase="Succeeded", completionTime="2026-11-27T12:05:00Z")
    with_restore(k8s, done)
    del k8s.objects[RESTORES, "ns", "r1"].raw["metadata"]["finalizers"]  # let go of when it ended
    seen = len(list(k8s))
    assert await operator.process(("ns", "r1")) is None
    assert requests(k8s, seen) == [RESTORE]
