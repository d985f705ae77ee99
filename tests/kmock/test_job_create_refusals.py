"""A Job that the API server refuses for good (422, 403 quota) or whose name is taken ends the restore:
one status write, one create, no retry loop; the target is let go of."""

from __future__ import annotations

import kmock
import pytest

from daoflow_operator import handlers
from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, LEASES, RESTORES, declare, failure, operator_for, restore, status_patches


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    return kmock


def ready(k8s) -> dict:
    return next(c for c in k8s.objects[RESTORES, "ns", "r1"].raw["status"]["conditions"] if c["type"] == "Ready")


INVALID = ('Job.batch "r1-restore" is invalid: spec.template.spec.containers[0].volumeMounts[0].subPath: '
           "Invalid value: \"../../etc\": must not contain '..'")
QUOTA = ('jobs.batch "r1-restore" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, '
         "used: count/jobs.batch=1, limited: count/jobs.batch=1")


@pytest.mark.kmock(cls=FaultAwareEmulator)
@pytest.mark.parametrize("code, kind, message, reason", [
    (422, "Invalid", INVALID, "JobRejected"),
    (403, "Forbidden", QUOTA, "QuotaExceeded"),
])
async def test_a_job_refused_for_good_rejects_the_restore_once(k8s, code, kind, message, reason):
    k8s["create", kmock.resource(JOBS)] << code << failure(code, message, kind)
    operator = operator_for(k8s)
    released = []  # kmock's Lease has no uid to delete on: the release is observed, not sent
    operator.kube.release_lease = lambda *args: released.append(args)

    assert await operator.process(("ns", "r1")) is None

    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1  # no retry of a refusal
    assert len(status_patches(k8s)) == 1
    stored = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert stored["phase"] == "Rejected" and stored["completionTime"] and "jobRef" not in stored
    assert ready(k8s)["reason"] == reason and message in ready(k8s)["message"]
    events = [r.data for r in k8s["post", kmock.resource("v1/events")]]
    assert {"type": "Warning", "reason": reason} == {k: events[-1][k] for k in ("type", "reason")}
    assert message in events[-1]["message"]
    # The target taken for the Job is let go of.
    assert len(list(k8s["create", kmock.resource(LEASES)])) == 1
    assert released == [("ns", handlers.targets.lease_name("pvc/data"), "uid-r1")]
    # Final: a later event costs one read, no create and no write.
    await operator.process(("ns", "r1"))
    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1 and len(status_patches(k8s)) == 1


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_foreign_job_with_the_restore_jobs_name_is_a_final_reason(k8s):
    k8s.objects[JOBS, "ns", "r1-restore"] = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "r1-restore", "namespace": "ns", "uid": "uid-other",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "uid-x"}]},
        "spec": {"template": {"spec": {"containers": []}}}}
    operator = operator_for(k8s)
    operator.kube.release_lease = lambda *args: None

    assert await operator.process(("ns", "r1")) is None

    assert len(list(k8s["create", kmock.resource(JOBS)])) == 1
    assert len(status_patches(k8s)) == 1
    assert ready(k8s)["reason"] == "JobNameTaken" and "ns/r1-restore" in ready(k8s)["message"]
    assert k8s.objects[RESTORES, "ns", "r1"].raw["status"]["phase"] == "Rejected"


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_transient_error_backs_off_doubling_up_to_a_cap(k8s):
    k8s["create", kmock.resource(JOBS)] << 503 << {"Retry-After": "0"} << failure(503, "later", "ServiceUnavailable")
    queue = operator_for(k8s).queue
    delays = [queue.failure_delay(("ns", "r1")) for _ in range(9)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert queue.failure_delay(("ns", "r2")) == 5.0  # per key
    # And a pass that fails on a 503 raises (for that backoff), writing no status.
    with pytest.raises(Exception):
        await operator_for(k8s).process(("ns", "r1"))
    assert not status_patches(k8s)
