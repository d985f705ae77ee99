"""The shell around an approval's claim: a conditional write before the Lease and the Job, and a lost
race (a 409 on the claim, the other restore's claim stored meanwhile) read again into ApprovalAlreadyUsed."""

from __future__ import annotations

import kmock
import pytest

from daoflow_operator import access, planning, status
from daoflow_operator.api import models
from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, LEASES, RESTORES, RUNS, declare, failure, operator_for, restore

APPROVALS = "backup.daoflow.dev/v1alpha1/restoreapprovals"
BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"


def requests(k8s) -> list[tuple[str, str]]:
    return [(str(r.method.value).upper(), r.url.path) for r in list(k8s)]


def today_hash(k8s) -> str:
    spec = models.BackupRestoreSpec.model_validate({"backupRunRef": {"name": "nightly"}})
    run = k8s.objects[RUNS, "ns", "nightly"].raw
    return planning.plan("ns", spec, run, k8s.objects["backup.daoflow.dev/v1alpha1/backupdestinations", "ns",
                                                       "shared"].raw).plan.plan_hash


def approved(k8s, used_by: dict | None = None) -> dict:
    st = {"decision": "Approved", "decidedBy": "bob", "decidedByGroups": '["system:authenticated"]'}
    if used_by:
        st["usedBy"] = used_by
    return {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "RestoreApproval",
            "metadata": {"name": "ok-1", "namespace": "ns", "resourceVersion": "11",
                         "creationTimestamp": restore()["metadata"]["creationTimestamp"],
                         "annotations": {access.REQUESTED_BY: "alice"}},
            "spec": {"backupRunRef": {"name": "nightly"}, "planHash": today_hash(k8s)}, "status": st}


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    kmock.resources[APPROVALS] = {"kind": "RestoreApproval", "namespaced": True,
                                  "verbs": ["get", "list", "watch", "patch"], "subresources": ["status"]}
    for resource, name in access.DECISION_POLICIES:
        kmock.resources[f"admissionregistration.k8s.io/v1/{resource}"] = {
            "kind": resource, "namespaced": False, "verbs": ["get"]}
        kmock.objects[f"admissionregistration.k8s.io/v1/{resource}", None, name] = {
            "metadata": {"name": name, "creationTimestamp": "2026-11-01T00:00:00Z"}}
    kmock.objects[APPROVALS, "ns", "ok-1"] = approved(kmock)
    gated = restore("r1")
    gated["spec"]["approvalRef"] = {"name": "ok-1"}
    kmock.objects[RESTORES, "ns", "r1"] = gated
    return kmock


async def test_the_claim_is_conditional_and_comes_before_the_lease_and_the_job(k8s):
    await operator_for(k8s).process(("ns", "r1"))

    seen = requests(k8s)
    claim = seen.index(("PATCH", f"{BASE}/restoreapprovals/ok-1/status"))
    assert claim < seen.index(("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases"))
    assert claim < seen.index(("POST", "/apis/batch/v1/namespaces/ns/jobs"))
    [patch] = [r for r in k8s["patch", kmock.resource(APPROVALS)] if r.data["status"].get("usedBy")]
    assert patch.data["metadata"] == {"resourceVersion": "11"}
    assert patch.data["status"]["usedBy"] == {"name": "r1", "uid": "uid-r1"}
    approver = [r.data["spec"] for r in k8s["post", kmock.resource("authorization.k8s.io/v1/subjectaccessreviews")]
                if r.data["spec"]["resourceAttributes"]["verb"] == "approve"]
    assert [(a["user"], a["resourceAttributes"]["name"]) for a in approver] == [("bob", "ok-1")]
    stored = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    assert stored["approvedBy"] == "bob" and stored["phase"] == "Queued"


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_lost_race_for_the_approval_is_read_again_and_rejected_with_no_lease_and_no_job(k8s):
    def lost(request):
        # The other restore's claim landed first.
        k8s.objects[APPROVALS, "ns", "ok-1"] = approved(k8s, used_by={"name": "r0", "uid": "uid-r0"})
        return failure(409, "the object has been modified; please apply your changes to the latest version",
                       "Conflict")
    fault = k8s["patch", kmock.resource(APPROVALS)][:1] << 409 << lost

    assert await operator_for(k8s).process(("ns", "r1")) is None

    assert len(list(fault)) == 1
    stored = k8s.objects[RESTORES, "ns", "r1"].raw["status"]
    ready = status.get_condition(stored, "Ready")
    assert stored["phase"] == "Rejected" and ready["reason"] == "ApprovalAlreadyUsed"
    assert ready["message"] == "RestoreApproval ok-1 was already used by BackupRestore r0; an approval is good " \
                               "for one restore"
    assert not list(k8s[JOBS]) and not list(k8s["post", kmock.resource(LEASES)])
