"""Status patches answered with 409, 429 and 500 are retried, and the status comes out right."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timezone

import kmock
import kubernetes
import pytest

from daoflow_operator import handlers
from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, RESTORES, declare, failure, operator_for, restore, status_patches


def status(code: int, reason: str) -> dict:
    return failure(code, f"injected {code}", reason)


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    return kmock


@pytest.mark.kmock(cls=FaultAwareEmulator)
@pytest.mark.parametrize("code, reason", [(409, "Conflict"), (429, "TooManyRequests"), (500, "InternalError")])
async def test_a_failed_status_patch_is_retried_and_the_status_comes_out_right(k8s, code, reason, monkeypatch):
    # One clock for every pass: a 409 runs the pass again, which must not cross a second and differ in time only.
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    monkeypatch.setattr(handlers, "reconcile", functools.partial(handlers.reconcile, now=lambda: at))
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
    # The only errors: the first read of the target's Lease (there is none yet), and the second
    # create meeting the first Job, which is adoption.
    assert [e.status for e in k8s.errors] == [404] + ([409] if code == 409 else [])


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
    assert delays == [5.0]  # the first of a doubling backoff (handlers.WorkQueue)
    assert len(status_patches(k8s)) == 6  # the bounded retries of one pass
    assert "status" not in k8s.objects[RESTORES, "ns", "r1"].raw
