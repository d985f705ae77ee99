"""A restore from end to end on the real API server, with the operator running as its ServiceAccount."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest

from backups import (backup_run, condition, destination, events, jobs, restore, restore_status, set_run_status,
                     settle, snapshot, source_tree, succeeded, succeeded_with_artifact, wait_phase)
from cluster_helpers import kubectl_binary, wait_until

pytestmark = pytest.mark.cluster

STEPS = ["validate", "queue", "fetch", "execute", "verify", "record"]


def cli(cluster, *args, kubeconfig=None, input=None):
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cluster.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "daoflow_operator.cli", *args], env=env, capture_output=True,
                          text=True, input=input, timeout=60)


def authorized(plan: dict) -> dict:
    return next(c for c in plan["preflightChecks"] if c["name"] == "targetAuthorized")


def without_authorization(plan: dict) -> dict:
    checks = [c for c in plan["preflightChecks"] if c["name"] != "targetAuthorized"]
    return {**{k: v for k, v in plan.items() if k != "isReady"}, "preflightChecks": checks}


def test_a_dry_run_plans_without_a_job_and_matches_the_cli(cluster, namespace, operator):
    destination(cluster, namespace)
    run = backup_run(cluster, namespace)
    name = restore(cluster, namespace, dryRun=True)
    status = wait_phase(cluster, namespace, name, "Planned")

    assert condition(status, "Ready")["status"] == "True"
    assert status["plan"]["isReady"] and status["completionTime"]
    assert [s["step"] for s in status["plan"]["steps"]] == STEPS
    settle()
    assert jobs(cluster, namespace) == []
    assert cluster.get("backuprun", "nightly", namespace)["metadata"]["resourceVersion"] == \
        run["metadata"]["resourceVersion"]

    # The CLI needs read access only: alice holds just the backup:read scope here.
    cluster.kubectl("create", "rolebinding", "alice-read", "-n", namespace, "--clusterrole=daoflow:backup-read",
                    f"--user={cluster.user_name('alice')}")
    alice = cluster.user_kubeconfig("alice")
    out = wait_until(lambda: cli(cluster, "-n", namespace, "backup", "restore", "--backup-run-id", "nightly",
                                 "--dry-run", "--json", kubeconfig=alice), what="the CLI's dry run")
    assert out.returncode == 0, out.stderr
    cli_plan = json.loads(out.stdout)
    # Each plan checks the target for its own user (test_target_authorization.py): admin may restore
    # into the claim; alice, with backup:read only, may not, so her plan is not ready. All else is equal.
    assert [authorized(p)["status"] for p in (status["plan"], cli_plan)] == ["ok", "fail"]
    assert without_authorization(cli_plan) == without_authorization(status["plan"])
    for key in ("isReady", "backupRun", "target", "preflightChecks", "steps", "executeCommand", "approvalRequest"):
        assert key in cli_plan
    events_seen = [e["reason"] for e in events(cluster, namespace, name)]
    assert events_seen == ["Planned"]


def test_a_real_restore_runs_one_job_to_success_with_a_full_audit_trail(cluster, namespace, operator):
    destination(cluster, namespace)
    run = backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    if cluster.real_node:
        # The runner really ran: the target holds the source tree, byte for byte, modes included,
        # and status carries its real report.
        target = cluster.volume_dir(f"{namespace}-app-data")
        assert snapshot(target) == snapshot(source_tree(cluster, namespace))
        artifact = run["status"]["artifact"]
        assert status["result"]["sha256"] == artifact["sha256"]
        assert status["result"]["bytes"] > 0 and status["result"]["files"] >= 6

    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "ArtifactVerified")["status"] == "True"
    assert condition(status, "Succeeded")["observedGeneration"] == 1
    assert status["result"]["verified"] is True
    assert [e["step"] for e in status["auditTrail"]] == STEPS
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{name}-restore"]
    assert status["jobRef"] == {"name": f"{name}-restore"}
    reasons = [e["reason"] for e in events(cluster, namespace, name)]
    # One event per step; fetch is "Fetching" when the running Job was seen, else "Fetched".
    for reason in ("Validated", "Queued", "Restored", "ChecksumVerified", "Succeeded"):
        assert reason in reasons
    assert "Fetching" in reasons or "Fetched" in reasons
    describe = cluster.kubectl("describe", "backuprestore", name, "-n", namespace).stdout
    assert "Succeeded" in describe and "Queued" in describe
    wide = cluster.kubectl("get", "backuprestore", name, "-n", namespace, "-o", "wide").stdout
    assert "Succeeded" in wide and "nightly" in wide


def test_a_restore_waits_for_a_missing_run_then_proceeds(cluster, namespace, operator):
    destination(cluster, namespace)
    name = restore(cluster, namespace)
    status = wait_until(lambda: (s := restore_status(cluster, namespace, name)).get("phase") == "Pending" and s,
                        what="Pending")
    assert condition(status, "Validated")["reason"] == "BackupRunNotFound"
    wait_until(lambda: "BackupRunNotFound" in [e["reason"] for e in events(cluster, namespace, name)
                                               if e["type"] == "Warning"], what="a Warning event")

    backup_run(cluster, namespace, status={"phase": "Running"})
    wait_until(lambda: condition(restore_status(cluster, namespace, name), "Validated").get("reason")
               == "BackupRunNotSucceeded", what="the BackupRunNotSucceeded condition")
    assert jobs(cluster, namespace) == []
    set_run_status(cluster, namespace, "nightly", succeeded_with_artifact(cluster, namespace))
    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    assert len(jobs(cluster, namespace)) == 1


@pytest.mark.parametrize("run_status, reason", [
    ({"phase": "Failed", "error": "disk full"}, "BackupRunFailed"),
    (succeeded(path=""), "ArtifactPathMissing"),
    (succeeded(path="../../etc/shadow"), "ArtifactPathInvalid"),
], ids=["failed-run", "no-artifact-path", "escaping-path"])
def test_a_bad_run_is_rejected_with_a_reason(cluster, namespace, operator, run_status, reason):
    destination(cluster, namespace)
    backup_run(cluster, namespace, status=run_status)
    name = restore(cluster, namespace)
    status = wait_phase(cluster, namespace, name, "Rejected")
    assert condition(status, "Validated") | {"status": "False", "reason": reason} == condition(status, "Validated")
    assert condition(status, "Ready")["status"] == "False"
    assert jobs(cluster, namespace) == []
    assert reason in [e["reason"] for e in events(cluster, namespace, name) if e["type"] == "Warning"]


def test_the_spec_of_a_restore_is_immutable(cluster, namespace):
    name = restore(cluster, namespace, dryRun=True)
    result = cluster.kubectl("patch", "backuprestore", name, "-n", namespace, "--type=merge",
                             "-p", '{"spec": {"dryRun": false}}', check=False)
    assert result.returncode != 0
    assert "spec is immutable: create a new BackupRestore" in result.stderr


def test_a_failed_job_fails_the_restore_with_the_runner_reason(cluster, namespace, start_operator):
    start_operator(simulated=True, DAOFLOW_JOB_POD_ANNOTATIONS={"kwok.daoflow.dev/exit-code": "4",
                                                "kwok.daoflow.dev/reason": "ChecksumMismatch"})
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    status = wait_phase(cluster, namespace, name, "Failed", timeout=90)
    assert condition(status, "Succeeded")["reason"] == "ChecksumMismatch"
    assert condition(status, "ArtifactVerified")["status"] == "False"
    assert status["result"]["verified"] is False
    assert "ChecksumMismatch" in [e["reason"] for e in events(cluster, namespace, name) if e["type"] == "Warning"]
    settle(3)
    assert len(jobs(cluster, namespace)) == 1  # never retried automatically


def test_a_job_deleted_mid_run_fails_the_restore_and_is_not_recreated(cluster, namespace, start_operator):
    start_operator(simulated=True, DAOFLOW_JOB_POD_ANNOTATIONS={"kwok.daoflow.dev/run-duration": "600s"})
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    wait_phase(cluster, namespace, name, "Running", timeout=90)
    cluster.kubectl("delete", "job", f"{name}-restore", "-n", namespace, "--wait=false")
    status = wait_phase(cluster, namespace, name, "Failed")
    assert condition(status, "Succeeded")["reason"] == "JobDeleted"
    settle(3)
    assert [j for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp")] == []


def test_an_operator_killed_after_creating_the_job_makes_no_second_job(cluster, namespace, start_operator):
    first = start_operator(simulated=True, DAOFLOW_JOB_POD_ANNOTATIONS={"kwok.daoflow.dev/run-duration": "3s"})
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    # Kill it the moment the Job exists, whatever it had time to write after that.
    watcher = subprocess.Popen(
        [kubectl_binary(), f"--kubeconfig={cluster.kubeconfig}", "get", "jobs", "-n", namespace, "--watch",
         "-o", "name"],
        stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([watcher.stdout], [], [], 60)
        assert ready, "no Job was created within 60s"
        line = watcher.stdout.readline()
        first.kill()
    finally:
        watcher.kill()
    assert line.strip() == f"job.batch/{name}-restore"
    start_operator(simulated=True, DAOFLOW_JOB_POD_ANNOTATIONS={"kwok.daoflow.dev/run-duration": "3s"})
    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{name}-restore"]
    assert [e["step"] for e in status["auditTrail"]] == STEPS


def test_the_operator_cannot_write_a_backup_run(cluster, namespace, operator_kubeconfig):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    sa = "system:serviceaccount:daoflow-system:daoflow-operator"
    for verb in ("patch", "update", "delete"):
        answer = cluster.kubectl("auth", "can-i", verb, "backupruns.backup.daoflow.dev", "-n", namespace,
                                 f"--as={sa}", check=False)
        assert answer.stdout.strip() == "no", (verb, answer.stdout)
    assert cluster.kubectl("auth", "can-i", "get", "backupruns.backup.daoflow.dev", "-n", namespace,
                           f"--as={sa}", check=False).stdout.strip() == "yes"
    denied = cluster.kubectl("patch", "backuprun", "nightly", "-n", namespace, "--subresource=status",
                             "--type=merge", "-p", '{"status": {"phase": "Failed"}}',
                             kubeconfig=operator_kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_a_real_restore_needs_the_restore_scope(cluster, namespace):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    cluster.kubectl("create", "rolebinding", "bob-read", "-n", namespace, "--clusterrole=daoflow:backup-read",
                    f"--user={cluster.user_name('bob')}")
    bob = cluster.user_kubeconfig("bob")
    manifest = {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
                "metadata": {"generateName": "bob-", "namespace": namespace},
                "spec": {"backupRunRef": {"name": "nightly"}}}

    def create(dry_run):
        body = json.loads(json.dumps(manifest))
        body["spec"]["dryRun"] = dry_run
        return cluster.kubectl("create", "-f", "-", input=json.dumps(body), kubeconfig=bob, check=False)

    denied = wait_until(lambda: (r := create(False)).returncode != 0 and r, what="the scope policy to deny bob")
    assert "needs the scope backup:restore" in denied.stderr
    assert create(True).returncode == 0
    cluster.kubectl("create", "rolebinding", "bob-restore", "-n", namespace, "--clusterrole=daoflow:backup-restore",
                    f"--user={cluster.user_name('bob')}")
    wait_until(lambda: create(False).returncode == 0, what="bob to be allowed a real restore")


def test_an_s3_restore_keeps_its_credentials_out_of_status_events_and_logs(cluster, namespace, start_operator):
    # The operator's side of it, on the simulated node; test_real_node restores through a real S3 server.
    operator = start_operator(simulated=True)
    secret_value = "AKIA-PLANTED-7f3e9c1d"
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={secret_value}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_value}-secret")
    cluster.apply({"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupDestination",
                   "metadata": {"name": "s3", "namespace": namespace},
                   "spec": {"s3": {"endpoint": "http://127.0.0.1:9000", "allowInsecureHTTP": True, "bucket": "backups",
                                   "prefix": "prod/",
                                   "forcePathStyle": True, "credentialsSecretRef": {"name": "s3-creds"}}}})
    backup_run(cluster, namespace, destination_name="s3")
    name = restore(cluster, namespace)
    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    assert status["plan"]["artifact"]["location"] == "s3://backups/prod/app-data/2026-11-27.tar.zst"
    pod = jobs(cluster, namespace)[0]["spec"]["template"]["spec"]
    assert any(v.get("secret", {}).get("secretName") == "s3-creds" for v in pod["volumes"])
    seen = json.dumps(cluster.get("backuprestore", name, namespace)) + json.dumps(events(cluster, namespace, name))
    seen += json.dumps(jobs(cluster, namespace)) + operator.output()
    assert secret_value not in seen


def test_the_requester_is_recorded_by_the_api_server_and_cannot_be_forged(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    cluster.kubectl("create", "rolebinding", "carol-read", "-n", namespace, "--clusterrole=daoflow:backup-read",
                    f"--user={cluster.user_name('carol')}")
    cluster.kubectl("create", "role", "annotate", "-n", namespace, "--verb=patch",
                    "--resource=backuprestores.backup.daoflow.dev")
    cluster.kubectl("create", "rolebinding", "carol-annotate", "-n", namespace, "--role=annotate",
                    f"--user={cluster.user_name('carol')}")
    carol = cluster.user_kubeconfig("carol")
    forged = {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
              "metadata": {"name": "forged", "namespace": namespace,
                           "annotations": {"backup.daoflow.dev/requested-by": "the-ceo"}},
              "spec": {"backupRunRef": {"name": "nightly"}, "dryRun": True}}
    wait_until(lambda: cluster.kubectl("create", "-f", "-", input=json.dumps(forged), kubeconfig=carol,
                                       check=False).returncode == 0, what="carol to create a dry run")
    status = wait_phase(cluster, namespace, "forged", "Planned")
    assert status["requestedBy"] == cluster.user_name("carol")
    meta = cluster.get("backuprestore", "forged", namespace)["metadata"]
    assert meta["annotations"]["backup.daoflow.dev/requested-by"] == cluster.user_name("carol")
    changed = cluster.kubectl("annotate", "backuprestore", "forged", "-n", namespace, "--overwrite",
                              "backup.daoflow.dev/requested-by=the-ceo", kubeconfig=carol, check=False)
    assert changed.returncode != 0 and "may not be changed" in changed.stderr
