"""The approval flow through the `daoflow` CLI, alice and bob each with their own kubeconfig, and its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from approval_helpers import bind
from backups import backup_run, destination, jobs, snapshot, source_tree
from cluster_helpers import wait_until
from daoflow_operator import cli as cli_module
from test_cli import assert_one_line_error, daoflow

pytestmark = pytest.mark.cluster


def test_request_approve_and_restore_with_two_users(cluster, namespace, operator, real_node):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    # alice may decide others' requests too: the API server still refuses her own.
    bind(cluster, namespace, "alice", "backup-read", "backup-restore", "approvals-create", "approvals-decide")
    bind(cluster, namespace, "bob", "backup-read", "approvals-decide")
    alice, bob = cluster.user_kubeconfig("alice"), cluster.user_kubeconfig("bob")
    ns = ["-n", namespace]

    requested = wait_until(lambda: (r := daoflow("approval", "request", "--backup-run-id", "nightly", "--reason",
                                                 "roll back the bad migration", "--ttl", "2h", "--name", "fix-1",
                                                 "--json", *ns, kubeconfig=alice)).returncode == 0 and r,
                           what="alice's approval request")
    request = json.loads(requested.stdout)
    assert request["name"] == "fix-1" and len(request["planHash"]) == 64 and request["ttlSeconds"] == 7200
    human = daoflow("approval", "request", "--backup-run-id", "nightly", "--name", "fix-2", *ns, kubeconfig=alice)
    assert human.returncode == 0, human.stderr
    assert "restoreapproval.backup.daoflow.dev/fix-2 created" in human.stdout
    assert f"plan hash: {request['planHash']}" in human.stdout

    # alice may not approve her own request: one line, the API server's words, a distinct code.
    wait_until(lambda: "no self-approval" in daoflow("approval", "approve", "fix-1", *ns, kubeconfig=alice).stderr,
               what="the self-approval refusal")
    assert_one_line_error(daoflow("approval", "approve", "fix-1", *ns, kubeconfig=alice), cli_module.EXIT_FORBIDDEN,
                          "no self-approval: alice requested RestoreApproval fix-1")
    # Nor may carol, who lacks approvals:decide.
    assert_one_line_error(daoflow("approval", "approve", "fix-1", *ns, kubeconfig=cluster.user_kubeconfig("carol")),
                          cli_module.EXIT_FORBIDDEN, "forbidden")

    # alice's restore waits for the approval, and says so.
    env = {**os.environ, "KUBECONFIG": str(alice), "PYTHONUNBUFFERED": "1"}  # its lines as they come
    waiting = subprocess.Popen([sys.executable, "-m", "daoflow_operator.cli", "backup", "restore", "--backup-run-id",
                                "nightly", "--approval", "fix-1", "--yes", "--wait", "--timeout", "180",
                                "--name", "approved", *ns], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(waiting.stdout), daemon=True)
    reader.start()
    # Approved only once the CLI has said it waits: a slow start must not let it miss the wait.
    wait_until(lambda: any(line.startswith("waiting for approval:") for line in list(lines)),
               timeout=120, what="the CLI to say that the restore awaits its approval")
    listed = json.loads(daoflow("approval", "list", "--json", *ns, kubeconfig=bob).stdout)
    assert {r["name"]: r["decision"] for r in listed} == {"fix-1": "-", "fix-2": "-"}
    approved = wait_until(lambda: (r := daoflow("approval", "approve", "fix-1", "--comment", "checked", *ns,
                                                kubeconfig=bob)).returncode == 0 and r, what="bob's approval")
    assert approved.stdout.strip() == "restoreapproval.backup.daoflow.dev/fix-1 approved by bob"
    waiting.wait(timeout=200)
    reader.join(timeout=10)
    out, err = "".join(lines), waiting.stderr.read()
    assert waiting.returncode == cli_module.EXIT_OK, err
    assert "phase: AwaitingApproval" in out and "waiting for approval: waiting for RestoreApproval fix-1" in out
    assert "phase: Succeeded" in out
    assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(source_tree(cluster, namespace))
    assert len(jobs(cluster, namespace)) == 1

    shown = daoflow("approval", "show", "fix-1", *ns, kubeconfig=alice)
    assert shown.returncode == 0 and "Decided by:   bob" in shown.stdout and "Used by:      approved" in shown.stdout
    # A second decision is refused.
    assert_one_line_error(daoflow("approval", "reject", "fix-1", *ns, kubeconfig=bob), cli_module.EXIT_FORBIDDEN,
                          "was already decided (Approved by bob)")

    # A rejected approval ends the waiting restore with its own code.
    assert daoflow("approval", "reject", "fix-2", "--comment", "not today", *ns, kubeconfig=bob).returncode == 0
    rejected = daoflow("backup", "restore", "--backup-run-id", "nightly", "--approval", "fix-2", "--yes", "--wait",
                       "--timeout", "60", *ns, kubeconfig=alice)
    assert rejected.returncode == cli_module.EXIT_APPROVAL_REJECTED, rejected.stderr
    assert "ApprovalRejected: RestoreApproval fix-2 was rejected by bob (not today)" in rejected.stderr
    # And so does one that expires undecided.
    assert daoflow("approval", "request", "--backup-run-id", "nightly", "--ttl", "10s", "--name", "brief", *ns,
                   kubeconfig=alice).returncode == 0
    expired = daoflow("backup", "restore", "--backup-run-id", "nightly", "--approval", "brief", "--yes", "--wait",
                      "--timeout", "60", *ns, kubeconfig=alice)
    assert expired.returncode == cli_module.EXIT_APPROVAL_EXPIRED, expired.stderr
    assert "waiting for approval" in expired.stdout and "ApprovalExpired" in expired.stderr
    assert "Traceback" not in rejected.stderr + expired.stderr
