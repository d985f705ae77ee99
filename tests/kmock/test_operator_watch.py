"""The whole operator, kopf included, against kmock: a watch stream that breaks is resumed."""

from __future__ import annotations

import asyncio

import kmock
import kopf
import kubernetes
import pytest

from daoflow_operator import handlers
from daoflow_operator.config import Config
from daoflow_operator.kube import Kube
from fault_aware import FaultAwareEmulator
from test_api_faults import DESTINATIONS, JOBS, RESTORES, RUNS, SHA

SERVER: dict[str, str] = {}


@kopf.on.login()
def login_to_kmock(**_):
    # Registered for this module's test only: no other test in this process runs kopf.
    return kopf.ConnectionInfo(server=SERVER["url"])


@pytest.fixture
def k8s(kmock):
    kmock.resources["v1/namespaces"] = {"namespaced": False, "verbs": ["list", "watch"]}
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {"namespaced": False,
                                                                             "verbs": ["list", "watch"]}
    for res, kind in ((RESTORES, "BackupRestore"), (RUNS, "BackupRun"), (DESTINATIONS, "BackupDestination")):
        kmock.resources[res] = {"kind": kind, "namespaced": True, "verbs": ["get", "list", "watch", "patch", "create"],
                                "subresources": ["status"]}
    kmock.resources[JOBS] = {"kind": "Job", "namespaced": True, "verbs": ["get", "list", "watch", "create"]}
    kmock.resources["v1/events"] = {"kind": "Event", "namespaced": True, "verbs": ["create"]}
    kmock.resources["v1/pods"] = {"kind": "Pod", "namespaced": True, "verbs": ["get", "list"]}
    kmock.objects[RUNS, "ns", "nightly"] = {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRun",
        "metadata": {"name": "nightly", "namespace": "ns", "uid": "uid-run", "resourceVersion": "3"},
        "spec": {"destinationRef": {"name": "shared"},
                 "source": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
        "status": {"phase": "Succeeded", "completionTime": "2026-11-27T02:00:00Z",
                   "artifact": {"path": "a.tar.zst", "format": "tar+zstd", "sizeBytes": 10, "sha256": SHA}},
    }
    kmock.objects[DESTINATIONS, "ns", "shared"] = {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupDestination",
        "metadata": {"name": "shared", "namespace": "ns", "uid": "uid-dest"},
        "spec": {"persistentVolumeClaim": {"claimName": "backups"}},
    }
    return kmock


async def until(predicate, timeout: float = 20) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_broken_watch_is_resumed_and_the_restore_still_proceeds(k8s):
    SERVER["url"] = str(k8s.url)
    # The first watch of BackupRestores ends at once, as a dropped connection would.
    broken = k8s["watch", kmock.resource(RESTORES)][:1] << (b"",)
    cfg = kubernetes.client.Configuration()
    cfg.host = str(k8s.url).rstrip("/")
    memo = kopf.Memo(operator=handlers.Operator(Kube(kubernetes.client.ApiClient(cfg)), Config()))
    stop = asyncio.Event()
    task = asyncio.create_task(kopf.operator(namespaces=["ns"], standalone=True, stop_flag=stop, memo=memo))
    try:
        assert await until(lambda: len(list(k8s["watch", kmock.resource(RESTORES)])) >= 2), "no second watch"
        await k8s.post("/apis/backup.daoflow.dev/v1alpha1/namespaces/ns/backuprestores", json={
            "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
            "metadata": {"name": "r1", "namespace": "ns", "uid": "uid-r1", "generation": 1, "resourceVersion": "1"},
            "spec": {"backupRunRef": {"name": "nightly"}},
        })
        assert await until(lambda: (k8s.objects[RESTORES, "ns", "r1"].raw.get("status") or {}).get("phase")
                           == "Queued"), "the restore was not queued after the watch broke"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert len(list(broken)) == 1
    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1
    assert not k8s.errors
