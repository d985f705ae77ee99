"""The whole operator, kopf included, against kmock: a watch stream that breaks is resumed."""

from __future__ import annotations

import asyncio

import kmock
import kopf
import pytest

from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, RESTORES, declare, operator_for, restore

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
    declare(kmock)
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
    memo = kopf.Memo(operator=operator_for(k8s))
    stop = asyncio.Event()
    task = asyncio.create_task(kopf.operator(namespaces=["ns"], standalone=True, stop_flag=stop, memo=memo))
    try:
        assert await until(lambda: len(list(k8s["watch", kmock.resource(RESTORES)])) >= 2), "no second watch"
        await k8s.post("/apis/backup.daoflow.dev/v1alpha1/namespaces/ns/backuprestores", json=restore("r1"))
        assert await until(lambda: (k8s.objects[RESTORES, "ns", "r1"].raw.get("status") or {}).get("phase")
                           == "Queued"), "the restore was not queued after the watch broke"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert len(list(broken)) == 1
    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1
    # The only error: the first read of the target's Lease, when there is none yet.
    assert [e.status for e in k8s.errors] == [404]
