"""A restore that cannot run fails fast and says why, instead of waiting for the Job's deadline."""

from __future__ import annotations

import time

import pytest

from backups import backup_run, condition, destination, events, jobs, restore, restore_status, settle, wait_phase
from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster


def test_a_restore_into_a_missing_claim_is_rejected_within_seconds_and_no_job_exists(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    began = time.monotonic()
    name = restore(cluster, namespace, target={"persistentVolumeClaim": {"claimName": "no-such-claim"}})
    status = wait_phase(cluster, namespace, name, "Rejected", timeout=30)
    assert time.monotonic() - began < 15

    validated = condition(status, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "TargetNotFound")
    assert "PersistentVolumeClaim no-such-claim does not exist" in validated["message"]
    assert condition(status, "Ready")["status"] == "False" and status["completionTime"]
    check = next(c for c in status["plan"]["preflightChecks"] if c["name"] == "targetClaim")
    assert check["status"] == "fail"
    assert "TargetNotFound" in [e["reason"] for e in events(cluster, namespace, name) if e["type"] == "Warning"]
    settle()
    assert jobs(cluster, namespace) == []


def test_a_dry_run_into_a_missing_claim_shows_the_failed_check(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace, dryRun=True, target={"persistentVolumeClaim": {"claimName": "no-such-claim"}})
    status = wait_phase(cluster, namespace, name, "Rejected", timeout=30)
    assert condition(status, "Validated")["reason"] == "TargetNotFound"
    assert {c["name"]: c["status"] for c in status["plan"]["preflightChecks"]}["targetClaim"] == "fail"
    assert jobs(cluster, namespace) == []


def test_a_pod_no_node_will_take_stays_queued_then_fails_unschedulable_and_its_job_is_deleted(
        cluster, namespace, start_operator):
    # No node carries this label, so the scheduler never places the restore pod.
    start_operator(DAOFLOW_JOB_NODE_SELECTOR={"daoflow.dev/no-such-node": "true"},
                   DAOFLOW_UNSCHEDULABLE_TIMEOUT_SECONDS="8", DAOFLOW_POD_START_POLL_SECONDS="1")
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)

    # Honest while it waits: Queued, never Running, and the reason comes from the pod.
    queued = wait_until(lambda: (s := restore_status(cluster, namespace, name)).get("phase") == "Queued"
                        and "Unschedulable" in condition(s, "Ready").get("message", "") and s,
                        timeout=30, what="Queued with the scheduler's reason")
    assert condition(queued, "Started")["reason"] == "JobCreated"

    status = wait_phase(cluster, namespace, name, "Failed", timeout=60)
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Unschedulable")
    assert "was not scheduled within 8s" in succeeded["message"]
    assert [(a["step"], a["outcome"]) for a in status["auditTrail"]][-2:] == [("execute", "failed"),
                                                                                ("record", "failed")]
    assert "fetch" not in [a["step"] for a in status["auditTrail"]]
    reasons = [e["reason"] for e in events(cluster, namespace, name)]
    assert "Unschedulable" in reasons and "Fetching" not in reasons
    wait_until(lambda: [j for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp")] == [],
               timeout=30, what="the Job to be deleted")
