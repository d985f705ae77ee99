"""Restores gated by a RestoreApproval, on the real API server with the operator as its ServiceAccount and
distinct token users: alice asks, bob decides, carol lacks the verb.

A real restore with spec.approvalRef waits (AwaitingApproval) until the approval is decided; a
decision wakes it through a watch. At dispatch the operator checks the six conditions of
docs/api.md and refuses with a reason, a Warning event and no Job; an approval is good for one
restore, whatever the race.
"""

from __future__ import annotations

import json

import pytest

from approval_helpers import OPERATOR, approval, bind, decided, requested
from backups import (GROUP, backup_run, condition, destination, events, jobs, restore_status, set_run_status, settle,
                     snapshot, source_tree, succeeded_with_artifact, wait_phase)
from cluster_helpers import audit_entries, audit_user, wait_until
from test_target_authorization import create_as

pytestmark = pytest.mark.cluster


def plan_hash(cluster, namespace: str, run: str = "nightly") -> str:
    """Today's plan, as a dry run computes it (the CLI's `approval request` does the same)."""
    name = f"preview-{run}-{len(jobs(cluster, namespace))}-{id(cluster) % 1000}"
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRestore",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"backupRunRef": {"name": run}, "dryRun": True}})
    status = wait_phase(cluster, namespace, name, "Planned")
    cluster.kubectl("delete", "backuprestore", name, "-n", namespace)
    return status["plan"]["planHash"]


def restore_as(cluster, user: str, namespace: str, name: str, approval_name: str, run: str = "nightly") -> None:
    wait_until(lambda: create_as(cluster, user, namespace, name, run=run,
                                 approvalRef={"name": approval_name}).returncode == 0,
               what=f"{user}'s restore {name} to be admitted")


def approval_status_writes(audit_log, namespace: str, name: str) -> list[dict]:
    """The successful writes of an approval's status, with their bodies (the local control plane's audit policy)."""
    return [e for e in audit_entries(audit_log) if e.get("stage") == "ResponseComplete" and e["verb"] in ("update", "patch")
            and e.get("objectRef", {}).get("resource") == "restoreapprovals"
            and e["objectRef"].get("subresource") == "status" and e["objectRef"].get("namespace") == namespace
            and e["objectRef"].get("name") == name and e.get("responseStatus", {}).get("code") == 200]


def users(cluster, namespace: str) -> None:
    bind(cluster, namespace, "alice", "backup-read", "backup-restore", "approvals-create")
    bind(cluster, namespace, "bob", "backup-read", "backup-restore", "approvals-decide")


def warnings(cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in events(cluster, namespace, name) if e["type"] == "Warning"]


def test_alice_asks_bob_approves_and_the_restore_waits_then_runs_once(cluster, namespace, operator, real_node):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    users(cluster, namespace)
    digest = plan_hash(cluster, namespace)
    requested(cluster, "alice", namespace, "fix-1", plan=digest, reason="restore yesterday's data")
    restore_as(cluster, "alice", namespace, "approved", "fix-1")

    status = wait_phase(cluster, namespace, "approved", "AwaitingApproval")
    assert condition(status, "Approved")["status"] == "Unknown"
    assert condition(status, "Ready")["reason"] == "AwaitingApproval"
    settle()
    assert jobs(cluster, namespace) == []
    assert approval(cluster, namespace, "fix-1")["status"]["phase"] == "Pending"

    bob = cluster.user_name("bob")
    decided(cluster, "bob", namespace, "fix-1", comment="plan checked")
    # Woken by the decision's watch event, not a poll: far sooner than any backoff.
    status = wait_phase(cluster, namespace, "approved", "Succeeded", timeout=120)
    assert status["approvedBy"] == bob and status["requestedBy"] == cluster.user_name("alice")
    approved = condition(status, "Approved")
    assert approved["status"] == "True" and approved["message"] == \
        f"approved by {bob} in RestoreApproval fix-1 (plan checked) for plan {digest[:12]}"
    assert any(e["step"] == "queue" and e["message"].startswith(f"approved by {bob}") and digest[:12] in e["message"]
               for e in status["auditTrail"])
    assert len(jobs(cluster, namespace)) == 1
    # The restored bytes are the backup's.
    assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(source_tree(cluster, namespace))
    used = approval(cluster, namespace, "fix-1")["status"]
    assert used["usedBy"]["name"] == "approved" and used["phase"] == "Used" and used["decidedBy"] == bob

    # The API server's audit log: the decision was written by bob's identity; the operator's
    # ServiceAccount wrote the approval's status too (its expiry, its use), but never a decision.
    if cluster.local is not None:
        writes = approval_status_writes(cluster.local.audit_log, namespace, "fix-1")
        deciders = {audit_user(e) for e in writes if "decision" in e["requestObject"].get("status", {})}
        assert deciders == {bob}
        by_operator = [e for e in writes if audit_user(e) == OPERATOR]
        assert by_operator and any("usedBy" in e["requestObject"]["status"] for e in by_operator)
        assert not any(set(e["requestObject"]["status"]) & {"decision", "comment", "decidedBy"} for e in by_operator)


def test_the_operator_refuses_each_approval_that_does_not_hold(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    backup_run(cluster, namespace, name="weekly", claim="weekly-data")
    users(cluster, namespace)
    bind(cluster, namespace, "carol", "backup-read", "approvals-decide")
    digest = plan_hash(cluster, namespace)
    bob, carol = cluster.user_name("bob"), cluster.user_name("carol")

    # Rejected.
    requested(cluster, "alice", namespace, "no", plan=digest)
    decided(cluster, "bob", namespace, "no", "Rejected", comment="wrong cluster")
    # For another BackupRun.
    requested(cluster, "alice", namespace, "weekly-only", run="weekly", plan=digest)
    decided(cluster, "bob", namespace, "weekly-only")
    # Decided by bob, who then asks for the restore himself.
    requested(cluster, "alice", namespace, "bobs", plan=digest)
    decided(cluster, "bob", namespace, "bobs")
    # Decided by carol, who loses the verb approve before the restore runs.
    requested(cluster, "alice", namespace, "carols", plan=digest)
    decided(cluster, "carol", namespace, "carols")
    cluster.kubectl("delete", "rolebinding", "carol-approvals-decide", "-n", namespace)
    wait_until(lambda: cluster.kubectl("auth", "can-i", "approve", "restoreapprovals.backup.daoflow.dev/carols",
                                       "-n", namespace, f"--as={carol}", check=False).stdout.strip() == "no",
               what="carol's approve to be gone")
    # Expires undecided, 10 s after its creation.
    requested(cluster, "alice", namespace, "short", plan=digest, ttlSeconds=10)

    cases = {"r-rejected": ("no", "alice", "ApprovalRejected", f"RestoreApproval no was rejected by {bob} "
                                                               "(wrong cluster)"),
             "r-other-run": ("weekly-only", "alice", "ApprovalPlanMismatch",
                             f"RestoreApproval weekly-only approved plan {digest[:12]} of BackupRun weekly, but "
                             f"today's plan is {digest[:12]} of BackupRun nightly"),
             "r-self": ("bobs", "bob", "SelfApproval", f"RestoreApproval bobs was decided by {bob}, who requested "
                                                       "this restore: a restore needs the approval of someone else"),
             "r-revoked": ("carols", "alice", "ApproverNoLongerAuthorized",
                           f"{carol}, who decided RestoreApproval carols, may no longer approve it: that needs the "
                           f"verb approve on restoreapprovals.backup.daoflow.dev/carols in namespace {namespace}"),
             "r-expired": ("short", "alice", "ApprovalExpired", "RestoreApproval short expired at ")}
    for name, (approval_name, user, _, _) in cases.items():
        restore_as(cluster, user, namespace, name, approval_name)
    for name, (approval_name, _, reason, message) in cases.items():
        status = wait_phase(cluster, namespace, name, "Rejected", timeout=60)
        ready = condition(status, "Ready")
        assert ready["reason"] == reason and ready["message"].startswith(message), (name, ready)
        assert condition(status, "Approved") == {**condition(status, "Approved"), "status": "False", "reason": reason}
        assert (reason, ready["message"]) in warnings(cluster, namespace, name)
        assert "jobRef" not in status and "approvedBy" not in status
    # The approval shows it expired unused, in its own status.
    expired = wait_until(lambda: (st := approval(cluster, namespace, "short")["status"]).get("phase") == "Expired"
                         and st, timeout=20, what="the approval to show that it expired")
    assert "usedBy" not in expired and "decision" not in expired

    # Approved for today's plan; then the BackupRun changes (a new artifact) before the restore runs.
    requested(cluster, "alice", namespace, "stale", plan=digest)
    decided(cluster, "bob", namespace, "stale")
    newer = succeeded_with_artifact(cluster, namespace)
    newer["completionTime"] = "2026-11-28T02:03:00Z"
    set_run_status(cluster, namespace, "nightly", newer)
    restore_as(cluster, "alice", namespace, "r-drifted", "stale")
    status = wait_phase(cluster, namespace, "r-drifted", "Rejected")
    ready = condition(status, "Ready")
    assert ready["reason"] == "ApprovalPlanMismatch" and ready["message"].startswith(
        f"RestoreApproval stale approved plan {digest[:12]} of BackupRun nightly, but today's plan is "
        f"{status['plan']['planHash'][:12]} of BackupRun nightly") and status["plan"]["planHash"] != digest
    assert ("ApprovalPlanMismatch", ready["message"]) in warnings(cluster, namespace, "r-drifted")
    settle()
    assert jobs(cluster, namespace) == []


def test_two_restores_racing_for_one_approval_get_one_job(cluster, namespace, start_operator):
    start_operator(simulated=True)
    destination(cluster, namespace)
    users(cluster, namespace)
    for round_ in range(4):
        run = f"run{round_}"
        backup_run(cluster, namespace, name=run, claim=f"data{round_}")
        digest = plan_hash(cluster, namespace, run)
        requested(cluster, "alice", namespace, f"once{round_}", run=run, plan=digest)
        decided(cluster, "bob", namespace, f"once{round_}")
        names = [f"race{round_}-a", f"race{round_}-b"]
        # Both in one request: they reach the operator together.
        wait_until(lambda: cluster.kubectl("create", "-f", "-", kubeconfig=cluster.user_kubeconfig("alice"),
                                           check=False, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                                               {"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRestore",
                                                "metadata": {"name": n, "namespace": namespace},
                                                "spec": {"backupRunRef": {"name": run},
                                                         "approvalRef": {"name": f"once{round_}"}}}
                                               for n in names]})).returncode == 0,
                   what="the racing restores to be admitted")
        wait_until(lambda: all(restore_status(cluster, namespace, n).get("phase") in ("Queued", "Running", "Rejected",
                                                                                     "Succeeded", "Failed")
                               for n in names), what="both racing restores to be decided")
        settle()
        outcomes = {n: restore_status(cluster, namespace, n) for n in names}
        winners = [n for n, s in outcomes.items() if s.get("jobRef")]
        losers = [n for n, s in outcomes.items() if not s.get("jobRef")]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert condition(outcomes[losers[0]], "Ready")["reason"] == "ApprovalAlreadyUsed"
        assert approval(cluster, namespace, f"once{round_}")["status"]["usedBy"]["name"] == winners[0]
        owners = [ref["name"] for job in jobs(cluster, namespace) for ref in job["metadata"]["ownerReferences"]]
        assert owners.count(winners[0]) == 1 and losers[0] not in owners
    assert len(jobs(cluster, namespace)) == 4
