"""The archive's own counts (status.artifact.files, uncompressedBytes), checked by the real runner in
a real pod: a BackupRun whose counts differ from its artifact fails with ContentMismatch and leaves
the target as it was; one whose counts are right is restored."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import zstandard

from backups import (ARTIFACT_PATH, backup_run, condition, destination, restore, snapshot, source_tree,
                     succeeded_with_artifact, wait_phase)

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def _real_node(cluster):
    if not cluster.real_node:
        reason = cluster.local.node_unavailable if cluster.local is not None else "not the local control plane"
        pytest.skip(f"needs the local control plane's real node: {reason}")


def artifact_counts(path: Path) -> dict:
    """`files` and `uncompressedBytes` of a tar+zstd artifact, as a backup tool would record them
    (docs/runner.md): every member but the archive's root, and the regular files' sizes."""
    files = size = 0
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as raw, \
            tarfile.open(fileobj=raw, mode="r|") as tf:
        for member in tf:
            if member.name.strip("/") in ("", "."):
                continue
            files += 1
            if member.isreg():
                size += member.size
    return {"files": files, "uncompressedBytes": size}


def counted_run(cluster, namespace, files_delta: int = 0) -> dict:
    destination(cluster, namespace)
    status = succeeded_with_artifact(cluster, namespace)
    counts = artifact_counts(cluster.volume_dir(f"{namespace}-backups") / ARTIFACT_PATH)
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
