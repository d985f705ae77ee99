"""Deleting a running restore cancels it: the runner rolls back in its grace period, the old data
stays, the record stays until the Job has ended, and the final record outlives the object in the
operator's log and in the events.

The real runner, in a real pod on the real node, reads its artifact from the real S3 server through
a throttled relay: a slow link, so the restore is still writing when it is deleted.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from backups import (ARTIFACT_PATH, application_data, backup_run, condition, events, jobs, make_artifact, restore,
                     sample_tree, snapshot, succeeded)
from cluster_helpers import ThrottledRelay, wait_until
from daoflow_operator import status as status_

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]

RATE = 256 << 10  # bytes a second from S3 to the runner: a 16 MiB artifact takes about a minute


def records(log: str, name: str) -> list[dict]:
    """The operator's final-record lines (bare JSON objects) for one restore."""
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            with_record = json.loads(line)
            if with_record.get("record") and with_record.get("name") == name:
                out.append(with_record)
    return out


def test_deleting_a_running_replace_restore_rolls_it_back_and_keeps_the_record_until_its_job_ended(
        cluster, namespace, operator, s3, tmp_path):
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}")
    relay = ThrottledRelay(s3.port, RATE)
    try:
        cluster.apply({"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupDestination",
                       "metadata": {"name": "slow-s3", "namespace": namespace},
                       "spec": {"s3": {"endpoint": f"http://{cluster.forward(relay.port)}", "allowInsecureHTTP": True,
                                       "bucket": s3.bucket, "prefix": f"{namespace}/", "forcePathStyle": True,
                                       "credentialsSecretRef": {"name": "s3-creds"}}}})
        target = application_data(cluster, namespace)
        before = snapshot(target)
        tree = sample_tree(tmp_path / "tree")
        with open(tree / "large.bin", "wb") as f:  # incompressible: the artifact stays 16 MiB
            for _ in range(4):
                f.write(os.urandom(4 << 20))
        artifact = make_artifact(tree, tmp_path / "artifact.tar.zst")
        s3.upload(f"{namespace}/{ARTIFACT_PATH}", tmp_path / "artifact.tar.zst")
        status = succeeded()
        status["artifact"].update(artifact)
        backup_run(cluster, namespace, destination_name="slow-s3", status=status)
        name = restore(cluster, namespace, existingData="Replace")

        # The runner is writing into the target (a MiB staged already) when the restore is deleted.
        def staged() -> int:
            return sum(p.stat().st_size for p in (target / ".daoflow-restore").rglob("*") if p.is_file())

        wait_until(lambda: (target / ".daoflow-restore").exists() and staged() > 1 << 20, timeout=120,
                   interval=0.1, what="the runner to write into the target")
        obj = cluster.get("backuprestore", name, namespace)
        assert status_.FINALIZER in obj["metadata"]["finalizers"]
        assert obj["status"]["phase"] == "Running"
        deleted_at = time.monotonic()
        cluster.kubectl("delete", "backuprestore", name, "-n", namespace, "--wait=false")

        # While the Job runs its course, the record stays: marked for deletion, held by the finalizer.
        def cancelling():
            held = cluster.get("backuprestore", name, namespace)
            ready = condition(held.get("status") or {}, "Ready")
            return held if ready.get("reason") == status_.CANCELLING else None

        held = wait_until(cancelling, timeout=30, interval=0.1, what="the restore to be cancelling")
        assert held["metadata"]["deletionTimestamp"] and status_.FINALIZER in held["metadata"]["finalizers"]
        assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{name}-restore"]

        # Every look until it is gone: whenever the restore is missing, its Job has ended (or is gone).
        seen_job_while_held = False

        def gone():
            nonlocal seen_job_while_held
            exists = cluster.kubectl("get", "backuprestore", name, "-n", namespace, check=False).returncode == 0
            job_pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
            live = [p for p in job_pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
            if exists:
                seen_job_while_held |= bool(jobs(cluster, namespace))
                return False
            assert not [p for p in live if not p["metadata"].get("deletionTimestamp") or any(
                "running" in (c.get("state") or {}) for c in p["status"].get("containerStatuses") or [])], \
                "the record went while the runner still ran"
            return True

        wait_until(gone, timeout=180, interval=0.2, what="the deleted restore to go once its Job ended")
        took = time.monotonic() - deleted_at
        assert seen_job_while_held
        wait_until(lambda: not jobs(cluster, namespace), timeout=60, what="the cancelled Job to be gone")

        # The old data is intact, byte for byte; nothing of the new data is visible.
        visible = {k: v for k, v in snapshot(target).items() if not k.startswith(".daoflow-restore")}
        assert visible == before

        # The final record outlives the object: one JSON line in the operator's log, and the events.
        lines = records(operator.output(), name)
        assert len(lines) == 1, lines
        record = lines[0]
        assert (record["kind"], record["namespace"], record["phase"], record["reason"], record["deleted"]) == (
            "BackupRestore", namespace, "Failed", status_.CANCELLED, True)
        assert "rolled the target back" in record["message"], record
        assert record["uid"] == obj["metadata"]["uid"] and record["job"] == f"{name}-restore"
        assert record["target"]["persistentVolumeClaim"]["claimName"] == "app-data"
        reasons = [e["reason"] for e in events(cluster, namespace, name)]
        assert status_.CANCELLING in reasons and status_.CANCELLED in reasons
        print(f"\ncancel: {took:.1f}s from the delete to the record's removal (rollback included); "
              f"grace period {operator.env_extra.get('DAOFLOW_RUNNER_TERMINATION_GRACE_SECONDS', '120')}s")
    finally:
        relay.close()
