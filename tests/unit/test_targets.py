"""One restore per target at a time: the lock's pure parts, and how decide() queues behind it."""

from datetime import datetime, timedelta, timezone

import pytest

from daoflow_operator import planning, status, targets
from daoflow_operator.api import models
from daoflow_operator.status import Observation, decide

from objects import free, pvc_destination, restore, run, s3_destination, allowed, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
VOLUME = {"type": "volume", "persistentVolumeClaim": {"claimName": "data", "subPath": "app"}}


def lease(holder="r0", uid="uid-r0", rv="11"):
    return {"metadata": {"name": targets.lease_name("pvc/data"), "namespace": "ns", "uid": "lease-uid",
                         "resourceVersion": rv},
            "spec": {"holderIdentity": f"{holder}/{uid}", "leaseTransitions": 2}}


def holder(name="r0", uid="uid-r0", final=False):
    return {"metadata": {"name": name, "uid": uid},
            "status": {"completionTime": "2026-11-27T11:00:00Z"} if final else {"phase": "Running"}}


def pod(restore_name="r0", uid="uid-r0", phase="Running"):
    return {"metadata": {"name": f"{restore_name}-restore-abcde",
                         "labels": {"backup.daoflow.dev/restore": restore_name, "backup.daoflow.dev/restore-uid": uid}},
            "status": {"phase": phase}}


def cond(st, ctype):
    return status.get_condition(st, ctype)


# -- the target and its Lease ------------------------------------------------------------------


def test_the_key_is_the_plans_target_a_whole_claim_or_a_databases_secret():
    assert targets.key(VOLUME) == "pvc/data"  # subPaths nest, so the claim is locked as a whole
    assert targets.key({"type": "postgres", "database": {"secretRef": {"name": "db"}}}) == "postgres/db"
    assert targets.key({"type": "volume"}) is None and targets.key(None) is None
    in_place = planning.planned_target(models.BackupRestoreSpec.model_validate(restore()["spec"]), run())
    assert targets.key(in_place.dump()) == "pvc/data"


def test_the_lease_name_is_fixed_valid_and_distinct_per_target():
    name = targets.lease_name("pvc/data")
    assert name == targets.lease_name("pvc/data") and name.startswith("daoflow-target-")
    assert len(name) <= 63 and name == name.lower()
    assert name != targets.lease_name("postgres/data") != targets.lease_name("pvc/data2")


def test_no_lease_and_no_pod_is_free():
    assert targets.judge("pvc/data", restore(), None, None, []).state == "free"


def test_a_lease_of_this_restore_is_ours_whatever_its_age():
    r = restore()
    judged = targets.judge("pvc/data", r, lease("r1", "restore-uid"))
    assert judged.state == "ours"
    assert targets.holder_to_read(lease("r1", "restore-uid"), r) is None  # nothing more to read


def test_a_live_holder_makes_it_busy_and_is_named():
    r = restore()
    assert targets.holder_to_read(lease(), r) == "r0"
    judged = targets.judge("pvc/data", r, lease(), holder())
    assert (judged.state, judged.restore, judged.pod_running) == ("busy", "r0", False)
    assert judged.message == ("PersistentVolumeClaim data is being restored by BackupRestore r0; "
                              "this restore starts when that one ends")


@pytest.mark.parametrize("the_holder", [None, holder(final=True), holder(uid="uid-of-a-namesake")],
                         ids=["gone", "ended", "namesake"])
def test_a_holder_that_ended_or_is_gone_leaves_a_stale_lease_to_take_over(the_holder):
    judged = targets.judge("pvc/data", restore(), lease(), the_holder, [pod(phase="Succeeded")])
    assert (judged.state, judged.restore) == ("stale", "r0")


def test_a_pod_still_running_on_the_target_keeps_it_busy_though_its_restore_ended():
    for the_lease, the_holder in ((lease(), holder(final=True)), (None, None)):
        judged = targets.judge("pvc/data", restore(), the_lease, the_holder, [pod()])
        assert (judged.state, judged.pod_running) == ("busy", True)
        assert judged.message == ("PersistentVolumeClaim data is still written by pod r0-restore-abcde of "
                                  "BackupRestore r0, which has ended; this restore starts when that pod is gone")
    # This restore's own pod (after a crash between the Job and the status) does not block it.
    assert targets.judge("pvc/data", restore(), None, None, [pod("r1", "restore-uid")]).state == "free"


def test_the_lease_names_its_holder_and_a_take_over_is_conditional():
    r = restore()
    new = targets.build_lease(r, free(), T0)
    assert new["metadata"]["name"] == targets.lease_name("pvc/data") and "resourceVersion" not in new["metadata"]
    assert new["metadata"]["ownerReferences"] == [
        {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore", "name": "r1", "uid": "restore-uid"}]
    assert new["metadata"]["annotations"] == {"backup.daoflow.dev/target": "pvc/data"}
    assert new["spec"] == {"holderIdentity": "r1/restore-uid", "acquireTime": "2026-11-27T12:00:00.000000Z",
                           "renewTime": "2026-11-27T12:00:00.000000Z", "leaseTransitions": 0}
    assert "leaseDurationSeconds" not in new["spec"]  # held until the restore ends, however long
    taken = targets.build_lease(r, targets.judge("pvc/data", r, lease(), holder(final=True), []), T0)
    assert taken["metadata"]["resourceVersion"] == "11" and taken["spec"]["leaseTransitions"] == 3


def test_the_job_and_its_pod_carry_the_targets_label():
    from daoflow_operator import jobs
    from daoflow_operator.config import Config

    r = restore()
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), pvc_destination()).plan
    job = jobs.build_job(r, plan.dump(), pvc_destination(), Config())
    assert job["spec"]["template"]["metadata"]["labels"][targets.LABEL_TARGET] == targets.target_hash("pvc/data")


# -- decide(): queued behind the holder --------------------------------------------------------


def busy(name="r0"):
    return targets.judge("pvc/data", restore(), lease(name, f"uid-{name}"), holder(name, f"uid-{name}"))


def pending():
    return Observation(run=run(), destination=s3_destination())


def test_a_real_restore_into_a_busy_target_is_queued_with_target_busy_and_no_job():
    d = decide(restore(), Observation(run=run(), destination=s3_destination(), target=busy()), T0)
    assert not d.create_job and d.acquire is None and "jobRef" not in d.status
    assert d.status["phase"] == "Queued"
    assert cond(d.status, "Validated")["status"] == "True"
    assert (cond(d.status, "Started")["status"], cond(d.status, "Started")["reason"]) == ("False", "TargetBusy")
    ready = cond(d.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetBusy") and "BackupRestore r0" in ready["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Validated"), ("Normal", "TargetBusy")]
    assert [(a["step"], a["outcome"]) for a in d.status["auditTrail"]] == [("validate", "ok"), ("queue", "waiting")]
    assert d.wait is not None and d.wait.reason == "TargetBusy"  # the shell backs off; the holder's end wakes it


def test_an_unchanged_busy_target_changes_nothing_and_emits_nothing():
    r = restore()
    r["status"] = decide(r, Observation(run=run(), destination=s3_destination(), target=busy()), T0).status
    again = decide(r, Observation(run=run(), destination=s3_destination(), target=busy()), T0 + timedelta(minutes=3))
    assert not status.changed(r["status"], again.status)
    assert again.events == [] and not again.create_job


def test_a_new_holder_is_told_once_more_then_the_free_target_is_taken_and_the_job_created():
    r = restore()
    r["status"] = decide(r, Observation(run=run(), destination=s3_destination(), target=busy("r0")), T0).status
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=busy("r7")), T0 + timedelta(seconds=5))
    assert [e.reason for e in d.events] == ["TargetBusy"] and "BackupRestore r7" in cond(d.status, "Ready")["message"]
    r["status"] = d.status
    went = cond(r["status"], "Started")["lastTransitionTime"]
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0 + timedelta(minutes=1))
    assert d.create_job and d.acquire == free() and d.status["phase"] == "Queued"
    assert cond(d.status, "Started")["reason"] == "JobCreated"
    assert cond(d.status, "Started")["lastTransitionTime"] != went
    assert [e.reason for e in d.events] == ["Queued"]  # validated once, when it began to wait
    assert [(a["step"], a["outcome"]) for a in d.status["auditTrail"]] == [
        ("validate", "ok"), ("queue", "waiting"), ("queue", "waiting"), ("queue", "ok")]


def test_a_pod_that_still_runs_on_the_target_is_looked_at_again_soon():
    on_target = targets.judge("pvc/data", restore(), None, None, [pod()])
    d = decide(restore(), Observation(run=run(), destination=s3_destination(), target=on_target, authorization=allowed(), still_authorized=still()), T0, poll_interval=3)
    assert d.status["phase"] == "Queued" and d.wait is None and d.requeue_after == 3


def test_a_dry_run_never_waits_for_the_target():
    d = decide(restore(dry_run=True), Observation(run=run(), destination=s3_destination(), target=busy(),
                                                  authorization=allowed(), still_authorized=still()), T0)
    assert d.status["phase"] == "Planned" and d.acquire is None and d.release_target is None


def test_a_real_restore_is_never_decided_without_knowing_who_holds_its_target():
    with pytest.raises(ValueError, match="holder"):
        decide(restore(), pending(), T0)


def test_the_end_of_a_restore_lets_go_of_its_target_and_a_rejection_without_it_does_not():
    r = restore()
    r["status"] = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0).status
    done = decide(r, Observation(job_missing=True), T0 + timedelta(minutes=1))
    assert done.status["completionTime"] and done.release_target == "pvc/data"
    rejected = decide(restore(), Observation(run=run(phase="Failed"), destination=s3_destination()), T0)
    assert rejected.status["phase"] == "Rejected" and rejected.release_target is None
    # Rejected after it took the target (the plan changed in between): it lets go too.
    ours = targets.judge("pvc/data", restore(), lease("r1", "restore-uid"))
    drifted = decide(restore(expectedPlanHash="0" * 64),
                     Observation(run=run(), destination=s3_destination(), target=ours, authorization=allowed(), still_authorized=still()), T0)
    assert drifted.status["phase"] == "Failed" and drifted.release_target == "pvc/data"
