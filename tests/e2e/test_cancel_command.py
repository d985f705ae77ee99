"""`daoflow backup restore cancel NAME` on the real API server, with the real runner on the real node:
only the scope backup:restore may ask (admission), the API server records who did, the runner rolls
back mid-Replace so the old data stays byte for byte, the restore ends Cancelled and keeps its
record; a finished restore cannot be cancelled."""

from __future__ import annotations

import pytest

from backups import condition, events, restore_status, snapshot, wait_phase
from cluster_helpers import wait_until
from daoflow_operator import status as status_
from test_cancel import slow_s3, start_slow_replace  # noqa: F401 - slow_s3 is a fixture
from test_cli import daoflow

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]


def bind(cluster, namespace: str, user: str, *scopes: str) -> None:
    for scope in scopes:
        cluster.kubectl("create", "rolebinding", f"{user}-{scope}", "-n", namespace,
                        f"--clusterrole=daoflow:backup-{scope}", f"--user={cluster.user_name(user)}")


def test_cancel_by_command_needs_the_restore_scope_names_the_canceller_and_rolls_back(
        cluster, namespace, operator, s3, slow_s3, tmp_path):  # noqa: F811
    bind(cluster, namespace, "bob", "read")
    # alice may patch BackupRestores (any role might grant that) but lacks backup:restore: admission refuses.
    bind(cluster, namespace, "alice", "read")
    cluster.kubectl("create", "role", "patch-restores", "-n", namespace, "--verb=patch",
                    "--resource=backuprestores.backup.daoflow.dev")
    cluster.kubectl("create", "rolebinding", "alice-patch", "-n", namespace, "--role=patch-restores",
                    f"--user={cluster.user_name('alice')}")
    bind(cluster, namespace, "carol", "read", "restore")
    slow = start_slow_replace(cluster, namespace, s3, slow_s3, tmp_path)
    name = slow.name

    bob = daoflow("backup", "restore", "cancel", name, "-n", namespace, kubeconfig=cluster.user_kubeconfig("bob"))
    assert bob.returncode == 5, bob.stderr
    assert "forbidden" in bob.stderr and "needs the scope backup:restore" in bob.stderr
    alice = daoflow("backup", "restore", "cancel", name, "-n", namespace, kubeconfig=cluster.user_kubeconfig("alice"))
    assert alice.returncode == 5, alice.stderr
    assert "cancelling a BackupRestore needs the scope backup:restore (the verb restore on backupruns/" in alice.stderr
    forged = cluster.kubectl("annotate", "backuprestore", name, "-n", namespace,
                             f"{status_.CANCEL_REQUESTED_BY}=the-ceo", kubeconfig=cluster.user_kubeconfig("carol"),
                             check=False)
    assert forged.returncode != 0 and "may not be set or changed otherwise" in forged.stderr
    assert restore_status(cluster, namespace, name)["phase"] == "Running"

    carol = daoflow("backup", "restore", "cancel", name, "-n", namespace, "--wait",
                    kubeconfig=cluster.user_kubeconfig("carol"), timeout=240)
    assert carol.returncode == 0, (carol.stdout, carol.stderr)
    assert f"cancellation requested by {cluster.user_name('carol')}" in carol.stdout
    st = wait_phase(cluster, namespace, name, "Cancelled", timeout=10)

    # The old data is intact, byte for byte; nothing of the new data is visible.
    visible = {k: v for k, v in snapshot(slow.target).items() if not k.startswith(".daoflow-restore")}
    assert visible == slow.before

    # The record stays (not deleted), names the canceller as the API server recorded it, and lets go of it.
    obj = cluster.get("backuprestore", name, namespace)
    assert obj["metadata"]["annotations"][status_.CANCEL_REQUESTED_BY] == cluster.user_name("carol")
    assert status_.FINALIZER not in (obj["metadata"].get("finalizers") or [])
    assert condition(st, "Succeeded")["reason"] == status_.CANCELLED
    assert f"cancellation was requested by {cluster.user_name('carol')}" in condition(st, "Succeeded")["message"]
    assert any(f"requested by {cluster.user_name('carol')}" in e["message"] for e in st["auditTrail"])
    reasons = [e["reason"] for e in events(cluster, namespace, name)]
    assert status_.CANCELLING in reasons and status_.CANCELLED in reasons
    wait_until(lambda: not cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.strip(),
               timeout=60, what="the cancelled Job to be gone")

    # A finished restore cannot be cancelled: the CLI says so, and so does admission to anyone else.
    again = daoflow("backup", "restore", "cancel", name, "-n", namespace, kubeconfig=cluster.user_kubeconfig("carol"))
    assert again.returncode == 9 and f"BackupRestore {name} has already ended (Cancelled)" in again.stderr


def test_cancelling_a_finished_restore_is_refused_at_admission(cluster, namespace, operator):
    from backups import backup_run, destination, restore

    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    refused = cluster.kubectl("annotate", "backuprestore", name, "-n", namespace, f"{status_.CANCEL_REQUESTED}=true",
                              check=False)
    assert refused.returncode != 0
    assert f"BackupRestore {name} has already ended (Succeeded): there is nothing to cancel" in refused.stderr
    created = cluster.kubectl("create", "-f", "-", check=False, input=(
        '{"apiVersion":"backup.daoflow.dev/v1alpha1","kind":"BackupRestore","metadata":{"name":"pre-cancelled",'
        f'"namespace":"{namespace}","annotations":{{"{status_.CANCEL_REQUESTED}":"true"}}}},'
        '"spec":{"backupRunRef":{"name":"nightly"},"dryRun":true}}'))
    assert created.returncode != 0 and "may not be set at" in created.stderr
