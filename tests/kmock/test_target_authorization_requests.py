"""The shell's requests around the target's authorization: asked once, right before the Job, and nothing after a no."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from daoflow_operator import access
from fault_aware import FaultAwareEmulator
from kmock_world import JOBS, LEASES, RESTORES, REVIEW, SARS, declare, failure, operator_for, restore

BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"
EVENT = ("POST", "/api/v1/namespaces/ns/events")


def requests(k8s, since: int = 0) -> list[tuple[str, str]]:
    return [(str(r.method.value).upper(), r.url.path) for r in list(k8s)[since:]]


def ready(k8s, name: str = "r1") -> dict:
    return next(c for c in k8s.objects[RESTORES, "ns", name].raw["status"]["conditions"] if c["type"] == "Ready")


def first_reads(k8s) -> list[tuple[str, str]]:
    """Everything up to the review: the restore, its BackupRun, destination, claim, Lease and target pods."""
    seen = requests(k8s)
    return seen[:seen.index(REVIEW[0])]


async def test_a_requester_who_may_not_restore_into_the_target_is_rejected_with_no_lease_and_no_job(kmock):
    declare(kmock, refused=("alice",), refused_on=("persistentvolumeclaims",))
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    operator = operator_for(kmock)

    assert await operator.process(("ns", "r1")) is None
    assert requests(kmock) == first_reads(kmock) + REVIEW + [("PATCH", f"{BASE}/backuprestores/r1/status"), EVENT,
                                                              ("PATCH", f"{BASE}/backuprestores/r1")]
    status = kmock.objects[RESTORES, "ns", "r1"].raw["status"]
    assert status["phase"] == "Rejected" and status["completionTime"]
    assert ready(kmock)["reason"] == "TargetNotAuthorized"
    assert ready(kmock)["message"] == (
        "alice may not restore into PersistentVolumeClaim data: that needs the verb restore on "
        "persistentvolumeclaims/data in namespace ns (the scope backup:restore)")
    event = list(kmock)[-2].data
    assert (event["type"], event["reason"]) == ("Warning", "TargetNotAuthorized")
    assert not list(kmock[JOBS]) and not list(kmock[LEASES])

    # Final: looked at again, it costs one read and asks nothing.
    seen = len(list(kmock))
    await operator.process(("ns", "r1"))
    assert requests(kmock, seen) == [("GET", f"{BASE}/backuprestores/r1")]


@pytest.mark.parametrize("missing", [resource for resource, _ in access.RECORDING_POLICIES])
async def test_without_the_policies_that_record_the_requester_nobody_is_asked_and_the_restore_is_refused(kmock, missing):
    declare(kmock)
    _, name = next(p for p in access.RECORDING_POLICIES if p[0] == missing)
    del kmock.objects[f"admissionregistration.k8s.io/v1/{missing}", None, name]
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")

    await operator_for(kmock).process(("ns", "r1"))
    assert ("POST", f"/apis/{SARS}") not in requests(kmock)
    assert kmock.objects[RESTORES, "ns", "r1"].raw["status"]["phase"] == "Rejected"
    assert ready(kmock)["reason"] == "TargetNotAuthorized"
    assert ready(kmock)["message"].startswith("the requester is unknown: the ")
    assert "is not installed, so the annotation backup.daoflow.dev/requested-by is whatever the client wrote" \
        in ready(kmock)["message"]
    assert not list(kmock[JOBS])


async def test_a_restore_created_before_the_policies_is_not_trusted(kmock):
    declare(kmock)
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    for resource, name in access.RECORDING_POLICIES:
        kmock.objects[f"admissionregistration.k8s.io/v1/{resource}", None, name] = {
            "metadata": {"name": name, "creationTimestamp": "2099-01-01T00:00:00Z"}}
    await operator_for(kmock).process(("ns", "r1"))
    assert "was installed after this BackupRestore was created" in ready(kmock)["message"]
    assert not list(kmock[JOBS])


@pytest.mark.kmock(cls=FaultAwareEmulator)
async def test_a_failing_review_is_retried_and_never_taken_for_a_yes(kmock):
    declare(kmock)
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    kmock["post", kmock.resource(SARS)][:1] << 500 << failure(500, "etcd is slow")
    kmock["post", kmock.resource(SARS)][1:2] << 403 << failure(
        403, "cannot create subjectaccessreviews", "Forbidden")
    operator = operator_for(kmock)
    # The 500 is retried, the 403 is not: the pass fails, writes nothing, and is looked at again later.
    with pytest.raises(ApiException) as refused:
        await operator.process(("ns", "r1"))
    assert refused.value.status == 403
    assert [r for r in requests(kmock) if r == ("POST", f"/apis/{SARS}")] == [("POST", f"/apis/{SARS}")] * 2
    assert "status" not in kmock.objects[RESTORES, "ns", "r1"].raw
    assert not list(kmock[JOBS]) and not list(kmock[LEASES])


async def test_a_dry_run_is_asked_about_too_and_a_no_is_planned_with_the_failed_check(kmock):
    declare(kmock, refused=("alice",))
    dry = restore("r1")
    dry["spec"]["dryRun"] = True
    kmock.objects[RESTORES, "ns", "r1"] = dry
    await operator_for(kmock).process(("ns", "r1"))
    status = kmock.objects[RESTORES, "ns", "r1"].raw["status"]
    assert status["phase"] == "Planned" and not status["plan"]["isReady"]
    check = next(c for c in status["plan"]["preflightChecks"] if c["name"] == "targetAuthorized")
    assert check["status"] == "fail" and check["detail"].startswith("alice may not restore into")
    assert ("POST", f"/apis/{SARS}") in requests(kmock)
    assert not list(kmock[JOBS]) and not list(kmock[LEASES])
