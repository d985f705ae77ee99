"""Deleting a running restore cancels it: the runner rolls back in its grace period, the old data
stays, the record stays until the Job has ended, and the final record outlives the object in the
operator's log and in the events.

The real runner, in a real pod on the real node, reads its artifact from the real S3 server through
a throttled relay: a slow link, so the restore is still writing when it is deleted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from backups import (application_data, condition, events, jobs, large_run, restore, settle, snapshot,
                     throttled_s3_destination)
from cluster_helpers import wait_until
from daoflow_operator import status as status_

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]

RATE = 256 << 10  # bytes a second from S3 to the runner: a 16 MiB artifact takes about a minute


@dataclass
class SlowReplace:
    name: str
    target: Path
    before: dict  # snapshot of the target's old data


@pytest.fixture
def slow_s3(cluster, namespace, s3):
    """A BackupDestination on the real S3 server, reached by pods through a throttled relay."""
    with throttled_s3_destination(cluster, namespace, s3, RATE):
        yield "slow-s3"


def start_slow_replace(cluster, namespace, s3, destination: str, tmp_path) -> SlowReplace:
    """A Replace restore over an application's data, returned once its runner has written a MiB
    into the target (its staging folder)."""
    target = application_data(cluster, namespace)
    before = snapshot(target)
    large_run(cluster, namespace, s3, tmp_path, destination)
    name = restore(cluster, namespace, existingData="Replace")

    def staged() -> int:
        return sum(p.stat().st_size for p in (target / ".daoflow-restore").rglob("*") if p.is_file())

    wait_until(lambda: (target / ".daoflow-restore").exists() and staged() > 1 << 20, timeout=120,
               interval=0.1, what="the runner to write into the target")
    return SlowReplace(name, target, before)


def records(log: str, name: str) -> list[dict]:
    """The operator's final-record lines (bare JSON objects) for one restore."""
    return [r for r in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
            if r.get("record") and r.get("name") == name]


def wait_gone_after_its_job(cluster, namespace: str, name: str) -> None:
    """Polls until the deleted restore is gone; whenever it is missing, no runner may still run."""
    def gone():
        if cluster.kubectl("get", "backuprestore", name, "-n", namespace, check=False).returncode == 0:
            return False
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        running = [p["metadata"]["name"] for p in pods if any(
            "running" in (c.get("state") or {}) for c in p["status"].get("containerStatuses") or [])]
        assert not running, f"the record went while the runner still ran in {running}"
        return True

    wait_until(gone, timeout=180, interval=0.2, what="the deleted restore to go once its Job ended")
    wait_until(lambda: not jobs(cluster, namespace), timeout=60, what="the cancelled Job to be gone")


def assert_cancelled_record(log: str, namespace: str, restore_: SlowReplace, uid: str) -> None:
    lines = records(log, restore_.name)
    assert len(lines) == 1, lines
    record = lines[0]
    assert (record["kind"], record["namespace"], record["phase"], record["reason"], record["deleted"]) == (
        "BackupRestore", namespace, "Cancelled", status_.CANCELLED, True)
    assert "rolled the target back" in record["message"], record
    assert record["uid"] == uid and record["job"] == f"{restore_.name}-restore"
    assert record["target"]["persistentVolumeClaim"]["claimName"] == "app-data"


def test_deleting_a_running_replace_restore_rolls_it_back_and_keeps_the_record_until_its_job_ended(
        cluster, namespace, operator, s3, slow_s3, tmp_path):
    slow = start_slow_replace(cluster, namespace, s3, slow_s3, tmp_path)
    obj = cluster.get("backuprestore", slow.name, namespace)
    assert status_.FINALIZER in obj["metadata"]["finalizers"]
    assert obj["status"]["phase"] == "Running"
    deleted_at = time.monotonic()
    cluster.kubectl("delete", "backuprestore", slow.name, "-n", namespace, "--wait=false")

    # While the Job runs its course, the record stays: marked for deletion, held by the finalizer.
    def cancelling():
        held = cluster.get("backuprestore", slow.name, namespace)
        return held if condition(held.get("status") or {}, "Ready").get("reason") == status_.CANCELLING else None

    held = wait_until(cancelling, timeout=30, interval=0.1, what="the restore to be cancelling")
    assert held["metadata"]["deletionTimestamp"] and status_.FINALIZER in held["metadata"]["finalizers"]
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{slow.name}-restore"]

    wait_gone_after_its_job(cluster, namespace, slow.name)
    took = time.monotonic() - deleted_at

    # The old data is intact, byte for byte; nothing of the new data is visible.
    visible = {k: v for k, v in snapshot(slow.target).items() if not k.startswith(".daoflow-restore")}
    assert visible == slow.before

    # The final record outlives the object: one JSON line in the operator's log, and the events.
    assert_cancelled_record(operator.output(), namespace, slow, obj["metadata"]["uid"])
    reasons = [e["reason"] for e in events(cluster, namespace, slow.name)]
    assert status_.CANCELLING in reasons and status_.CANCELLED in reasons
    print(f"\ncancel: {took:.1f}s from the delete to the record's removal (rollback included); "
          f"grace period {operator.env_extra.get('DAOFLOW_RUNNER_TERMINATION_GRACE_SECONDS', '120')}s")


def test_a_restore_deleted_while_the_operator_is_down_is_cancelled_when_it_is_back(
        cluster, namespace, start_operator, s3, slow_s3, tmp_path):
    first = start_operator()
    slow = start_slow_replace(cluster, namespace, s3, slow_s3, tmp_path)
    uid = cluster.get("backuprestore", slow.name, namespace)["metadata"]["uid"]
    first.kill()
    cluster.kubectl("delete", "backuprestore", slow.name, "-n", namespace, "--wait=false")

    # Nobody to cancel it: the record and the Job stay, the runner keeps writing.
    settle(3)
    held = cluster.get("backuprestore", slow.name, namespace)
    assert held["metadata"]["deletionTimestamp"] and held["status"]["phase"] in ("Queued", "Running")
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{slow.name}-restore"]

    second = start_operator()
    wait_gone_after_its_job(cluster, namespace, slow.name)
    visible = {k: v for k, v in snapshot(slow.target).items() if not k.startswith(".daoflow-restore")}
    assert visible == slow.before
    assert records(first.output(), slow.name) == []
    assert_cancelled_record(second.output(), namespace, slow, uid)
