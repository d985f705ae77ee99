"""The shell's requests around a target's Lease: taken before the Job, waited for, taken over, let go of."""

from __future__ import annotations

import json

import kmock
import pytest

from daoflow_operator import targets
from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, LEASES, PODS, RESTORES, REVIEW, SHA, declare, failure, operator_for, restore

BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"
LEASE_NAME = targets.lease_name("pvc/data")
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/ns/leases/{LEASE_NAME}"


def first_pass(name: str) -> list[tuple[str, str]]:
    """What every pass over a restore without a Job reads before it looks at the target."""
    return [("GET", f"{BASE}/backuprestores/{name}"), ("GET", f"{BASE}/backupruns/nightly"),
            ("GET", f"{BASE}/backupdestinations/shared"), ("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/data"),
            ("GET", LEASE_PATH)]


def requests(k8s, since: int = 0) -> list[tuple[str, str]]:
    return [(str(r.method.value).upper(), r.url.path) for r in list(k8s)[since:]]


def lease(holder: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "ns", "uid": "uid-lease", "resourceVersion": "11"},
            "spec": {"holderIdentity": f"{holder}/uid-{holder}", "leaseTransitions": 0}}


def ended(name: str) -> dict:
    obj = restore(name)
    obj["status"] = {"phase": "Succeeded", "completionTime": "2026-11-27T12:05:00Z", "jobRef": {"name": f"{name}-restore"},
                     "plan": {"target": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}}}
    return obj


def condition(name: str, k8s, ctype: str) -> dict:
    return next(c for c in k8s.objects[RESTORES, "ns", name].raw["status"]["conditions"] if c["type"] == ctype)


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    return kmock


async def test_a_restore_into_a_busy_target_waits_naming_the_holder_and_then_writes_nothing(k8s):
    k8s.objects[RESTORES, "ns", "r1"] = {**restore("r1"), "status": {"phase": "Running", "jobRef": {"name": "r1-restore"}}}
    k8s.objects[LEASES, "ns", LEASE_NAME] = lease("r1")
    k8s.objects[RESTORES, "ns", "r2"] = restore("r2")
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r2")) == operator.config.wait_backoff_min
    assert requests(k8s) == first_pass("r2") + [
        ("GET", f"{BASE}/backuprestores/r1"), ("PATCH", f"{BASE}/backuprestores/r2/status"),
        ("POST", "/api/v1/namespaces/ns/events"), ("POST", "/api/v1/namespaces/ns/events")]
    status = k8s.objects[RESTORES, "ns", "r2"].raw["status"]
    assert status["phase"] == "Queued" and "jobRef" not in status
    message = "PersistentVolumeClaim data is being restored by BackupRestore r1; this restore starts when that one ends"
    assert condition("r2", k8s, "Ready")["reason"] == "TargetBusy"
    assert condition("r2", k8s, "Started") | {"lastTransitionTime": None} == {
        "type": "Started", "status": "False", "reason": "TargetBusy", "message": message,
        "lastTransitionTime": None, "observedGeneration": 1}
    validated, busy = (r.data for r in list(k8s)[-2:])
    assert validated["reason"] == "Validated"
    assert (busy["type"], busy["reason"], busy["message"]) == ("Normal", "TargetBusy", message)

    # Looked at again while the holder still runs: the same reads, and no write at all.
    seen = len(list(k8s))
    await operator.process(("ns", "r2"))
    assert requests(k8s, seen) == first_pass("r2") + [("GET", f"{BASE}/backuprestores/r1")]
    assert not list(k8s[JOBS])


async def test_the_target_of_a_restore_that_ended_is_taken_over_with_a_conditional_patch(k8s):
    k8s.objects[RESTORES, "ns", "r1"] = ended("r1")
    k8s.objects[LEASES, "ns", LEASE_NAME] = lease("r1")
    k8s.objects[RESTORES, "ns", "r2"] = restore("r2")

    assert await operator_for(k8s).process(("ns", "r2")) is None

    assert requests(k8s) == first_pass("r2") + [
        ("GET", f"{BASE}/backuprestores/r1"), ("GET", "/api/v1/namespaces/ns/pods"), *REVIEW, ("PATCH", LEASE_PATH),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs"), ("PATCH", f"{BASE}/backuprestores/r2/status"),
        ("POST", "/api/v1/namespaces/ns/events"), ("POST", "/api/v1/namespaces/ns/events")]
    take = list(k8s)[7 + len(REVIEW)]
    assert take.headers["Content-Type"] == "application/merge-patch+json"
    assert take.data["metadata"]["resourceVersion"] == "11"  # conditional: of two takers, one wins
    assert take.data["metadata"]["ownerReferences"] == [
        {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore", "name": "r2", "uid": "uid-r2"}]
    assert take.data["spec"]["holderIdentity"] == "r2/uid-r2" and take.data["spec"]["leaseTransitions"] == 1
    assert k8s.objects[RESTORES, "ns", "r2"].raw["status"]["phase"] == "Queued"
    job = list(k8s)[8 + len(REVIEW)].data
    assert job["metadata"]["labels"]["backup.daoflow.dev/target"] == targets.target_hash("pvc/data")


async def test_a_pod_of_an_ended_restore_that_still_runs_on_the_target_keeps_it_busy(k8s):
    k8s.objects[RESTORES, "ns", "r1"] = ended("r1")
    k8s.objects[PODS, "ns", "r1-restore-abcde"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "r1-restore-abcde", "namespace": "ns", "deletionTimestamp": "2026-11-27T12:05:00Z",
                     "labels": {"backup.daoflow.dev/target": targets.target_hash("pvc/data"),
                                "backup.daoflow.dev/restore": "r1", "backup.daoflow.dev/restore-uid": "uid-r1"}},
        "spec": {"containers": [{"name": "runner", "image": "runner:test"}]},
        "status": {"phase": "Running"}}
    k8s.objects[RESTORES, "ns", "r2"] = restore("r2")  # the Lease went with r1's end
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r2")) == operator.config.pod_start_poll_seconds
    # The Lease is read once more: still none, so the pod is not that of a restore that just took it.
    assert requests(k8s) == first_pass("r2") + [
        ("GET", "/api/v1/namespaces/ns/pods"), ("GET", LEASE_PATH), ("PATCH", f"{BASE}/backuprestores/r2/status"),
        ("POST", "/api/v1/namespaces/ns/events"), ("POST", "/api/v1/namespaces/ns/events")]
    assert condition("r2", k8s, "Ready")["message"] == (
        "PersistentVolumeClaim data is still written by pod r1-restore-abcde of BackupRestore r1, which has ended; "
        "this restore starts when that pod is gone")
    assert not list(k8s[JOBS])


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_pod_of_a_restore_that_took_the_target_between_two_reads_is_not_taken_for_one_that_ended(k8s):
    # r2 reads no Lease; r1 takes the target and its pod starts; then r2 lists the target's pods.
    not_yet = failure(404, "injected", "NotFound")
    k8s["fetch", kmock.resource(LEASES)][:1] << 404 << not_yet
    k8s.objects[LEASES, "ns", LEASE_NAME] = lease("r1")
    k8s.objects[RESTORES, "ns", "r1"] = {**restore("r1"), "status": {"phase": "Queued", "jobRef": {"name": "r1-restore"}}}
    k8s.objects[PODS, "ns", "r1-restore-abcde"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "r1-restore-abcde", "namespace": "ns",
                     "labels": {"backup.daoflow.dev/target": targets.target_hash("pvc/data"),
                                "backup.daoflow.dev/restore": "r1", "backup.daoflow.dev/restore-uid": "uid-r1"}},
        "spec": {"containers": [{"name": "runner", "image": "runner:test"}]}, "status": {"phase": "Pending"}}
    k8s.objects[RESTORES, "ns", "r2"] = restore("r2")

    await operator_for(k8s).process(("ns", "r2"))

    # The second read of the Lease tells: the pass runs again and waits for r1 as the holder.
    assert requests(k8s) == first_pass("r2") + [("GET", "/api/v1/namespaces/ns/pods"), ("GET", LEASE_PATH)] + \
        first_pass("r2") + [("GET", f"{BASE}/backuprestores/r1"), ("PATCH", f"{BASE}/backuprestores/r2/status"),
                            ("POST", "/api/v1/namespaces/ns/events"), ("POST", "/api/v1/namespaces/ns/events")]
    assert condition("r2", k8s, "Ready")["message"] == (
        "PersistentVolumeClaim data is being restored by BackupRestore r1; this restore starts when that one ends")


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_lost_race_for_the_target_reads_everything_again(k8s):
    conflict = failure(409, "injected", "AlreadyExists")
    fault = k8s["create", kmock.resource(LEASES)][:1] << 409 << conflict
    k8s.objects[RESTORES, "ns", "r2"] = restore("r2")

    assert await operator_for(k8s).process(("ns", "r2")) is None

    assert len(list(fault)) == 1
    creates = [r for r in requests(k8s) if r == ("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases")]
    assert len(creates) == 2  # the pass ran again on fresh reads, and took the target then
    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1


@pytest.mark.parametrize("holder, deleted", [("r1", True), ("r9", False)])
async def test_a_restore_that_ends_lets_go_of_its_target_and_only_its_own(k8s, holder, deleted):
    k8s.objects[RESTORES, "ns", "r1"] = {**restore("r1"), "status": {
        "phase": "Running", "jobRef": {"name": "r1-restore"}, "startTime": "2026-11-27T12:00:00Z",
        "plan": {"artifact": {"sha256": SHA}, "target": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
        "conditions": [{"type": "Started", "status": "True", "reason": "JobRunning", "message": "running",
                        "lastTransitionTime": "2026-11-27T12:00:00Z", "observedGeneration": 1}]}}
    k8s.objects[JOBS, "ns", "r1-restore"] = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "r1-restore", "namespace": "ns", "uid": "uid-job",
                     "ownerReferences": [{"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
                                          "name": "r1", "uid": "uid-r1", "controller": True}]},
        "spec": {"template": {"spec": {"containers": [{"name": "runner", "image": "runner:test"}]}}},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    report = {"bytes": 10, "files": 1, "sha256": SHA, "verified": True}
    k8s.objects[PODS, "ns", "r1-restore-abcde"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "r1-restore-abcde", "namespace": "ns", "labels": {"batch.kubernetes.io/controller-uid": "uid-job"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "r1-restore",
                                          "uid": "uid-job", "controller": True}]},
        "spec": {"containers": [{"name": "runner", "image": "runner:test"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "runner", "image": "runner:test", "ready": False, "restartCount": 0, "imageID": "",
            "state": {"terminated": {"exitCode": 0, "message": json.dumps(report)}}}]}}
    k8s.objects[LEASES, "ns", LEASE_NAME] = lease(holder)

    assert await operator_for(k8s).process(("ns", "r1")) is None

    assert k8s.objects[RESTORES, "ns", "r1"].raw["status"]["phase"] == "Succeeded"
    assert requests(k8s)[-1] == ("PATCH", f"{BASE}/backuprestores/r1")  # last, its finalizer is removed
    tail = requests(k8s)[-3:-1] if deleted else requests(k8s)[-2:-1]
    assert tail == ([("GET", LEASE_PATH), ("DELETE", LEASE_PATH)] if deleted else [("GET", LEASE_PATH)])
    if deleted:
        # Conditional on what was read: a Lease taken over in between is left alone.
        assert list(k8s)[-2].data["preconditions"] == {"uid": "uid-lease", "resourceVersion": "11"}
    assert k8s.objects[LEASES, "ns", LEASE_NAME].deleted == deleted
