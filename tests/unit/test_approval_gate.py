"""A restore with spec.approvalRef: waiting for the decision, and the six checks at dispatch. Pure."""

from datetime import datetime, timedelta, timezone

import pytest

from daoflow_operator import access, approvals, planning, status
from daoflow_operator.status import Observation, decide

from objects import allowed, claim, free, restore, run, s3_destination, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
BOB = access.Requester("bob", ("system:authenticated",))


def today_hash() -> str:
    return planning.plan("ns", planning.models.BackupRestoreSpec.model_validate(restore()["spec"]), run(),
                         s3_destination(), claim()).plan.plan_hash


def approval(decision="Approved", by="bob", plan=None, run_name="db-nightly", ttl=3600, used=None, **status_extra):
    st = {**status_extra}
    if decision:
        st.update(decision=decision, comment="checked", decidedBy=by, decidedByGroups='["system:authenticated"]')
    if used:
        st["usedBy"] = used
    return {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "RestoreApproval",
            "metadata": {"name": "ok-1", "namespace": "ns", "resourceVersion": "99",
                         "creationTimestamp": "2026-11-27T11:30:00Z",
                         "annotations": {"backup.daoflow.dev/requested-by": "alice"}},
            "spec": {"backupRunRef": {"name": run_name}, "planHash": plan or today_hash(), "ttlSeconds": ttl},
            "status": st}


def gated():
    return restore(approvalRef={"name": "ok-1"})


def observed(**kw):
    return Observation(**{"run": run(), "destination": s3_destination(), "target_claim": claim(), "target": free(),
                          **kw})


def answered(**kw):
    return observed(authorization=allowed(), still_authorized=still(), **kw)


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def test_an_undecided_approval_holds_the_restore_in_awaiting_approval_until_it_expires():
    d = decide(gated(), observed(approval=approval(decision=None)), T0)
    assert d.status["phase"] == "AwaitingApproval" and not d.create_job and d.review is None
    assert cond(d.status, "Approved")["status"] == "Unknown"
    assert cond(d.status, "Ready")["reason"] == "AwaitingApproval"
    assert cond(d.status, "Ready")["message"] == ("waiting for RestoreApproval ok-1 to be decided by a user with the "
                                                  "scope approvals:decide (it expires at 2026-11-27T12:30:00Z)")
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Validated"), ("Normal", "AwaitingApproval")]
    assert d.requeue_after == 1800  # the expiry, before the wait deadline (12:59)
    # A repeated pass changes nothing: no event, no write.
    again = decide({**gated(), "status": d.status}, observed(approval=approval(decision=None)), T0 + timedelta(seconds=5))
    assert again.events == [] and not status.changed(d.status, again.status)


def test_a_missing_approval_is_waited_for():
    d = decide(gated(), observed(approval=None), T0)
    assert d.status["phase"] == "AwaitingApproval" and cond(d.status, "Ready")["reason"] == "ApprovalNotFound"
    assert ("Warning", "ApprovalNotFound") in [(e.type, e.reason) for e in d.events]


def test_an_approved_one_asks_whether_the_decider_may_still_approve_then_claims_it_and_creates_one_job():
    first = decide(gated(), observed(approval=approval()), T0)
    assert first.approver == access.approver_recheck("ns", "ok-1", BOB) and first.review and first.recheck
    assert access.sar_body(first.approver)["spec"]["resourceAttributes"] == {
        "namespace": "ns", "verb": "approve", "group": "backup.daoflow.dev", "resource": "restoreapprovals",
        "name": "ok-1"}
    yes = access.judge_approver(first.approver, access.Answer(True))
    d = decide(gated(), answered(approval=approval(decidedTime="2026-11-27T11:40:00Z"), approver_authorized=yes), T0)
    assert d.create_job and d.status["approvedBy"] == "bob" and d.status["phase"] == "Queued"
    assert d.claim_approval == ("ok-1", {"metadata": {"resourceVersion": "99"},
                                         "status": {"usedBy": {"name": "r1", "uid": "restore-uid"},
                                                    "usedTime": "2026-11-27T12:00:00Z", "phase": "Used"}})
    approved = cond(d.status, "Approved")
    assert approved["status"] == "True" and approved["message"] == \
        f"approved by bob in RestoreApproval ok-1 (checked) for plan {today_hash()[:12]}"
    entry = next(e for e in d.status["auditTrail"] if e["message"].startswith("approved by bob"))
    assert "decided at 2026-11-27T11:40:00Z" in entry["message"] and "bob may still approve" in entry["message"]
    # Claimed by this restore before a crash: no second claim, the Job is adopted.
    mine = approval(used={"name": "r1", "uid": "restore-uid"})
    again = decide(gated(), answered(approval=mine, approver_authorized=yes), T0)
    assert again.create_job and again.claim_approval is None


@pytest.mark.parametrize("kwargs, requester, reason, message", [
    ({"decision": "Rejected"}, "alice", "ApprovalRejected", "RestoreApproval ok-1 was rejected by bob (checked)"),
    ({"ttl": 60}, "alice", "ApprovalExpired",
     "RestoreApproval ok-1 expired at 2026-11-27T11:31:00Z (60 s after its creation, spec.ttlSeconds)"),
    ({"plan": "c" * 64}, "alice", "ApprovalPlanMismatch", "RestoreApproval ok-1 approved plan cccccccccccc of "
     "BackupRun db-nightly, but today's plan is {h} of BackupRun db-nightly: request an approval of today's plan"),
    ({"run_name": "other"}, "alice", "ApprovalPlanMismatch", "RestoreApproval ok-1 approved plan {h} of BackupRun "
     "other, but today's plan is {h} of BackupRun db-nightly: request an approval of today's plan"),
    ({"by": "alice"}, "alice", "SelfApproval", "RestoreApproval ok-1 was decided by alice, who requested this "
     "restore: a restore needs the approval of someone else"),
    ({"used": {"name": "r0", "uid": "other-uid"}}, "alice", "ApprovalAlreadyUsed",
     "RestoreApproval ok-1 was already used by BackupRestore r0; an approval is good for one restore"),
])
def test_each_refusal_has_its_reason_a_warning_and_no_job(kwargs, requester, reason, message):
    message = message.format(h=today_hash()[:12])
    d = decide(gated(), answered(approval=approval(**kwargs)), T0)
    assert d.status["phase"] == "Rejected" and not d.create_job and d.claim_approval is None
    for ctype in ("Approved", "Ready", "Validated"):
        assert cond(d.status, ctype)["reason"] == reason and cond(d.status, ctype)["status"] == "False"
    assert cond(d.status, "Ready")["message"] == message
    assert ("Warning", reason, message) in [(e.type, e.reason, e.message) for e in d.events]
    assert "approvedBy" not in d.status and d.status["completionTime"]


def test_a_decider_who_lost_the_verb_approve_gets_no_job():
    question = access.approver_recheck("ns", "ok-1", BOB)
    no = access.judge_approver(question, access.Answer(False))
    d = decide(gated(), answered(approval=approval(), approver_authorized=no), T0)
    assert d.status["phase"] == "Rejected" and not d.create_job
    assert cond(d.status, "Ready")["reason"] == "ApproverNoLongerAuthorized"
    assert cond(d.status, "Ready")["message"] == (
        "bob, who decided RestoreApproval ok-1, may no longer approve it: that needs the verb approve on "
        "restoreapprovals.backup.daoflow.dev/ok-1 in namespace ns (the scope approvals:decide), checked again at "
        "dispatch, right before the Job would have been created")


def test_a_dry_run_ignores_the_approval():
    d = decide(restore(dry_run=True, approvalRef={"name": "ok-1"}), observed(authorization=allowed()), T0)
    assert d.status["phase"] == "Planned"


def test_the_approval_shows_its_expiry_when_its_decision_was_seen_and_expired_when_unused():
    patch, again = approvals.status_patch(approval(decision=None), T0)
    assert patch == {"expiresAt": "2026-11-27T12:30:00Z", "phase": "Pending"} and again == 1801
    patch, _ = approvals.status_patch(approval(), T0)
    assert patch == {"expiresAt": "2026-11-27T12:30:00Z", "phase": "Approved", "decidedTime": "2026-11-27T12:00:00Z"}
    late = T0 + timedelta(hours=1)
    assert approvals.status_patch(approval(decision=None, expiresAt="2026-11-27T12:30:00Z"), late) == \
        ({"phase": "Expired"}, None)
    assert approvals.phase(approval(used={"name": "r1", "uid": "u"}), late) == "Used"
    assert approvals.phase(approval(decision="Rejected"), T0) == "Rejected"
    settled = approval(decision=None, expiresAt="2026-11-27T12:30:00Z", phase="Pending")
    assert approvals.status_patch(settled, T0)[0] == {}


def test_an_approved_restore_queued_behind_a_busy_target_is_queued_not_awaiting():
    from daoflow_operator import targets

    busy = targets.Holder("busy", "pvc/data", {}, restore="r0", message="PersistentVolumeClaim data is being "
                          "restored by BackupRestore r0; this restore starts when that one ends")
    d = decide(gated(), observed(approval=approval(), target=busy), T0)
    assert d.status["phase"] == "Queued" and cond(d.status, "Ready")["reason"] == "TargetBusy"
    assert cond(d.status, "Approved")["status"] == "True" and not d.create_job and d.claim_approval is None
