"""The `daoflow` CLI against the real API server: its JSON, its refusals and its exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from backups import backup_run, destination, restore_status
from daoflow_operator import cli as cli_module

pytestmark = pytest.mark.cluster


def daoflow(*args, kubeconfig, stdin=subprocess.DEVNULL, timeout=120):
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([sys.executable, "-m", "daoflow_operator.cli", *args], env=env, capture_output=True,
                          text=True, stdin=stdin, timeout=timeout)


def assert_one_line_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_dry_run_json_has_the_product_shape_and_writes_nothing(cluster, namespace):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    before = cluster.kubectl("get", "backuprestores", "-n", namespace, "-o", "name").stdout
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "--dry-run", "--json", "-n", namespace,
                     kubeconfig=cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["isReady"] is True
    assert plan["backupRun"]["name"] == "nightly" and plan["backupRun"]["uid"]
    assert plan["target"]["type"] == "volume" and plan["target"]["inPlace"] is True
    assert {c["status"] for c in plan["preflightChecks"]} <= {"ok", "warn"}
    assert [s["step"] for s in plan["steps"]] == ["validate", "queue", "fetch", "execute", "verify", "record"]
    assert plan["executeCommand"].startswith("daoflow backup restore --backup-run-id nightly")
    assert plan["approvalRequest"]["planHash"] == plan["planHash"]
    assert cluster.kubectl("get", "backuprestores", "-n", namespace, "-o", "name").stdout == before == ""

    human = daoflow("backup", "restore", "--backup-run-id", "nightly", "--dry-run", "-n", namespace,
                    kubeconfig=cluster.kubeconfig)
    assert human.returncode == 0 and "Preflight checks:" in human.stdout and plan["planHash"] in human.stdout


def test_a_restore_without_yes_is_refused_without_a_tty(cluster, namespace):
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "-n", namespace,
                     kubeconfig=cluster.kubeconfig)
    assert_one_line_error(result, cli_module.EXIT_USAGE, "--yes", "--dry-run")


def test_a_restore_without_yes_asks_on_a_tty(cluster, namespace):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    master, slave = pty.openpty()
    os.write(master, b"n\n")
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "-n", namespace,
                     kubeconfig=cluster.kubeconfig, stdin=slave)
    os.close(slave)
    os.close(master)
    assert result.returncode == cli_module.EXIT_USAGE
    assert "not restored" in result.stderr
    assert cluster.kubectl("get", "backuprestores", "-n", namespace, "-o", "name").stdout == ""


def test_a_missing_backup_run(cluster, namespace):
    result = daoflow("backup", "restore", "--backup-run-id", "nope", "--dry-run", "--json", "-n", namespace,
                     kubeconfig=cluster.kubeconfig)
    assert_one_line_error(result, cli_module.EXIT_NOT_FOUND, "BackupRun 'nope' not found")
    assert result.stdout == ""


def test_no_cluster(cluster, tmp_path):
    closed = cluster.token_kubeconfig("closed", "x")
    text = closed.read_text()
    server = json.loads(text)["clusters"][0]["cluster"]["server"]
    (tmp_path / "closed").write_text(text.replace(server, "https://127.0.0.1:9"))
    result = daoflow("backup", "list", kubeconfig=tmp_path / "closed")
    assert_one_line_error(result, cli_module.EXIT_NO_CLUSTER, "cannot reach the Kubernetes API server")
    missing = daoflow("backup", "list", kubeconfig=tmp_path / "does-not-exist")
    assert_one_line_error(missing, cli_module.EXIT_NO_CLUSTER, "no cluster configured")


def test_forbidden(cluster, namespace):
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "--dry-run", "-n", namespace,
                     kubeconfig=cluster.user_kubeconfig("carol"))
    assert_one_line_error(result, cli_module.EXIT_FORBIDDEN, "forbidden")


def test_yes_wait_follows_a_restore_to_its_end(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "--yes", "--wait", "--name", "via-cli",
                     "-n", namespace, kubeconfig=cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    assert "backuprestore.backup.daoflow.dev/via-cli created" in result.stdout
    assert "phase: Succeeded" in result.stdout and "verify" in result.stdout
    assert restore_status(cluster, namespace, "via-cli")["phase"] == "Succeeded"
    listing = daoflow("backup", "list", "-n", namespace, kubeconfig=cluster.kubeconfig)
    assert listing.returncode == 0 and "nightly" in listing.stdout and "Succeeded" in listing.stdout


def test_yes_wait_exits_non_zero_when_the_restore_fails(cluster, namespace, operator):
    destination(cluster, namespace)
    backup_run(cluster, namespace, status={"phase": "Failed", "error": "disk full"})
    result = daoflow("backup", "restore", "--backup-run-id", "nightly", "--yes", "--wait", "-n", namespace,
                     kubeconfig=cluster.kubeconfig)
    assert result.returncode == cli_module.EXIT_RESTORE_FAILED
    assert "BackupRunFailed" in result.stderr and "Traceback" not in result.stderr


def test_the_cli_is_also_a_kubectl_plugin(cluster, namespace):
    from cluster_helpers import kubectl_binary

    destination(cluster, namespace)
    backup_run(cluster, namespace)
    scripts = os.path.dirname(sys.executable)  # where the package installed kubectl-daoflow
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PATH": f"{scripts}:{os.environ['PATH']}"}
    result = subprocess.run([kubectl_binary(), "daoflow", "backup", "list", "-n", namespace], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "nightly" in result.stdout and "Succeeded" in result.stdout
