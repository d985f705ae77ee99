"""A restore whose pod cannot start fails fast; Queued and Running say what the pod really does."""

from datetime import datetime, timedelta, timezone

import pytest

from daoflow_operator import pods, status
from daoflow_operator.status import Observation, decide

from objects import claim, event, pod, pvc_destination, restore, run, s3_destination, free, allowed, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)  # the pods' creation time
POD = "r1-restore-x7k2p"


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def active_job(**extra):
    """A Job the controller counts as active, with a start time, but no ready pod: not yet running."""
    return {"metadata": {"name": "r1-restore", "uid": "job-uid"},
            "status": {"active": 1, "ready": 0, "startTime": "2026-11-27T12:00:00Z", **extra}}


def queued(the_run=None, destination=None, **spec):
    """A real restore whose Job was just created."""
    r = restore(**spec)
    d = decide(r, Observation(run=the_run or run(), destination=destination or s3_destination(), target=free(), authorization=allowed(), still_authorized=still(),
                              target_claim=claim()), T0)
    assert d.create_job and d.status["phase"] == "Queued"
    return {**r, "status": d.status}


def observe(r, pod_list, events=(), at=T0 + timedelta(seconds=10), job=None, **kw):
    return decide(r, Observation(job=job or active_job(), pods=pod_list, pod_events=list(events)), at, **kw)


# -- the preflight check, before any Job ---------------------------------------------------

def test_a_real_restore_into_a_missing_claim_is_rejected_without_a_job():
    d = decide(restore(), Observation(run=run(), destination=s3_destination(), target_claim=None, target=free(), authorization=allowed(), still_authorized=still()), T0)
    assert not d.create_job and "jobRef" not in d.status
    assert d.status["phase"] == "Rejected" and d.status["completionTime"]
    assert cond(d.status, "Validated") | {"status": "False", "reason": "TargetNotFound"} == cond(d.status, "Validated")
    assert cond(d.status, "Ready")["status"] == "False"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "TargetNotFound")]
    assert [(a["step"], a["outcome"]) for a in d.status["auditTrail"]] == [("validate", "rejected")]


def test_a_dry_run_into_a_missing_claim_shows_the_failed_check_and_is_rejected():
    d = decide(restore(dry_run=True), Observation(run=run(), destination=s3_destination(), target_claim=None, target=free(), authorization=allowed()), T0)
    assert d.status["phase"] == "Rejected" and not d.create_job
    check = next(c for c in d.status["plan"]["preflightChecks"] if c["name"] == "targetClaim")
    assert check == {"name": "targetClaim", "status": "fail", "detail": "PersistentVolumeClaim data does not exist"}
    assert d.status["plan"]["isReady"] is False


def test_a_bound_claim_queues_the_job_with_an_honest_message():
    r = queued()
    assert cond(r["status"], "Ready")["message"] == "Job r1-restore created; waiting for its pod to start"
    check = next(c for c in r["status"]["plan"]["preflightChecks"] if c["name"] == "targetClaim")
    assert check["status"] == "ok"


# -- an honest Running ----------------------------------------------------------------------

def test_an_active_job_whose_pod_is_pending_stays_queued_and_says_why():
    r = queued()
    d = observe(r, [pod(waiting="ContainerCreating")])
    assert d.status["phase"] == "Queued"
    assert cond(d.status, "Ready")["message"] == f"Job r1-restore created; pod {POD} is Pending: ContainerCreating"
    assert cond(d.status, "Started")["reason"] == "JobCreated"
    assert d.events == [] and [a["step"] for a in d.status["auditTrail"]] == ["validate", "queue"]
    assert d.requeue_after == 5.0 and not d.delete_job


def test_a_job_without_pods_yet_is_waiting_and_looked_at_again():
    r = queued()
    d = observe(r, [], poll_interval=2.0)
    assert d.status["phase"] == "Queued" and d.requeue_after == 2.0
    assert not status.changed(r["status"], d.status)  # the message it was queued with already says so


def test_the_restore_runs_only_when_the_runner_container_runs():
    r = queued()
    r = {**r, "status": observe(r, [pod(waiting="ContainerCreating")]).status}
    d = observe(r, [pod(phase="Running", running=True)], at=T0 + timedelta(seconds=20))
    # Running: looked at again once per progress interval (the default 10 s), for its progress.
    assert d.status["phase"] == "Running" and d.requeue_after == 10.0
    assert cond(d.status, "Started")["reason"] == "JobRunning"
    assert [e.reason for e in d.events] == ["Fetching"]
    assert d.status["auditTrail"][-1]["step"] == "fetch"


def test_a_job_with_a_ready_pod_is_running_without_reading_pods():
    r = queued()
    d = decide(r, Observation(job=active_job(ready=1)), T0)
    assert d.status["phase"] == "Running"


def test_job_outcome_does_not_call_an_active_job_running():
    assert status.job_outcome(active_job()) == "queued"
    assert status.job_outcome(active_job(), [pod(waiting="ContainerCreating")]) == "queued"
    assert status.job_outcome(active_job(), [pod(phase="Running", running=True)]) == "running"
    assert status.job_outcome(active_job(ready=1)) == "running"
    finished = {"exitCode": 0, "startedAt": "2026-11-27T12:00:01Z"}
    assert status.job_outcome(active_job(), [pod(phase="Succeeded", terminated=finished)]) == "running"


def test_a_running_restore_is_not_set_back_to_queued():
    r = queued()
    r = {**r, "status": observe(r, [pod(phase="Running", running=True)]).status}
    d = decide(r, Observation(job=active_job()), T0 + timedelta(minutes=1))
    assert d.status["phase"] == "Running" and not status.changed(r["status"], d.status)
    assert d.events == [] and d.requeue_after is None


def test_a_repeated_pending_observation_changes_nothing_and_emits_nothing():
    r = queued()
    r = {**r, "status": observe(r, [pod(waiting="ContainerCreating")]).status}
    again = observe(r, [pod(waiting="ContainerCreating")], at=T0 + timedelta(minutes=2))
    assert not status.changed(r["status"], again.status)
    assert again.events == [] and not again.delete_job and again.requeue_after == 5.0


# -- a pod that cannot start ----------------------------------------------------------------

@pytest.mark.parametrize("waiting", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"])
def test_an_image_that_cannot_be_pulled_fails_the_restore(waiting):
    d = observe(queued(), [pod(waiting=waiting, waiting_message="pull access denied")])
    assert_failed(d, "ImagePullFailed")
    assert "cannot pull image ghcr.io/daoflow-dev/daoflow-operator:test" in cond(d.status, "Succeeded")["message"]
    assert "pull access denied" in cond(d.status, "Succeeded")["message"]


@pytest.mark.parametrize("waiting", ["CreateContainerConfigError", "CreateContainerError"])
def test_a_container_that_cannot_be_created_fails_with_the_kubelets_message(waiting):
    d = observe(queued(), [pod(waiting=waiting, waiting_message='configmap "x" not found')])
    assert_failed(d, "PodStartFailed")
    assert cond(d.status, "Succeeded")["message"].endswith(f'{waiting}: configmap "x" not found')


def test_an_unschedulable_pod_whose_target_claim_is_missing_fails_with_target_not_found():
    message = '0/2 nodes are available: persistentvolumeclaim "data" not found. preemption: 0/2 nodes are available'
    d = observe(queued(), [pod(scheduled=False, unschedulable=message)])
    assert_failed(d, "TargetNotFound")
    assert "the target PersistentVolumeClaim data does not exist" in cond(d.status, "Succeeded")["message"]


def test_an_unschedulable_pod_whose_destination_claim_is_missing_fails_with_destination_not_found():
    r = queued(the_run=run(destination="vol"), destination=pvc_destination())
    message = '0/1 nodes are available: persistentvolumeclaim "backups" not found.'
    d = observe(r, [pod(scheduled=False, unschedulable=message)])
    assert_failed(d, "DestinationNotFound")
    assert "the destination's PersistentVolumeClaim backups does not exist" in cond(d.status, "Succeeded")["message"]


def test_a_missing_secret_reported_by_the_kubelet_fails_with_secret_not_found():
    mount = 'MountVolume.SetUp failed for volume "s3-credentials" : secret "s3-creds" not found'
    d = observe(queued(), [pod(waiting="ContainerCreating")],
                events=[event("Scheduled", "assigned", type_="Normal"), event("FailedMount", mount)])
    assert_failed(d, "SecretNotFound")
    assert "Secret s3-creds" in cond(d.status, "Succeeded")["message"]


def test_a_missing_claim_reported_by_the_kubelet_fails_with_target_not_found():
    mount = ('Unable to attach or mount volumes: error processing PVC ns/data: failed to fetch PVC from API server: '
             'persistentvolumeclaims "data" not found')
    d = observe(queued(), [pod(waiting="ContainerCreating")], events=[event("FailedMount", mount)])
    assert_failed(d, "TargetNotFound")


def test_normal_events_and_other_warnings_do_not_fail_the_restore():
    d = observe(queued(), [pod(waiting="ContainerCreating")],
                events=[event("Pulling", 'Pulling image "x"', type_="Normal"),
                        event("FailedMount", "MountVolume.SetUp failed: timed out waiting for the condition")])
    assert d.status["phase"] == "Queued" and not d.delete_job


def test_an_unschedulable_pod_waits_until_the_timeout_then_fails():
    message = "0/1 nodes are available: 1 node(s) had untolerated taint {daoflow.dev/simulated: true}."
    r = queued()
    early = observe(r, [pod(scheduled=False, unschedulable=message)], at=T0 + timedelta(seconds=100),
                    unschedulable_timeout=300)
    assert early.status["phase"] == "Queued" and not early.delete_job and early.events == []
    assert f"pod {POD} is Pending: Unschedulable: {message}" in cond(early.status, "Ready")["message"]
    assert early.requeue_after == 5.0
    # Close to the timeout, the next look comes when it runs out, not later.
    near = observe(r, [pod(scheduled=False, unschedulable=message)], at=T0 + timedelta(seconds=298),
                   unschedulable_timeout=300)
    assert near.requeue_after == 2.0
    late = observe({**r, "status": early.status}, [pod(scheduled=False, unschedulable=message)],
                   at=T0 + timedelta(seconds=300), unschedulable_timeout=300)
    assert_failed(late, "Unschedulable")
    assert "was not scheduled within 300s" in cond(late.status, "Succeeded")["message"]


def assert_failed(d, reason):
    st = d.status
    assert st["phase"] == "Failed" and st["completionTime"]
    assert cond(st, "Succeeded") | {"status": "False", "reason": reason} == cond(st, "Succeeded")
    assert cond(st, "Ready") | {"status": "False", "reason": reason} == cond(st, "Ready")
    assert [(a["step"], a["outcome"]) for a in st["auditTrail"]][-2:] == [("execute", "failed"), ("record", "failed")]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]
    assert d.delete_job and not d.create_job and d.requeue_after is None
    assert status.job_to_delete(st) == "r1-restore"
    # The record is final: the next pass changes nothing and deletes again only through job_to_delete.
    again = decide({**restore(), "status": st}, Observation(job=active_job(), pods=[]), T0 + timedelta(hours=1))
    assert again.status is st and not again.delete_job


def test_only_a_restore_whose_pod_could_not_start_has_a_job_to_delete():
    assert status.job_to_delete({}) is None
    failed = {"completionTime": "x", "jobRef": {"name": "r1-restore"},
              "conditions": [{"type": "Succeeded", "status": "False", "reason": "DeadlineExceeded"}]}
    assert status.job_to_delete(failed) is None
    failed["conditions"][0]["reason"] = "ImagePullFailed"
    assert status.job_to_delete(failed) == "r1-restore"
    assert status.job_to_delete({**failed, "completionTime": None}) is None


# -- the pure pod helpers -------------------------------------------------------------------

def test_events_are_read_only_for_a_scheduled_pod_that_is_still_pending():
    assert pods.events_needed([]) is None
    assert pods.events_needed([pod(waiting="ContainerCreating")]) == f"{POD}-uid"
    assert pods.events_needed([pod(scheduled=False, unschedulable="x")]) is None
    assert pods.events_needed([pod(waiting="ImagePullBackOff")]) is None
    assert pods.events_needed([pod(phase="Running", running=True)]) is None


def test_a_job_without_pods_has_its_own_events_read():
    assert pods.events_needed([], active_job()) == "job-uid"


def job_event(message: str, first="2026-11-27T12:00:02Z") -> dict:
    e = event(reason="FailedCreate", message=message, pod_name="r1-restore")
    e["involvedObject"] = {"kind": "Job", "name": "r1-restore", "uid": "job-uid"}
    return {**e, "firstTimestamp": first}


SA_MISSING = ('Error creating: pods "r1-restore-x7k2p" is forbidden: error looking up service account '
              'ns/restore-irsa: serviceaccount "restore-irsa" not found')
POD_SECURITY = ('Error creating: pods "r1-restore-x7k2p" is forbidden: violates PodSecurity "restricted:latest": '
                'seccompProfile (pod or container "runner" must set securityContext.seccompProfile.type)')
QUOTA = ('Error creating: pods "r1-restore-x7k2p" is forbidden: exceeded quota: pods, requested: pods=1, '
         'used: pods=10, limited: pods=10')


@pytest.mark.parametrize("message, reason, says", [
    (SA_MISSING, "ServiceAccountNotFound", "ServiceAccount restore-irsa does not exist"),
    (POD_SECURITY, "PodRejected", "its pod is refused by admission"),
])
def test_a_pod_the_job_cannot_create_fails_the_restore_at_once(message, reason, says):
    d = observe(queued(), [], [job_event(message)])
    assert d.status["phase"] == "Failed" and d.delete_job
    assert cond(d.status, "Succeeded")["reason"] == reason
    assert says in cond(d.status, "Succeeded")["message"] and message in cond(d.status, "Succeeded")["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]


def test_a_pod_that_cannot_be_created_for_now_waits_until_the_timeout_then_fails():
    r = queued()
    waiting = observe(r, [], [job_event(QUOTA)], at=T0 + timedelta(seconds=10), unschedulable_timeout=60)
    assert waiting.status["phase"] == "Queued" and not waiting.delete_job
    assert "exceeded quota" in cond(waiting.status, "Ready")["message"]
    assert waiting.requeue_after <= 52
    failed = observe(r, [], [job_event(QUOTA)], at=T0 + timedelta(seconds=63), unschedulable_timeout=60)
    assert failed.status["phase"] == "Failed" and cond(failed.status, "Succeeded")["reason"] == "PodCreateFailed"


def test_a_job_without_pods_or_failures_waits():
    d = observe(queued(), [], [event(reason="SuccessfulCreate", type_="Normal", pod_name="r1-restore")])
    assert d.status["phase"] == "Queued" and not d.delete_job


def test_the_newest_pod_decides_and_its_report_is_the_termination_message():
    old = pod(name="old", waiting="ImagePullBackOff", since="2026-11-27T11:00:00Z")
    new = pod(name="new", phase="Running", running=True, since="2026-11-27T12:00:00Z")
    assert pods.start([old, new], [], {}, T0, 300).state == "running"
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "message": '{"verified": true}'})
    assert pods.termination_message([pod(waiting="ContainerCreating"), done]) == '{"verified": true}'
    assert pods.termination_message([pod(waiting="ContainerCreating")]) is None
