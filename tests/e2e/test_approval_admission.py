"""RestoreApproval admission, on the real API server with distinct token users.

The API server itself records who asked (at creation) and who decided (at decision), and refuses
self-approval, a decision without the verb `approve`, a second decision, a forged identity, a
change of the spec, and a decision by the operator's ServiceAccount. The require-approval policy
refuses real restores without an approval in labelled namespaces, and lets dry runs through.
"""

from __future__ import annotations

import json

import pytest

from approval_helpers import OPERATOR, PLAN, approval, bind, decide_as, decided, requested
from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster


def refused(result, message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_requester_and_decider_are_recorded_and_every_forbidden_write_is_refused(cluster, namespace,
                                                                                operator_kubeconfig):
    bind(cluster, namespace, "alice", "approvals-create", "approvals-decide")
    bind(cluster, namespace, "bob", "approvals-create", "approvals-decide")
    # carol may write the status (the RBAC half of approvals:decide) but lacks the verb approve.
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "status-only", "namespace": namespace},
                   "rules": [{"apiGroups": ["backup.daoflow.dev"], "resources": ["restoreapprovals"],
                              "verbs": ["get", "list"]},
                             {"apiGroups": ["backup.daoflow.dev"], "resources": ["restoreapprovals/status"],
                              "verbs": ["get", "patch", "update"]}]})
    cluster.kubectl("create", "rolebinding", "carol-status", "-n", namespace, "--role=status-only",
                    f"--user={cluster.user_name('carol')}")

    # A forged requester is overwritten at creation; a forged decision at creation is dropped.
    created = requested(cluster, "alice", namespace, "prod-fix",
                        annotations={"backup.daoflow.dev/requested-by": "bob"})
    assert created["metadata"]["annotations"]["backup.daoflow.dev/requested-by"] == cluster.user_name("alice")
    assert (created.get("status") or {}).get("decision") is None
    # ... and cannot be changed afterwards, not even by a cluster admin.
    refused(cluster.kubectl("annotate", "restoreapproval", "prod-fix", "-n", namespace, "--overwrite",
                            "backup.daoflow.dev/requested-by=bob", check=False),
            "the annotation backup.daoflow.dev/requested-by is recorded at creation and may not be changed")
    # The spec is immutable.
    refused(cluster.kubectl("patch", "restoreapproval", "prod-fix", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"planHash": "cd" * 32}}), check=False),
            "spec is immutable: request a new RestoreApproval")

    alice = cluster.user_name("alice")
    # No self-approval, even for a user who holds approvals:decide.
    wait_until(lambda: "no self-approval" in decide_as(cluster, "alice", namespace, "prod-fix").stderr,
               what="alice's rights to take effect")
    refused(decide_as(cluster, "alice", namespace, "prod-fix"),
            f"no self-approval: {alice} requested RestoreApproval prod-fix and may not decide it; another user "
            "with the scope approvals:decide must")
    # Without the verb approve, writing the status is not enough.
    carol = cluster.user_name("carol")
    wait_until(lambda: "approvals:decide" in decide_as(cluster, "carol", namespace, "prod-fix").stderr,
               what="carol's status rights to take effect")
    refused(decide_as(cluster, "carol", namespace, "prod-fix"),
            f"{carol} may not decide RestoreApproval prod-fix: that needs the scope approvals:decide "
            "(the verb approve on restoreapprovals/prod-fix)")
    # The operator's ServiceAccount may never decide.
    result = cluster.kubectl("patch", "restoreapproval", "prod-fix", "-n", namespace, "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": {"decision": "Approved"}}),
                             kubeconfig=operator_kubeconfig, check=False)
    refused(result, "the operator's ServiceAccount may never decide a RestoreApproval; it may only mark one used")
    # decidedBy cannot be written on its own...
    refused(cluster.kubectl("patch", "restoreapproval", "prod-fix", "-n", namespace, "--subresource=status",
                            "--type=merge", "-p", json.dumps({"status": {"decidedBy": "bob"}}),
                            kubeconfig=cluster.user_kubeconfig("bob"), check=False),
            "status.decidedBy is recorded by the API server with the decision and may not be written otherwise")
    # ... nor the operator's fields by anyone else.
    refused(decide_as(cluster, "bob", namespace, "prod-fix", usedBy={"name": "x", "uid": "y"}),
            "status.usedBy, usedTime, expiresAt, decidedTime and phase are written by the operator only")

    # bob decides; the decider he forged is overwritten with his own name.
    bob = cluster.user_name("bob")
    decided_ = decided(cluster, "bob", namespace, "prod-fix", decidedBy=alice, comment="checked the plan")
    assert decided_["status"]["decision"] == "Approved" and decided_["status"]["decidedBy"] == bob
    assert decided_["status"]["comment"] == "checked the plan"
    assert json.loads(decided_["status"]["decidedByGroups"]) == ["system:authenticated"]

    # A second decision, by anyone, is refused; so is a change of the comment or the decider.
    second = f"RestoreApproval prod-fix was already decided (Approved by {bob}): a decision is written once and " \
             "may not be changed"
    bind(cluster, namespace, "carol", "approvals-decide")
    wait_until(lambda: second in decide_as(cluster, "carol", namespace, "prod-fix", "Rejected").stderr,
               what="carol's second decision to be refused")
    refused(decide_as(cluster, "bob", namespace, "prod-fix", "Rejected"), second)
    refused(decide_as(cluster, "bob", namespace, "prod-fix", comment="changed my mind"), second)
    refused(decide_as(cluster, None, namespace, "prod-fix", decidedBy="carol"), second)
    assert approval(cluster, namespace, "prod-fix")["status"]["decidedBy"] == bob

    # The printer columns show who asked and who decided.
    row = cluster.kubectl("get", "rapproval", "prod-fix", "-n", namespace, "--no-headers").stdout.split()
    assert row[:5] == ["prod-fix", "Approved", "nightly", PLAN, alice] and row[5] == bob
    assert "prod-fix" in cluster.kubectl("get", "daoflow", "-n", namespace).stdout
    assert OPERATOR != bob


def test_a_rejection_is_final_too(cluster, namespace):
    bind(cluster, namespace, "alice", "approvals-create")
    bind(cluster, namespace, "bob", "approvals-decide")
    requested(cluster, "alice", namespace, "risky")
    status = decided(cluster, "bob", namespace, "risky", "Rejected", comment="wrong cluster")["status"]
    assert status["decision"] == "Rejected" and status["decidedBy"] == cluster.user_name("bob")
    refused(decide_as(cluster, "bob", namespace, "risky", "Approved"), "a decision is written once")


def test_a_labelled_namespace_refuses_a_real_restore_without_an_approval(cluster, namespace):
    cluster.kubectl("label", "namespace", namespace, "backup.daoflow.dev/require-approval=true")
    message = (f"namespace {namespace} requires an approval for real restores (it is labelled "
               "backup.daoflow.dev/require-approval=true): set spec.approvalRef to a RestoreApproval "
               "(daoflow approval request), or preview with dryRun: true")

    def refused_now():
        result = cluster.kubectl("create", "-f", "-", check=False, input=json.dumps(
            {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
             "metadata": {"name": "unapproved", "namespace": namespace},
             "spec": {"backupRunRef": {"name": "nightly"}}}))
        return result.returncode != 0 and message in result.stderr
    wait_until(refused_now, what="the require-approval policy to refuse an unapproved restore")
    # A dry run is still allowed, and so is a real restore that names an approval.
    for name, spec in (("preview", {"dryRun": True}), ("approved", {"approvalRef": {"name": "prod-fix"}})):
        cluster.kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"backupRunRef": {"name": "nightly"}, **spec}}))
    # An unlabelled namespace is not affected.
    cluster.kubectl("label", "namespace", namespace, "backup.daoflow.dev/require-approval-")
    wait_until(lambda: not refused_now() and cluster.kubectl("get", "backuprestore", "unapproved", "-n", namespace,
                                                            check=False).returncode == 0,
               what="an unlabelled namespace to admit a real restore without approval")
