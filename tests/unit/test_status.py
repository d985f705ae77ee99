from datetime import datetime, timedelta, timezone

from daoflow_operator import jobs, status
from daoflow_operator.status import Observation, decide

from objects import SHA, restore, run, s3_destination, free, allowed, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def apply(obj, decision):
    obj = dict(obj)
    obj["status"] = decision.status
    return obj


def cond(st, ctype):
    return status.get_condition(st, ctype)


def job(outcome="running"):
    st = {"active": 1, "ready": 1, "startTime": "x"}
    if outcome == "complete":
        st = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    if outcome == "failed":
        st = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                           "message": "Job was active longer than specified deadline"}]}
    return {"metadata": {"name": "r1-restore", "uid": "job-uid"}, "status": st}


def report(**kw):
    import json
    return json.dumps({"bytes": 1234, "files": 3, "sha256": SHA, "verified": True, "durationSeconds": 1.5, **kw})


def test_dry_run_ends_planned_and_ready_without_a_job():
    d = decide(restore(dry_run=True), Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed()), T0)
    assert not d.create_job
    assert d.status["phase"] == "Planned" and d.status["completionTime"]
    assert cond(d.status, "Ready")["status"] == "True"
    assert d.status["plan"]["isReady"]
    assert [e.reason for e in d.events] == ["Planned"]


def test_a_real_run_is_queued_then_runs_then_succeeds_with_every_step_audited():
    r = restore()
    d1 = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert d1.create_job and d1.status["phase"] == "Queued"
    assert d1.status["jobRef"] == {"name": "r1-restore"}
    r = apply(r, d1)
    d2 = decide(r, Observation(job=job("running")), T0 + timedelta(seconds=1))
    assert d2.status["phase"] == "Running" and not d2.create_job
    r = apply(r, d2)
    d3 = decide(r, Observation(job=job("complete"), report=report()), T0 + timedelta(seconds=2))
    st = d3.status
    assert st["phase"] == "Succeeded" and st["completionTime"]
    assert cond(st, "Ready")["status"] == "True" and cond(st, "ArtifactVerified")["status"] == "True"
    assert st["result"]["verified"] is True and st["result"]["files"] == 3
    assert [e["step"] for e in st["auditTrail"]] == ["validate", "queue", "fetch", "execute", "verify", "record"]
    assert "followUp" in st


def test_a_repeated_observation_changes_nothing_and_emits_nothing():
    r = restore()
    r = apply(r, decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0))
    r = apply(r, decide(r, Observation(job=job("running")), T0))
    # (Within the stall threshold: five minutes without progress would mark it Stalled.)
    again = decide(r, Observation(job=job("running")), T0 + timedelta(minutes=4))
    assert not status.changed(r["status"], again.status)
    assert again.events == [] and not again.create_job


def test_last_transition_time_moves_only_when_the_status_flips():
    r = restore()
    d1 = decide(r, Observation(run=None), T0)
    first = cond(d1.status, "Validated")["lastTransitionTime"]
    r = apply(r, d1)
    d2 = decide(r, Observation(run=run(phase="Running"), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0 + timedelta(minutes=1))
    assert cond(d2.status, "Validated")["lastTransitionTime"] == first
    assert cond(d2.status, "Validated")["reason"] == "BackupRunNotSucceeded"
    r = apply(r, d2)
    d3 = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0 + timedelta(minutes=2))
    assert cond(d3.status, "Validated")["lastTransitionTime"] != first


def test_waiting_records_one_audit_entry_and_event_per_reason():
    r = restore()
    d1 = decide(r, Observation(run=None), T0)
    assert d1.wait and d1.status["phase"] == "Pending"
    assert [e.type for e in d1.events] == ["Warning"]
    r = apply(r, d1)
    d2 = decide(r, Observation(run=None), T0 + timedelta(seconds=10))
    assert d2.wait and d2.events == [] and not status.changed(r["status"], d2.status)


def test_a_failed_run_is_rejected_for_good():
    d = decide(restore(), Observation(run=run(phase="Failed"), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert d.status["phase"] == "Rejected" and d.status["completionTime"]
    assert cond(d.status, "Validated")["reason"] == "BackupRunFailed"
    assert cond(d.status, "Ready")["status"] == "False"


def test_a_final_record_is_never_touched_again():
    r = restore(dry_run=True)
    r = apply(r, decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0))
    later = decide(r, Observation(run=None), T0 + timedelta(days=1))
    assert later.status is r["status"] and later.events == []


def test_a_failed_job_fails_the_restore_with_the_runner_reason():
    r = restore()
    r = apply(r, decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0))
    d = decide(r, Observation(job=job("failed"), report=report(verified=False, reason="ChecksumMismatch",
                                                                 message="sha256 differs")), T0)
    assert d.status["phase"] == "Failed"
    assert cond(d.status, "Succeeded")["reason"] == "ChecksumMismatch"
    assert cond(d.status, "ArtifactVerified")["status"] == "False"
    d2 = decide(r, Observation(job=job("failed")), T0)
    assert cond(d2.status, "Succeeded")["reason"] == "DeadlineExceeded"


def test_a_deleted_job_fails_the_restore_and_is_not_recreated():
    r = restore()
    r = apply(r, decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0))
    d = decide(r, Observation(job_missing=True), T0)
    assert d.status["phase"] == "Failed" and not d.create_job
    assert cond(d.status, "Succeeded")["reason"] == "JobDeleted"


def test_plan_drift_fails_the_restore():
    d = decide(restore(expectedPlanHash="0" * 64), Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert d.status["phase"] == "Failed" and cond(d.status, "Succeeded")["reason"] == "PlanDrifted"
    assert not d.create_job


def test_the_status_patch_holds_only_what_changed():
    assert status.status_patch({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": 3, "c": 4}
    assert status.status_patch({"a": 1}, {}) == {"a": None}


def test_the_audit_trail_is_bounded():
    st = {}
    for i in range(200):
        status.audit(st, T0, "validate", "waiting", f"entry {i}")
    assert len(st["auditTrail"]) == status.AUDIT_LIMIT
    assert st["auditTrail"][0]["message"] == "entry 0" and st["auditTrail"][-1]["message"] == "entry 199"


def test_job_names_are_fixed_and_short():
    assert jobs.job_name("r1") == "r1-restore"
    long = "x" * 200
    assert jobs.job_name(long) == jobs.job_name(long) and len(jobs.job_name(long)) <= 63
    assert jobs.job_name(long) != jobs.job_name("x" * 199)


def test_the_requester_recorded_at_admission_goes_into_status_and_the_audit_trail():
    r = restore()
    r["metadata"]["annotations"] = {status.REQUESTED_BY: "alice"}
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert d.status["requestedBy"] == "alice"
    assert "requested by alice" in d.status["auditTrail"][1]["message"]
