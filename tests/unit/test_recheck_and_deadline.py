"""The requester's right on the BackupRun, asked again at dispatch, and the deadline of waiting before the Job."""

from datetime import datetime, timedelta, timezone

import pydantic
import pytest

from daoflow_operator import access, planning, status, targets
from daoflow_operator.api import models
from daoflow_operator.status import Observation, decide

from objects import allowed, claim, free, restore, run, s3_destination, still

CREATED = datetime(2026, 11, 27, 11, 59, tzinfo=timezone.utc)  # objects.restore()'s creationTimestamp
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
DEADLINE = CREATED + timedelta(seconds=3600)
ALICE = access.Requester("alice", ("devs", "system:authenticated"))
RECHECK = access.recheck("ns", "db-nightly", ALICE)


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def lost():
    return access.judge_recheck(RECHECK, access.Answer(False))


def observed(**kw):
    return Observation(**{"run": run(), "destination": s3_destination(), "target_claim": claim(), "target": free(),
                          **kw})


def busy():
    return targets.Holder("busy", "pvc/data", {}, restore="r0", message="PersistentVolumeClaim data is being restored "
                          "by BackupRestore r0; this restore starts when that one ends")


# -- the question asked again at dispatch -----------------------------------------------------------


def test_the_recheck_asks_for_the_verb_restore_on_the_backup_run_in_its_group():
    assert access.sar_body(RECHECK) == {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["devs", "system:authenticated"],
                 "resourceAttributes": {"namespace": "ns", "verb": "restore", "group": "backup.daoflow.dev",
                                        "resource": "backupruns", "name": "db-nightly"}}}
    assert RECHECK.needs == "the verb restore on backupruns.backup.daoflow.dev/db-nightly in namespace ns"


def test_the_answer_names_the_user_the_verb_and_the_resource_and_says_when_it_was_asked():
    assert lost() == planning.Authorization(
        "fail", "alice may no longer restore BackupRun db-nightly: that needs the verb restore on "
                "backupruns.backup.daoflow.dev/db-nightly in namespace ns (the scope backup:restore), checked "
                "again at dispatch, right before the Job would have been created")
    ok = access.judge_recheck(RECHECK, access.Answer(True))
    assert ok.status == "ok" and ok.detail.startswith("alice may still restore BackupRun db-nightly")
    broken = access.judge_recheck(RECHECK, access.Answer(False, error="webhook down"))
    assert broken.status == "fail" and broken.detail.endswith("; webhook down")  # anything but yes is no


def test_a_real_restore_asks_both_questions_on_the_pass_that_would_create_its_job():
    d = decide(restore(), observed(), T0)
    assert d.recheck == RECHECK and d.review is not None and d.status == {} and not d.create_job
    # Answered one at a time (a pass that failed half-way): only the other one is asked.
    assert decide(restore(), observed(authorization=allowed()), T0).review is None
    assert decide(restore(), observed(still_authorized=still()), T0).recheck is None
    ok = decide(restore(), observed(authorization=allowed(), still_authorized=still()), T0)
    assert ok.create_job and ok.recheck is None and ok.review is None
    assert "alice may still restore BackupRun db-nightly" in ok.status["auditTrail"][1]["message"]


def test_a_requester_who_lost_the_scope_is_rejected_with_a_warning_and_no_job():
    target_refused = access.judge(access.Review("ns", "persistentvolumeclaims", "data", "pvc/data", ALICE),
                                  access.Answer(False))
    for target_answer in (allowed(), target_refused):
        d = decide(restore(), observed(authorization=target_answer, still_authorized=lost()), T0)
        st = d.status
        # Before the target's own refusal: a requester without the scope may restore nothing.
        assert st["phase"] == "Rejected" and st["completionTime"] and not d.create_job and d.acquire is None
        for ctype in ("Validated", "Started", "Ready"):
            assert (cond(st, ctype)["status"], cond(st, ctype)["reason"], cond(st, ctype)["message"]) == \
                ("False", "RequesterNoLongerAuthorized", lost().detail)
        assert [(e.type, e.reason, e.message) for e in d.events] == \
            [("Warning", "RequesterNoLongerAuthorized", lost().detail)]
        assert st["auditTrail"][-1] | {"time": None} == {"time": None, "step": "queue", "outcome": "rejected",
                                                         "message": lost().detail}
        assert d.release_target is None  # it never took the target
        assert decide({**restore(), "status": st}, observed(), T0 + timedelta(minutes=1)).status is st  # final


def test_an_unanswered_recheck_never_lets_a_job_be_created():
    unknown = planning.Authorization("unknown", "not asked: the policies are missing")
    d = decide(restore(), observed(authorization=allowed(), still_authorized=unknown), T0)
    assert not d.create_job and d.status["phase"] == "Rejected"
    assert cond(d.status, "Ready")["reason"] == "RequesterNoLongerAuthorized"


def test_a_restore_that_waits_asks_nothing_and_a_dry_run_is_never_rechecked():
    waiting = decide(restore(), Observation(run=None), T0)
    assert waiting.review is None and waiting.recheck is None and waiting.wait is not None
    busy_one = decide(restore(), observed(target=busy()), T0)
    assert busy_one.review is None and busy_one.recheck is None and busy_one.status["phase"] == "Queued"
    # A dry run needs only the read scope, and creates nothing to stop: the target question only.
    dry = decide(restore(dry_run=True), observed(), T0)
    assert dry.review is not None and dry.recheck is None
    planned = decide(restore(dry_run=True), observed(authorization=allowed()), T0)
    assert planned.status["phase"] == "Planned" and "still" not in str(planned.status)


# -- the wait deadline ------------------------------------------------------------------------------


def test_the_deadline_is_fixed_at_creation_and_recorded_on_the_first_pass():
    d = decide(restore(), Observation(run=None), T0)
    assert d.status["waitDeadlineTime"] == "2026-11-27T12:59:00Z"
    r = restore(waitTimeoutSeconds=30)
    assert decide(r, Observation(run=None), T0 - timedelta(seconds=45)).status["waitDeadlineTime"] == \
        "2026-11-27T11:59:30Z"
    # Without a creationTimestamp: the recorded one, so a restart does not move it.
    del r["metadata"]["creationTimestamp"]
    r["status"] = {"waitDeadlineTime": "2026-11-27T11:00:00Z"}
    assert status.wait_deadline(r, T0) == datetime(2026, 11, 27, 11, 0, tzinfo=timezone.utc)


def test_a_wait_looks_again_no_later_than_the_deadline():
    d = decide(restore(), Observation(run=None), T0)
    assert d.wait is not None and d.requeue_after == (DEADLINE - T0).total_seconds()
    d = decide(restore(), observed(target=busy()), DEADLINE - timedelta(seconds=20))
    assert d.wait is not None and d.requeue_after == 20
    on_target = targets.Holder("busy", "pvc/data", {}, restore="r0", message="a pod still runs", pod_running=True)
    assert decide(restore(), observed(target=on_target), T0, poll_interval=3).requeue_after == 3
    # A deadline less than a second away: looked at again a second later, not in a busy loop.
    assert decide(restore(), Observation(run=None), DEADLINE - timedelta(milliseconds=10)).requeue_after == 1.0


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_restore_whose_backup_run_never_appears_is_rejected_at_the_deadline(dry_run):
    r = restore(dry_run=dry_run)
    r["status"] = decide(r, Observation(run=None), T0).status
    d = decide(r, Observation(run=None), DEADLINE)
    message = ("no Job was created by the wait deadline 2026-11-27T12:59:00Z (3600 s after creation, "
               "spec.waitTimeoutSeconds); it waited for: BackupRun db-nightly does not exist (yet) in namespace ns")
    assert d.status["phase"] == "Rejected" and d.status["completionTime"] == "2026-11-27T12:59:00Z"
    assert cond(d.status, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready", "status": "False", "reason": "WaitDeadlineExceeded", "message": message,
        "lastTransitionTime": None, "observedGeneration": 1}
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "WaitDeadlineExceeded")]
    assert d.wait is None and d.requeue_after is None and not d.create_job and d.review is None


def test_a_restore_queued_behind_a_busy_target_is_rejected_at_the_deadline():
    d = decide(restore(), observed(target=busy()), DEADLINE + timedelta(seconds=1))
    assert cond(d.status, "Ready")["reason"] == "WaitDeadlineExceeded"
    assert cond(d.status, "Ready")["message"].endswith("it waited for: " + busy().message)
    assert d.release_target is None and not d.create_job


def test_after_the_deadline_no_job_is_created_even_once_everything_is_ready_and_nothing_is_asked():
    r = restore()
    r["status"] = decide(r, Observation(run=None), T0).status
    d = decide(r, observed(), DEADLINE)
    assert d.review is None and d.recheck is None and not d.create_job
    assert cond(d.status, "Ready")["reason"] == "WaitDeadlineExceeded"
    assert "BackupRun db-nightly does not exist (yet) in namespace ns (ready only after the deadline)" in \
        cond(d.status, "Ready")["message"]
    # One that holds its target already (a pass that died before its Job) lets go of it.
    ours = targets.Holder("ours", "pvc/data", {"metadata": {"resourceVersion": "3"}}, restore="r1")
    assert decide(restore(), observed(target=ours), DEADLINE).release_target == "pvc/data"


def test_once_the_job_exists_the_deadline_no_longer_counts():
    r = restore()
    r["status"] = decide(r, observed(authorization=allowed(), still_authorized=still()), T0).status
    assert r["status"]["jobRef"]
    d = decide(r, Observation(job={"metadata": {"name": "r1-restore"}, "status": {"ready": 1}}),
               DEADLINE + timedelta(hours=1))
    assert d.status["phase"] == "Running"


def test_the_wait_timeout_has_bounds():
    spec = {"backupRunRef": {"name": "x"}}
    assert models.BackupRestoreSpec.model_validate(spec).wait_timeout_seconds == 3600
    for bad in (29, 604801):
        with pytest.raises(pydantic.ValidationError):
            models.BackupRestoreSpec.model_validate({**spec, "waitTimeoutSeconds": bad})
