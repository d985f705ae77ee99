"""One restore per target at a time, on the real API server: the second waits as Queued/TargetBusy.

The restore pods run on KWOK's node for a few seconds each (`kwok.daoflow.dev/run-duration`), so
two restores into one target would overlap if nothing kept them apart. Whether they did is read
from their Jobs' startTime and completionTime, which the job controller writes.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from backups import GROUP, backup_run, condition, destination, events, jobs, restore_status, settle, volume, wait_phase
from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster


def run_long(start_operator, seconds: int):
    return start_operator(simulated=True, DAOFLOW_JOB_POD_ANNOTATIONS={"kwok.daoflow.dev/run-duration": f"{seconds}s"})


def apply_together(cluster, namespace: str, *specs: tuple[str, dict]) -> None:
    """Several BackupRestores in one request of kubectl: they arrive within the same second."""
    items = [{"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRestore",
              "metadata": {"name": name, "namespace": namespace},
              "spec": {"backupRunRef": {"name": "nightly"}, "existingData": "Replace", **spec}}
             for name, spec in specs]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def intervals(cluster, namespace: str) -> dict[str, tuple[datetime, datetime]]:
    """{restore: (its Job's startTime, completionTime)}."""
    out = {}
    for job in jobs(cluster, namespace):
        owner = job["metadata"]["ownerReferences"][0]["name"]
        st = job["status"]
        out[owner] = (datetime.fromisoformat(st["startTime"]), datetime.fromisoformat(st["completionTime"]))
    return out


def busy_restores(cluster, namespace: str, names) -> list[str]:
    return [n for n in names
            if condition(restore_status(cluster, namespace, n), "Ready").get("reason") == "TargetBusy"]


def lease_holders(cluster, namespace: str) -> list[str]:
    out = cluster.kubectl("get", "leases", "-n", namespace, "-o", "json").stdout
    return [item["spec"].get("holderIdentity", "") for item in json.loads(out)["items"]]


def assert_waited_for(cluster, namespace: str, waiter: str, holder: str) -> None:
    """`waiter` was Queued behind `holder`, was told so once, and then ran."""
    message = f"PersistentVolumeClaim app-data is being restored by BackupRestore {holder}; " \
              "this restore starts when that one ends"
    busy = [e for e in events(cluster, namespace, waiter) if e["reason"] == "TargetBusy"]
    assert [(e["type"], e["message"]) for e in busy] == [("Normal", message)]
    trail = restore_status(cluster, namespace, waiter)["auditTrail"]
    assert [(a["step"], a["outcome"]) for a in trail][:3] == [("validate", "ok"), ("queue", "waiting"), ("queue", "ok")]
    assert trail[1]["message"].endswith(message)


@pytest.mark.parametrize("replicas", [1, 1, 2], ids=["round-1", "round-2", "round-3-two-operator-replicas"])
def test_two_restores_into_one_target_applied_together_never_run_together(cluster, namespace, start_operator,
                                                                          replicas):
    # Two replicas reconcile every restore both: only the Lease in the API server keeps them apart.
    for _ in range(replicas):
        run_long(start_operator, 4)
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    names = ["first", "second"]
    apply_together(cluster, namespace, *((n, {}) for n in names))

    # One of them waits, named after the other, and says so while it waits.
    waiting = wait_until(lambda: busy_restores(cluster, namespace, names), timeout=60, what="a TargetBusy restore")
    assert len(waiting) == 1
    waiter = waiting[0]
    holder = next(n for n in names if n != waiter)
    status = restore_status(cluster, namespace, waiter)
    assert status["phase"] == "Queued" and "jobRef" not in status
    assert f"BackupRestore {holder}" in condition(status, "Ready")["message"]
    assert [h.split("/")[0] for h in lease_holders(cluster, namespace)] == [holder]

    for name in names:
        assert wait_phase(cluster, namespace, name, "Succeeded", timeout=120)["result"]["verified"] is True
    spans = intervals(cluster, namespace)
    assert sorted(spans) == names
    assert spans[holder][1] <= spans[waiter][0], f"the two restores overlapped: {spans}"
    assert_waited_for(cluster, namespace, waiter, holder)
    # Both let go of the target at their end (right after their final status).
    wait_until(lambda: lease_holders(cluster, namespace) == [], timeout=10, what="the target's Lease to be deleted")


def test_two_restores_into_different_targets_run_in_parallel(cluster, namespace, start_operator):
    run_long(start_operator, 6)
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    volume(cluster, namespace, "other-data")
    apply_together(cluster, namespace, ("in-place", {}),
                   ("elsewhere", {"target": {"persistentVolumeClaim": {"claimName": "other-data"}}}))

    for name in ("in-place", "elsewhere"):
        wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    spans = intervals(cluster, namespace)
    (a_start, a_end), (b_start, b_end) = spans["in-place"], spans["elsewhere"]
    assert a_start < b_end and b_start < a_end, f"the two restores did not overlap: {spans}"
    for name in ("in-place", "elsewhere"):
        assert "TargetBusy" not in [e["reason"] for e in events(cluster, namespace, name)]


def test_a_restart_of_the_operator_while_one_waits_does_not_start_it_early(cluster, namespace, start_operator):
    first = run_long(start_operator, 20)
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    apply_together(cluster, namespace, ("holder", {}))
    wait_phase(cluster, namespace, "holder", "Running", timeout=60)
    apply_together(cluster, namespace, ("waiter", {}))
    wait_until(lambda: busy_restores(cluster, namespace, ["waiter"]), timeout=30, what="the waiter to be TargetBusy")
    # The event follows the status write: killed in between, the first operator would never post it,
    # and the second, finding the status already written, does not either (a lost event, not a twin).
    wait_until(lambda: [e for e in events(cluster, namespace, "waiter") if e["reason"] == "TargetBusy"],
               timeout=30, what="the waiter's TargetBusy event")

    first.kill()
    run_long(start_operator, 20)
    settle(5)  # the new operator has read everything again by now
    assert restore_status(cluster, namespace, "holder")["phase"] == "Running"
    waiter = restore_status(cluster, namespace, "waiter")
    assert waiter["phase"] == "Queued" and condition(waiter, "Ready")["reason"] == "TargetBusy"
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["holder-restore"]

    for name in ("holder", "waiter"):
        wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    spans = intervals(cluster, namespace)
    assert spans["holder"][1] <= spans["waiter"][0], f"the two restores overlapped: {spans}"
    assert_waited_for(cluster, namespace, "waiter", "holder")  # told once, across both operators


def test_a_lease_left_by_a_restore_that_is_gone_is_taken_over(cluster, namespace, start_operator):
    # As an operator that died between a restore's end and the Lease's deletion would leave it.
    from daoflow_operator import targets

    run_long(start_operator, 1)
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = targets.lease_name("pvc/app-data")
    cluster.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"holderIdentity": "gone/4c1c2b0e-0000-0000-0000-000000000000", "leaseTransitions": 0}})
    apply_together(cluster, namespace, ("next", {}))
    status = wait_phase(cluster, namespace, "next", "Succeeded", timeout=90)
    assert "TargetBusy" not in [e["reason"] for e in events(cluster, namespace, "next")]
    assert status["auditTrail"][1]["message"].endswith("PersistentVolumeClaim app-data taken; Job next-restore created")
    wait_until(lambda: lease_holders(cluster, namespace) == [], timeout=10, what="the taken Lease to be deleted")
