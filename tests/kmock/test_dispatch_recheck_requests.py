"""The shell's requests around the re-check at dispatch and the wait deadline: a wait asks nothing, and
wakes up no later than its deadline; the pass that would create the Job asks both questions, and a no
on the BackupRun leaves no Lease and no Job."""

from __future__ import annotations

from daoflow_operator import status
from daoflow_operator.config import Config
from kmock_world import JOBS, LEASES, REVIEW, RESTORES, RUNS, SARS, declare, operator_for, restore

BASE = "/apis/backup.daoflow.dev/v1alpha1/namespaces/ns"
EVENT = ("POST", "/api/v1/namespaces/ns/events")


def requests(k8s) -> list[tuple[str, str]]:
    return [(str(r.method.value).upper(), r.url.path) for r in list(k8s)]


def reviews(k8s) -> list[dict]:
    return [r.data["spec"]["resourceAttributes"] for r in k8s["post", k8s.resource(SARS)]]


async def test_a_restore_that_waits_asks_nothing_and_looks_again_no_later_than_its_deadline(kmock):
    declare(kmock)
    del kmock.objects[RUNS, "ns", "nightly"]
    waiting = restore("r1")
    waiting["spec"]["waitTimeoutSeconds"] = 30
    kmock.objects[RESTORES, "ns", "r1"] = waiting
    operator = operator_for(kmock)
    operator.config = Config(wait_backoff_min=600, wait_backoff_max=600)

    delay = await operator.process(("ns", "r1"))
    assert 0 < delay <= 30  # the deadline, not the 600 s backoff
    assert ("POST", f"/apis/{SARS}") not in requests(kmock)
    stored = kmock.objects[RESTORES, "ns", "r1"].raw["status"]
    assert stored["phase"] == "Pending" and stored["waitDeadlineTime"]


async def test_a_requester_who_lost_the_scope_on_the_backup_run_is_rejected_with_no_lease_and_no_job(kmock):
    declare(kmock, refused=("alice",), refused_on=("backupruns",))
    kmock.objects[RESTORES, "ns", "r1"] = restore("r1")
    assert await operator_for(kmock).process(("ns", "r1")) is None

    seen = requests(kmock)
    start = seen.index(REVIEW[0])
    # The final status, its event, then the finalizer let go of (no Job can write into the target).
    assert seen[start:] == REVIEW + [("PATCH", f"{BASE}/backuprestores/r1/status"), EVENT,
                                     ("PATCH", f"{BASE}/backuprestores/r1")]
    assert [(a["group"], a["resource"], a["name"]) for a in reviews(kmock)] == [
        ("backup.daoflow.dev", "backupruns", "nightly"), ("", "persistentvolumeclaims", "data")]
    stored = kmock.objects[RESTORES, "ns", "r1"].raw["status"]
    ready = status.get_condition(stored, "Ready")
    assert stored["phase"] == "Rejected" and ready["reason"] == "RequesterNoLongerAuthorized"
    assert ready["message"].startswith("alice may no longer restore BackupRun nightly: that needs the verb restore "
                                       "on backupruns.backup.daoflow.dev/nightly in namespace ns")
    event = list(kmock)[-2].data  # the last request lets go of the finalizer
    assert (event["type"], event["reason"]) == ("Warning", "RequesterNoLongerAuthorized")
    assert not list(kmock[JOBS]) and not list(kmock[LEASES])
