"""Status patches answered with 409, 429 and 500 are retried, and the status comes out right."""

from __future__ import annotations

import asyncio

import kmock
import kubernetes
import pytest

from fault_aware import FaultAwareEmulator
from daoflow_operator import handlers
from daoflow_operator.config import Config
from daoflow_operator.kube import Kube

RESTORES = "backup.daoflow.dev/v1alpha1/backuprestores"
RUNS = "backup.daoflow.dev/v1alpha1/backupruns"
DESTINATIONS = "backup.daoflow.dev/v1alpha1/backupdestinations"
JOBS = "batch/v1/jobs"
SHA = "c" * 64


def status(code: int, reason: str) -> dict:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": f"injected {code}"}


@pytest.fixture
def k8s(kmock):
    for res, kind in ((RESTORES, "BackupRestore"), (RUNS, "BackupRun"), (DESTINATIONS, "BackupDestination")):
        kmock.resources[res] = {"kind": kind, "namespaced": True, "verbs": ["get", "list", "watch", "patch", "create"],
                                "subresources": ["status"]}
    kmock.resources[JOBS] = {"kind": "Job", "namespaced": True, "verbs": ["get", "list", "watch", "create"]}
    kmock.resources["v1/events"] = {"kind": "Event", "namespaced": True, "verbs": ["create"]}
    kmock.resources["v1/pods"] = {"kind": "Pod", "namespaced": True, "verbs": ["get", "list"]}
    kmock.objects[RESTORES, "ns", "r1"] = {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
        "metadata": {"name": "r1", "namespace": "ns", "uid": "uid-r1", "generation": 1, "resourceVersion": "5"},
        "spec": {"backupRunRef": {"name": "nightly"}, "dryRun": False, "existingData": "FailIfNotEmpty"},
    }
    kmock.objects[RUNS, "ns", "nightly"] = {
        "metadata": {"name": "nightly", "namespace": "ns", "uid": "uid-run", "resourceVersion": "3"},
        "spec": {"destinationRef": {"name": "shared"},
                 "source": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
        "status": {"phase": "Succeeded", "completionTime": "2026-11-27T02:00:00Z",
                   "artifact": {"path": "a.tar.zst", "format": "tar+zstd", "sizeBytes": 10, "sha256": SHA}},
    }
    kmock.objects[DESTINATIONS, "ns", "shared"] = {
        "metadata": {"name": "shared", "namespace": "ns", "uid": "uid-dest"},
        "spec": {"persistentVolumeClaim": {"claimName": "backups"}},
    }
    return kmock


def operator_for(k8s) -> handlers.Operator:
    cfg = kubernetes.client.Configuration()
    cfg.host = str(k8s.url).rstrip("/")
    client = kubernetes.client.ApiClient(cfg)
    return handlers.Operator(Kube(client, sleep=lambda s: None), Config())


def status_patches(k8s) -> list:
    return [r for r in k8s["patch", kmock.resource(RESTORES)] if r.url.path.endswith("/r1/status")]


@pytest.mark.kmock(cls=FaultAwareEmulator)
@pytest.mark.parametrize("code, reason", [(409, "Conflict"), (429, "TooManyRequests"), (500, "InternalError")])
async def test_a_failed_status_patch_is_retried_and_the_status_comes_out_right(k8s, code, reason):
    fault = k8s["patch", kmock.resource(RESTORES)][:1] << code << {"Retry-After": "0"} << status(code, reason)
    operator = operator_for(k8s)

    assert await operator.process(("ns", "r1")) is None

    patches = status_patches(k8s)
    assert [r.id for r in fault] == [patches[0].id]
    assert len(patches) == 2, [p.data for p in patches]
    # The retry sends the same decision: a conditional merge patch of the status.
    assert patches[1].data == patches[0].data
    assert patches[1].headers["Content-Type"] == "application/merge-patch+json"
    assert patches[1].data["metadata"] == {"resourceVersion": "5"}
    stored = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert stored["phase"] == "Queued" and stored["jobRef"] == {"name": "r1-restore"}
    assert [e["step"] for e in stored["auditTrail"]] == ["validate", "queue"]
    # Exactly one Job, however many passes it took: a conflict re-reads and adopts, never twins.
    creates = list(k8s["create", kmock.resource(JOBS)])
    assert len(creates) == (2 if code == 409 else 1)
    jobs = await asyncio.to_thread(kubernetes.client.BatchV1Api(operator.kube.client).list_namespaced_job, "ns")
    assert [j.metadata.name for j in jobs.items] == ["r1-restore"]
    # The only error is the second create meeting the first Job: that is adoption.
    assert [e.status for e in k8s.errors] == ([409] if code == 409 else [])


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_throttling_and_server_errors_in_a_row_are_all_retried(k8s):
    k8s["patch", kmock.resource(RESTORES)][:1] << 429 << {"Retry-After": "0"} << status(429, "TooManyRequests")
    k8s["patch", kmock.resource(RESTORES)][:2] << 500 << status(500, "InternalError")
    operator = operator_for(k8s)

    await operator.process(("ns", "r1"))

    patches = status_patches(k8s)
    assert len(patches) == 3 and all(p.data == patches[0].data for p in patches)
    assert k8s.objects[RESTORES, "ns", "r1"].raw["status"]["phase"] == "Queued"


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_server_that_keeps_failing_is_given_up_on_and_retried_later(k8s):
    k8s["patch", kmock.resource(RESTORES)] << 500 << status(500, "InternalError")
    operator = operator_for(k8s)
    queue = operator.queue
    delays = []
    original = queue.add
    queue.add = lambda key, delay=0.0: delays.append(delay)  # observe the requeue instead of waiting
    try:
        worker = asyncio.create_task(queue._worker())
        original(("ns", "r1"))
        for _ in range(200):
            if delays:
                break
            await asyncio.sleep(0.01)
        worker.cancel()
    finally:
        queue.add = original
    assert delays == [10.0]
    assert len(status_patches(k8s)) == 6  # the bounded retries of one pass
    assert "status" not in k8s.objects[RESTORES, "ns", "r1"].raw
