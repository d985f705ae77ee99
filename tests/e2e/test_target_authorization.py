"""The target of a restore is authorized for the user who asked, on the real API server, with distinct users.

`restore` on the BackupRun is not enough: the requester also needs `restore` on the target itself,
`persistentvolumeclaims/<claim>` or `secrets/<name>` (a database's credentials). An explicit
`spec.target` is refused at admission (the ValidatingAdmissionPolicy's CEL `authorizer`); an in-place
restore, whose target only the BackupRun names, is refused by the operator (a SubjectAccessReview
of the requester, right before the Job would be created): Rejected/TargetNotAuthorized, and no Job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backups import (GROUP, backup_run, condition, destination, events, jobs, restore_status, set_run_status, settle,
                     succeeded, wait_phase)
from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster

REQUESTED_BY = "backup.daoflow.dev/requested-by"
REQUESTED_BY_GROUPS = "backup.daoflow.dev/requested-by-groups"


def grant(cluster, namespace: str, user: str, name: str, rules: list[dict]) -> None:
    """A Role with these rules, bound to `user` in the namespace."""
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": namespace}, "rules": rules})
    cluster.kubectl("create", "rolebinding", name, "-n", namespace, f"--role={name}",
                    f"--user={cluster.user_name(user)}")


def read_scope(cluster, namespace: str, user: str) -> None:
    cluster.kubectl("create", "rolebinding", f"{user}-read", "-n", namespace, "--clusterrole=daoflow:backup-read",
                    f"--user={cluster.user_name(user)}")


RESTORE_RUNS = {"apiGroups": [GROUP], "resources": ["backupruns"], "verbs": ["restore"]}


def create_as(cluster, user: str, namespace: str, name: str, run: str = "nightly", annotations=None, **spec):
    """`kubectl create` of a BackupRestore with the user's own credentials."""
    body = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRestore",
            "metadata": {"name": name, "namespace": namespace, **({"annotations": annotations} if annotations else {})},
            "spec": {"backupRunRef": {"name": run}, **spec}}
    return cluster.kubectl("create", "-f", "-", input=json.dumps(body), kubeconfig=cluster.user_kubeconfig(user),
                           check=False)


def can(cluster, namespace: str, user: str, resource: str) -> bool:
    answer = cluster.kubectl("auth", "can-i", "restore", resource, "-n", namespace,
                             f"--as={cluster.user_name(user)}", check=False)
    return answer.stdout.strip() == "yes"


def refused_on_target(cluster, user, namespace, name, **spec):
    """Waits for the user's restore rights on the BackupRun to take effect, then returns the refusal."""
    def attempt():
        result = create_as(cluster, user, namespace, name, **spec)
        return result if result.returncode != 0 and "on its target" in result.stderr else None
    return wait_until(attempt, what=f"the scope policy to refuse {user}'s target")


def authorized_check(status_or_plan: dict) -> dict:
    plan = status_or_plan.get("plan", status_or_plan)
    return next(c for c in plan["preflightChecks"] if c["name"] == "targetAuthorized")


def leases(cluster, namespace: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "leases", "-n", namespace, "-o", "json").stdout)["items"]


def test_restore_on_the_backup_run_alone_is_refused_at_admission_and_in_place(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)  # of PersistentVolumeClaim app-data
    read_scope(cluster, namespace, "bob")
    grant(cluster, namespace, "bob", "restore-runs", [RESTORE_RUNS])
    bob = cluster.user_name("bob")

    # 1. Into the claim, named in spec.target: refused at admission, saying what is missing.
    denied = refused_on_target(cluster, "bob", namespace, "into-app-data",
                               target={"persistentVolumeClaim": {"claimName": "app-data"}})
    assert ("a BackupRestore with dryRun: false into PersistentVolumeClaim app-data needs the scope backup:restore "
            "on its target (the verb restore on persistentvolumeclaims/app-data); preview it with dryRun: true "
            "instead") in denied.stderr
    assert "backupruns/" not in denied.stderr  # the BackupRun itself was allowed

    # 2. The same restore in place (its target from the BackupRun's source): admitted, then refused
    # by the operator's SubjectAccessReview of bob, before any Job or Lease.
    created = create_as(cluster, "bob", namespace, "in-place", annotations={REQUESTED_BY_GROUPS: '["system:masters"]'})
    assert created.returncode == 0, created.stderr
    status = wait_phase(cluster, namespace, "in-place", "Rejected")
    message = (f"{bob} may not restore into PersistentVolumeClaim app-data: that needs the verb restore on "
               f"persistentvolumeclaims/app-data in namespace {namespace} (the scope backup:restore)")
    assert condition(status, "Ready") | {"reason": "TargetNotAuthorized", "message": message} == \
        condition(status, "Ready")
    assert condition(status, "Validated")["reason"] == "TargetNotAuthorized"
    assert authorized_check(status) == {"name": "targetAuthorized", "status": "fail", "detail": message}
    assert ("Warning", "TargetNotAuthorized", message) in [(e["type"], e["reason"], e["message"])
                                                           for e in events(cluster, namespace, "in-place")]
    assert status["requestedBy"] == bob and "jobRef" not in status and "startTime" not in status
    settle()
    assert jobs(cluster, namespace) == [] and leases(cluster, namespace) == []
    # Who asked, and their groups, are the API server's word: the forged group was overwritten.
    meta = cluster.get("backuprestore", "in-place", namespace)["metadata"]
    assert meta["annotations"][REQUESTED_BY] == bob
    assert "system:masters" not in json.loads(meta["annotations"][REQUESTED_BY_GROUPS])
    assert "system:authenticated" in json.loads(meta["annotations"][REQUESTED_BY_GROUPS])
    changed = cluster.kubectl("annotate", "backuprestore", "in-place", "-n", namespace, "--overwrite",
                              f'{REQUESTED_BY_GROUPS}=["system:masters"]', check=False)
    assert changed.returncode != 0 and "requested-by-groups is recorded at creation and may not be changed" \
        in changed.stderr


def test_a_role_with_resource_names_narrows_restores_to_the_chosen_claims(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)  # nightly, of app-data, with a real artifact
    backup_run(cluster, namespace, name="other", claim="other-data", status=succeeded())
    read_scope(cluster, namespace, "bob")
    grant(cluster, namespace, "bob", "restore-app-data", [
        RESTORE_RUNS, {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": ["app-data"],
                       "verbs": ["restore"]}])
    bob = cluster.user_name("bob")

    # Into app-data: admitted, authorized by the operator, restored.
    wait_until(lambda: create_as(cluster, "bob", namespace, "into-app-data",
                                 target={"persistentVolumeClaim": {"claimName": "app-data"}}).returncode == 0,
               what="bob to be allowed a restore into app-data")
    # Into other-data, named: refused at admission; in place from the BackupRun of other-data: by the operator.
    denied = create_as(cluster, "bob", namespace, "into-other-data",
                       target={"persistentVolumeClaim": {"claimName": "other-data"}})
    assert denied.returncode != 0 and "(the verb restore on persistentvolumeclaims/other-data)" in denied.stderr
    assert create_as(cluster, "bob", namespace, "other-in-place", run="other").returncode == 0
    rejected = wait_phase(cluster, namespace, "other-in-place", "Rejected")
    assert condition(rejected, "Ready")["reason"] == "TargetNotAuthorized"
    assert "may not restore into PersistentVolumeClaim other-data" in condition(rejected, "Ready")["message"]

    done = wait_phase(cluster, namespace, "into-app-data", "Succeeded", timeout=90)
    assert authorized_check(done) == {
        "name": "targetAuthorized", "status": "ok",
        "detail": f"{bob} may restore into PersistentVolumeClaim app-data (the verb restore on "
                  f"persistentvolumeclaims/app-data in namespace {namespace})"}
    assert f"{bob} may restore into PersistentVolumeClaim app-data" in done["auditTrail"][1]["message"]
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["into-app-data-restore"]


def test_a_postgres_target_whose_secret_the_requester_may_not_restore_is_refused(cluster, namespace, operator):
    destination(cluster, namespace)
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRun",
                   "metadata": {"name": "pg", "namespace": namespace},
                   "spec": {"destinationRef": {"name": "shared"},
                            "source": {"type": "postgres", "database": {"secretRef": {"name": "db"}}}}})
    status = succeeded(path="db/shop.dump")
    status["artifact"]["format"] = "postgres-custom"
    set_run_status(cluster, namespace, "pg", status)
    read_scope(cluster, namespace, "bob")
    # Every claim of the namespace, but no Secret: a claim is not a database.
    grant(cluster, namespace, "bob", "restore-volumes", [
        RESTORE_RUNS, {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["restore"]}])
    bob = cluster.user_name("bob")

    denied = refused_on_target(cluster, "bob", namespace, "into-db", run="pg",
                               target={"database": {"secretRef": {"name": "db"}}})
    assert ("a BackupRestore with dryRun: false into the database of Secret db needs the scope backup:restore on "
            "its target (the verb restore on secrets/db)") in denied.stderr

    assert create_as(cluster, "bob", namespace, "db-in-place", run="pg").returncode == 0
    rejected = wait_phase(cluster, namespace, "db-in-place", "Rejected")
    assert condition(rejected, "Ready")["reason"] == "TargetNotAuthorized"
    assert condition(rejected, "Ready")["message"] == (
        f"{bob} may not restore into the database of Secret db: that needs the verb restore on secrets/db in "
        f"namespace {namespace} (the scope backup:restore)")
    assert "TargetNotAuthorized" in [e["reason"] for e in events(cluster, namespace, "db-in-place")
                                     if e["type"] == "Warning"]
    settle()
    assert jobs(cluster, namespace) == []

    # The scope narrowed to that Secret: a preview of bob's now says ok.
    grant(cluster, namespace, "bob", "restore-db", [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["restore"]}])
    wait_until(lambda: can(cluster, namespace, "bob", "secrets/db"), what="bob's restore on secrets/db")
    assert create_as(cluster, "bob", namespace, "db-preview", run="pg", dryRun=True).returncode == 0
    planned = wait_phase(cluster, namespace, "db-preview", "Planned")
    assert authorized_check(planned)["status"] == "ok" and planned["plan"]["isReady"]
    assert cluster.kubectl("auth", "can-i", "get", "secrets/db", "-n", namespace, f"--as={bob}",
                           check=False).stdout.strip() == "no"  # restore grants nothing else


def daoflow(cluster, user: str, namespace: str, *args):
    env = {**os.environ, "KUBECONFIG": str(cluster.user_kubeconfig(user))}
    return subprocess.run([sys.executable, "-m", "daoflow_operator.cli", "backup", "restore", "--backup-run-id",
                           "nightly", "-n", namespace, "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_dry_run_shows_the_check_for_the_user_who_asked_and_the_cli_shows_the_same(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    for user in ("alice", "bob"):
        read_scope(cluster, namespace, user)
    grant(cluster, namespace, "alice", "restore-app-data", [
        RESTORE_RUNS, {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": ["app-data"],
                       "verbs": ["restore"]}])
    wait_until(lambda: can(cluster, namespace, "alice", "persistentvolumeclaims/app-data"),
               what="alice's restore on the claim")

    plans = {}
    for user, expected in (("alice", "ok"), ("bob", "fail")):
        name = f"{user}-preview"
        assert create_as(cluster, user, namespace, name, dryRun=True).returncode == 0
        status = wait_phase(cluster, namespace, name, "Planned")  # a preview is Planned either way
        check = authorized_check(status)
        assert check["status"] == expected and check["detail"].startswith(cluster.user_name(user) + " may ")
        assert status["plan"]["isReady"] is (expected == "ok")
        assert condition(status, "Ready")["status"] == "True"
        plans[user] = status["plan"]
        # The CLI computes the same plan with the user's own credentials (a SelfSubjectAccessReview).
        out = daoflow(cluster, user, namespace, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == status["plan"]
    assert "a real restore would be refused: " + authorized_check(plans["bob"])["detail"] in \
        condition(restore_status(cluster, namespace, "bob-preview"), "Ready")["message"]
    human = daoflow(cluster, "bob", namespace)
    assert human.returncode == 0 and "[fail] targetAuthorized: " in human.stdout
    settle()
    assert jobs(cluster, namespace) == []
