"""The archive's own counts (status.artifact.files, uncompressedBytes), checked by the real runner in
a real pod: a BackupRun whose counts differ from its artifact fails with ContentMismatch and leaves
the target as it was; one whose counts are right is restored."""

from __future__ import annotations

import pytest

from artifacts import archive_counts
from backups import (ARTIFACT_PATH, backup_run, condition, destination, restore, snapshot, source_tree,
                     succeeded_with_artifact, wait_phase)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]


def counted_run(cluster, namespace, files_delta: int = 0) -> dict:
    destination(cluster, namespace)
    status = succeeded_with_artifact(cluster, namespace)
    files, size = archive_counts(cluster.volume_dir(f"{namespace}-backups") / ARTIFACT_PATH, "tar+zstd")
    counts = {"files": files, "uncompressedBytes": size}
    counts["files"] += files_delta
    status["artifact"].update(counts)
    run = backup_run(cluster, namespace, status=status)
    assert run["status"]["artifact"]["files"] == counts["files"]
    return counts


def test_a_run_whose_recorded_files_differ_fails_with_content_mismatch_and_changes_nothing(
        cluster, namespace, operator):
    counts = counted_run(cluster, namespace, files_delta=1)
    target = cluster.volume_dir(f"{namespace}-app-data")
    (target / "existing.txt").write_text("keep me\n")
    before = snapshot(target)
    name = restore(cluster, namespace, existingData="Replace")

    status = wait_phase(cluster, namespace, name, "Failed", timeout=120)
    assert condition(status, "Succeeded")["reason"] == "ContentMismatch"
    assert condition(status, "ArtifactVerified")["status"] == "False"
    assert condition(status, "ArtifactVerified")["reason"] == "ContentMismatch"
    assert status["result"]["reason"] == "ContentMismatch" and status["result"]["verified"] is True
    assert f"the BackupRun records {counts['files']}" in status["result"]["message"]
    assert ("verify", "failed") in [(e["step"], e["outcome"]) for e in status["auditTrail"]]
    [check] = [c for c in status["plan"]["preflightChecks"] if c["name"] == "contentCounts"]
    assert check["status"] == "ok"
    assert snapshot(target) == before


def test_a_run_whose_counts_match_is_restored(cluster, namespace, operator):
    counts = counted_run(cluster, namespace)
    name = restore(cluster, namespace)

    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    assert status["plan"]["artifact"]["files"] == counts["files"]
    assert status["plan"]["artifact"]["uncompressedBytes"] == counts["uncompressedBytes"]
    assert status["result"]["files"] == counts["files"]
    assert condition(status, "ArtifactVerified")["status"] == "True"
    target = cluster.volume_dir(f"{namespace}-app-data")
    assert snapshot(target) == snapshot(source_tree(cluster, namespace))
