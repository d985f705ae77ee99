"""May the requester restore into the target? The question, the answer, and what the restore does with it."""

from datetime import datetime, timedelta, timezone

import pytest

from daoflow_operator import access, planning, status
from daoflow_operator.api import models
from daoflow_operator.status import Observation, decide

from objects import REQUESTER, allowed, claim, free, restore, run, s3_destination, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
PVC = access.Review("ns", "persistentvolumeclaims", "data", "pvc/data", access.Requester("alice", ("devs",)))


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def check(st_or_plan, name="targetAuthorized"):
    checks = st_or_plan["preflightChecks"] if "preflightChecks" in st_or_plan else st_or_plan["plan"]["preflightChecks"]
    return next((c for c in checks if c["name"] == name), None)


def denied():
    return access.judge(PVC, access.Answer(False))


def observed(**kw):
    return Observation(run=run(), destination=s3_destination(), target_claim=claim(), target=free(), **kw)


# -- who asked, and what is asked ---------------------------------------------------------------


def test_the_requester_and_groups_come_from_the_annotations_recorded_at_admission():
    assert access.requester(restore()) == access.Requester("alice", ("devs", "system:authenticated"))
    r = restore()
    r["metadata"]["annotations"][access.REQUESTED_BY_GROUPS] = "not json"
    assert access.requester(r) == access.Requester("alice", ())  # fewer groups can only allow less
    del r["metadata"]["annotations"][access.REQUESTED_BY_GROUPS]
    assert access.requester(r) == access.Requester("alice", ())
    r["metadata"]["annotations"] = {}
    assert access.requester(r) is None


@pytest.mark.parametrize("target, resource, name", [
    ({"type": "volume", "persistentVolumeClaim": {"claimName": "app-data"}}, "persistentvolumeclaims", "app-data"),
    ({"type": "postgres", "database": {"secretRef": {"name": "db"}}}, "secrets", "db"),
])
def test_the_target_is_asked_about_with_the_verb_restore(target, resource, name):
    who = access.Requester("bob", ("system:serviceaccounts",))
    question = access.review("ns", target, who)
    assert (question.resource, question.name) == (resource, name)
    assert access.sar_body(question) == {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "bob", "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {"namespace": "ns", "verb": "restore", "group": "", "resource": resource,
                                        "name": name}}}
    # Without a requester (the CLI): the caller's own rights.
    own = access.sar_body(access.review("ns", target))
    assert own["kind"] == "SelfSubjectAccessReview" and "user" not in own["spec"]
    assert access.review("ns", {"type": "volume"}) is None


def test_the_answer_becomes_the_check():
    ok = access.judge(PVC, access.parse_answer({"status": {"allowed": True, "reason": "RBAC: allowed by ..."}}))
    assert ok == planning.Authorization(
        "ok", "alice may restore into PersistentVolumeClaim data (the verb restore on persistentvolumeclaims/data "
              "in namespace ns)")
    no = access.judge(PVC, access.parse_answer({"status": {"allowed": False}}))
    assert no == planning.Authorization(
        "fail", "alice may not restore into PersistentVolumeClaim data: that needs the verb restore on "
                "persistentvolumeclaims/data in namespace ns (the scope backup:restore)")
    broken = access.judge(PVC, access.parse_answer({"status": {"allowed": False, "evaluationError": "webhook down"}}))
    assert broken.status == "fail" and broken.detail.endswith("; webhook down")  # anything but yes is no
    assert access.parse_answer({}) is None and access.parse_answer(None) is None  # no status: no answer


def policies(created="2026-11-27T10:00:00Z", missing=()):
    return {resource: None if resource in missing else {"metadata": {"name": name, "creationTimestamp": created}}
            for resource, name in access.RECORDING_POLICIES}


def test_the_annotations_are_trusted_only_where_the_policies_that_record_them_came_first():
    assert access.untrusted(restore(), policies()) is None
    gone = access.untrusted(restore(), policies(missing=("mutatingadmissionpolicybindings",)))
    assert gone == ("the MutatingAdmissionPolicyBinding daoflow-record-requester (manifests/scopes.yaml) is not "
                    "installed, so the annotation backup.daoflow.dev/requested-by is whatever the client wrote")
    late = access.untrusted(restore(), policies(created="2026-11-27T11:59:00Z"))
    assert "was installed after this BackupRestore was created" in late


# -- planning -------------------------------------------------------------------------------------


def spec(**kw):
    return models.BackupRestoreSpec.model_validate({"backupRunRef": {"name": "db-nightly"}, **kw})


def test_a_refused_target_fails_the_check_and_the_plan_but_keeps_its_steps():
    result = planning.plan("ns", spec(), run(), s3_destination(), claim(), denied())
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", "TargetNotAuthorized")
    assert result.verdict.message == denied().detail
    p = result.plan.dump()
    assert check(p)["status"] == "fail" and not p["isReady"] and len(p["steps"]) == 6
    # Who asks is not what the restore would do: the hash does not change.
    assert p["planHash"] == planning.plan("ns", spec(), run(), s3_destination(), claim()).plan.plan_hash


def test_an_unknown_authorization_does_not_block_and_none_leaves_the_check_out():
    unknown = planning.Authorization("unknown", "could not check")
    result = planning.plan("ns", spec(), run(), s3_destination(), claim(), unknown)
    assert result.verdict.outcome == "ready" and result.plan.is_ready and check(result.plan.dump())["status"] == "unknown"
    assert check(planning.plan("ns", spec(), run(), s3_destination(), claim()).plan.dump()) is None


def test_another_failure_comes_first():
    result = planning.plan("ns", spec(), run(), s3_destination(), None, denied())
    assert result.verdict.reason == planning.TARGET_NOT_FOUND


# -- decide ----------------------------------------------------------------------------------------


def test_a_real_restore_asks_once_right_before_its_job_and_writes_nothing_until_answered():
    d = decide(restore(), observed(), T0)
    assert d.review == access.Review("ns", "persistentvolumeclaims", "data", "pvc/data",
                                     access.Requester("alice", ("devs", "system:authenticated")))
    assert d.status == {} and not d.create_job and d.acquire is None and d.events == []

    ok = decide(restore(), observed(authorization=allowed(), still_authorized=still()), T0)
    assert ok.create_job and ok.review is None and ok.acquire is not None
    assert check(ok.status)["status"] == "ok"
    assert "alice may restore into PersistentVolumeClaim data" in ok.status["auditTrail"][1]["message"]


def test_a_refused_real_restore_is_rejected_with_a_warning_and_no_job():
    d = decide(restore(), observed(authorization=denied()), T0)
    st = d.status
    assert st["phase"] == "Rejected" and st["completionTime"]
    assert not d.create_job and d.acquire is None and d.review is None
    assert cond(st, "Validated") | {"lastTransitionTime": None} == {
        "type": "Validated", "status": "False", "reason": "TargetNotAuthorized", "message": denied().detail,
        "lastTransitionTime": None, "observedGeneration": 1}
    assert cond(st, "Ready")["reason"] == "TargetNotAuthorized"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "TargetNotAuthorized")]
    assert check(st)["status"] == "fail"


def test_a_refused_restore_that_took_its_target_lets_go_of_it():
    from daoflow_operator import targets

    ours = targets.Holder("ours", "pvc/data", {"metadata": {"resourceVersion": "3"}}, restore="r1")
    d = decide(restore(), Observation(run=run(), destination=s3_destination(), target=ours, authorization=denied()), T0)
    assert d.status["phase"] == "Rejected" and d.release_target == "pvc/data"


def test_without_a_recorded_requester_a_real_restore_is_refused_without_asking():
    r = restore()
    r["metadata"]["annotations"] = {}
    d = decide(r, observed(), T0)
    assert d.review is None and d.status["phase"] == "Rejected" and not d.create_job
    assert cond(d.status, "Ready")["reason"] == "TargetNotAuthorized"
    assert cond(d.status, "Ready")["message"].startswith(
        "the requester is unknown: the annotation backup.daoflow.dev/requested-by was not recorded at admission")


def test_a_restore_that_waits_is_not_asked_and_its_check_does_not_change():
    from daoflow_operator import targets

    busy = targets.Holder("busy", "pvc/data", {}, restore="r0", message="PersistentVolumeClaim data is being "
                          "restored by BackupRestore r0; this restore starts when that one ends")
    r = restore()
    d1 = decide(r, Observation(run=run(), destination=s3_destination(), target_claim=claim(), target=busy), T0)
    assert d1.review is None and d1.status["phase"] == "Queued"
    assert check(d1.status) == {"name": "targetAuthorized", "status": "unknown", "detail":
                                "not checked yet: whether alice may restore into PersistentVolumeClaim data is "
                                "asked right before the Job is created"}
    r["status"] = d1.status
    d2 = decide(r, Observation(run=run(), destination=s3_destination(), target_claim=claim(), target=busy),
                T0 + timedelta(minutes=1))
    assert not status.changed(r["status"], d2.status) and d2.events == []


def test_a_dry_run_asks_too_and_a_refused_one_is_planned_with_the_failed_check():
    d = decide(restore(dry_run=True), observed(), T0)
    assert d.review is not None and d.status == {}
    planned = decide(restore(dry_run=True), observed(authorization=denied()), T0)
    st = planned.status
    assert st["phase"] == "Planned" and cond(st, "Ready")["status"] == "True" and not planned.create_job
    assert cond(st, "Validated")["status"] == "True"
    assert not st["plan"]["isReady"] and check(st)["status"] == "fail"
    assert cond(st, "Ready")["message"].endswith("; a real restore would be refused: " + denied().detail)
    assert [e.reason for e in planned.events] == ["Planned"]
    fine = decide(restore(dry_run=True), observed(authorization=allowed()), T0)
    assert fine.status["plan"]["isReady"] and "is ready" in cond(fine.status, "Ready")["message"]


def test_the_requester_annotation_is_the_one_status_uses():
    assert status.REQUESTED_BY == access.REQUESTED_BY == next(iter(REQUESTER))
