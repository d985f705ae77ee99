"""Rights checked again at dispatch, and waiting with a deadline, on the real API server with token users.

A real restore may wait long before its Job (for its BackupRun, behind another restore). Admission
checked the requester's `restore` on the BackupRun at creation; the operator asks again, with a
SubjectAccessReview, on the pass that would create the Job: a requester who lost the scope
meanwhile gets Rejected/RequesterNoLongerAuthorized, and no Job. And a restore waits at most
`spec.waitTimeoutSeconds` from its creation: then Rejected/WaitDeadlineExceeded, and no Job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from backups import backup_run, condition, destination, events, jobs, restore, restore_status, settle, wait_phase
from cluster_helpers import wait_until
from test_target_authorization import can, create_as, leases, read_scope

pytestmark = pytest.mark.cluster


def reason(cluster, namespace: str, name: str) -> str | None:
    return condition(restore_status(cluster, namespace, name), "Ready").get("reason")


def warnings(cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in events(cluster, namespace, name) if e["type"] == "Warning"]


def test_a_requester_who_lost_the_scope_while_the_restore_waited_gets_no_job(cluster, namespace, operator):
    destination(cluster, namespace)
    read_scope(cluster, namespace, "alice")
    cluster.kubectl("create", "rolebinding", "alice-restore", "-n", namespace, "--clusterrole=daoflow:backup-restore",
                    f"--user={cluster.user_name('alice')}")
    alice = cluster.user_name("alice")

    # alice may restore: admitted, and it waits for a BackupRun that does not exist yet.
    wait_until(lambda: create_as(cluster, "alice", namespace, "later").returncode == 0,
               what="alice to be allowed a real restore")
    wait_until(lambda: reason(cluster, namespace, "later") == "BackupRunNotFound", what="the restore to wait")

    # Her scope is revoked while it waits; then the BackupRun appears, Succeeded, with a real artifact.
    cluster.kubectl("delete", "rolebinding", "alice-restore", "-n", namespace)
    wait_until(lambda: not can(cluster, namespace, "alice", "backupruns.backup.daoflow.dev/nightly"),
               what="alice's restore right to be gone")
    backup_run(cluster, namespace)

    status = wait_phase(cluster, namespace, "later", "Rejected")
    message = (f"{alice} may no longer restore BackupRun nightly: that needs the verb restore on "
               f"backupruns.backup.daoflow.dev/nightly in namespace {namespace} (the scope backup:restore), "
               "checked again at dispatch, right before the Job would have been created")
    ready = condition(status, "Ready")
    assert ready["reason"] == "RequesterNoLongerAuthorized" and ready["message"].startswith(message)
    assert condition(status, "Validated")["reason"] == condition(status, "Started")["reason"] == \
        "RequesterNoLongerAuthorized"
    assert ("RequesterNoLongerAuthorized", ready["message"]) in warnings(cluster, namespace, "later")
    assert {"step": "queue", "outcome": "rejected", "message": ready["message"]} in \
        [{k: e[k] for k in ("step", "outcome", "message")} for e in status["auditTrail"]]
    assert status["requestedBy"] == alice and "jobRef" not in status
    settle()
    assert jobs(cluster, namespace) == [] and leases(cluster, namespace) == []


def test_a_restore_whose_backup_run_never_appears_is_rejected_at_its_wait_deadline(cluster, namespace,
                                                                                    start_operator):
    # A backoff far longer than the timeout: only the deadline itself can wake the operator in time.
    start_operator(DAOFLOW_WAIT_BACKOFF_MIN_SECONDS="600", DAOFLOW_WAIT_BACKOFF_MAX_SECONDS="600")
    destination(cluster, namespace)
    # 30 s, the least the schema allows, for a real restore and a dry run alike.
    names = [restore(cluster, namespace, run="never", name="real", waitTimeoutSeconds=30),
             restore(cluster, namespace, run="never", name="preview", dryRun=True, waitTimeoutSeconds=30)]
    for name in names:
        wait_until(lambda: reason(cluster, namespace, name) == "BackupRunNotFound", what=f"{name} to wait")

    for name in names:
        status = wait_phase(cluster, namespace, name, "Rejected", timeout=75)
        created = cluster.get("backuprestore", name, namespace)["metadata"]["creationTimestamp"]
        deadline = (datetime.fromisoformat(created.replace("Z", "+00:00")) + timedelta(seconds=30)) \
            .strftime("%Y-%m-%dT%H:%M:%SZ")
        assert status["waitDeadlineTime"] == deadline and status["completionTime"] >= deadline
        ready = condition(status, "Ready")
        assert ready["reason"] == "WaitDeadlineExceeded"
        assert ready["message"] == (
            f"no Job was created by the wait deadline {deadline} (30 s after creation, spec.waitTimeoutSeconds); "
            f"it waited for: BackupRun never does not exist (yet) in namespace {namespace}")
        assert ("WaitDeadlineExceeded", ready["message"]) in warnings(cluster, namespace, name)
    settle()
    assert jobs(cluster, namespace) == []
    # Too short a wait is refused by the schema.
    refused = cluster.kubectl("apply", "-f", "-", check=False, input=(
        '{"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore", "metadata": {"name": "hasty", '
        f'"namespace": "{namespace}"}}, "spec": {{"backupRunRef": {{"name": "never"}}, "waitTimeoutSeconds": 5}}}}'))
    assert refused.returncode != 0 and "spec.waitTimeoutSeconds: Invalid value: 5" in refused.stderr
