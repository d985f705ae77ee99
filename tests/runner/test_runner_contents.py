"""The archive's own counts (artifact.files, artifact.uncompressedBytes): what was unpacked must
match them before the commit, or the restore fails with ContentMismatch and changes nothing."""

from __future__ import annotations

import os
import tarfile

import pytest

from artifacts import archive_counts
from daoflow_operator.runner.failures import exit_code
from runner_testlib import compress_bytes, info, run_main, snapshot, tar_bytes, volume_plan

FORMATS = ["tar", "tar+gzip", "tar+zstd"]


def members(names: list[str]) -> list:
    out = [(info("dir", tarfile.DIRTYPE, 0o755), None)]
    for name in names:
        out.append((info(f"dir/{name}"), f"content of {name}\n".encode()))
    out.append((info("dir/link", tarfile.SYMTYPE, linkname=names[0]), None))
    out.append((info("dir/hard", tarfile.LNKTYPE, linkname=f"dir/{names[0]}"), None))
    return out


FULL = ["a.txt", "b.txt", "c.txt"]


def write_artifact(tmp_path, names: list[str], fmt: str = "tar"):
    folder = tmp_path / "artifacts"
    folder.mkdir(exist_ok=True)
    path = folder / f"backup.{fmt.replace('+', '.')}"
    path.write_bytes(compress_bytes(tar_bytes(members(names)), fmt))
    return path


def counted_plan(artifact, target, fmt="tar", existing=None, files=None, uncompressed=None):
    plan = volume_plan(artifact, target, fmt=fmt, existing=existing)
    if files is not None:
        plan["artifact"]["files"] = files
    if uncompressed is not None:
        plan["artifact"]["uncompressedBytes"] = uncompressed
    return plan


def make_target(tmp_path, existing: str):
    """The restore's target: empty, or holding old data that a Replace must keep on failure."""
    target = tmp_path / "target"
    target.mkdir()
    if existing == "Replace":
        (target / "old.txt").write_text("old data\n")
        os.utime(target / "old.txt", (1_600_000_000, 1_600_000_000))
    return target


@pytest.mark.parametrize("fmt", FORMATS)
def test_counts_that_match_restore(fmt, tmp_path):
    artifact = write_artifact(tmp_path, FULL, fmt)
    files, size = archive_counts(artifact, fmt)
    assert files == 6  # the folder, three files, a symlink and a hard link
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(counted_plan(artifact, target, fmt, files=files, uncompressed=size), tmp_path / "job")
    assert run.code == 0, run.output
    assert run.report["files"] == files
    assert (target / "dir" / "b.txt").read_text() == "content of b.txt\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_sample_tree_matches_its_counts_in_every_format(fmt, sample, tmp_path):
    """GNU tar (`./` names, long-name headers) and pax archives alike: the root is not counted."""
    files, size = archive_counts(sample.artifacts[fmt], fmt)
    target = tmp_path / "target"
    target.mkdir()
    plan = counted_plan(sample.artifacts[fmt], target, fmt, files=files, uncompressed=size)
    run = run_main(plan, tmp_path / "job")
    assert run.code == 0, run.output
    assert run.report["files"] == files
    assert snapshot(target) == snapshot(sample.tree)


@pytest.mark.parametrize("existing", ["FailIfNotEmpty", "Replace"])
def test_a_wrong_files_count_is_a_content_mismatch_and_changes_nothing(existing, tmp_path):
    artifact = write_artifact(tmp_path, FULL)
    files, size = archive_counts(artifact, "tar")
    target = make_target(tmp_path, existing)
    before = snapshot(target)
    run = run_main(counted_plan(artifact, target, existing=existing, files=files + 1, uncompressed=size),
                   tmp_path / "job")
    assert run.code == exit_code("ContentMismatch") == 11, run.output
    report = run.report
    assert report["reason"] == "ContentMismatch"
    assert report["verified"] is True  # the checksum matched; the contents did not
    assert report["message"] == f"the archive holds {files} members, the BackupRun records {files + 1}"
    assert snapshot(target) == before
    assert os.listdir(target) == ([] if existing == "FailIfNotEmpty" else ["old.txt"])


@pytest.mark.parametrize("existing", ["FailIfNotEmpty", "Replace"])
def test_a_wrong_uncompressed_bytes_count_is_a_content_mismatch(existing, tmp_path):
    artifact = write_artifact(tmp_path, FULL, "tar+zstd")
    files, size = archive_counts(artifact, "tar+zstd")
    target = make_target(tmp_path, existing)
    before = snapshot(target)
    run = run_main(counted_plan(artifact, target, "tar+zstd", existing=existing, files=files,
                                uncompressed=size - 1), tmp_path / "job")
    assert run.code == 11, run.output
    assert run.report["reason"] == "ContentMismatch"
    assert run.report["message"] == f"the archive's files hold {size} bytes, the BackupRun records {size - 1}"
    assert snapshot(target) == before


def test_an_archive_missing_members_is_caught_by_the_counts_of_the_real_tree(tmp_path):
    """What a fooled parser (or a backup tool that dropped members) would look like: the
    artifact matches its checksum, but fewer members are restored than the backup recorded."""
    (tmp_path / "real").mkdir()
    real = write_artifact(tmp_path / "real", FULL)
    files, size = archive_counts(real, "tar")
    short = write_artifact(tmp_path, FULL[:2])
    target = make_target(tmp_path, "Replace")
    before = snapshot(target)
    run = run_main(counted_plan(short, target, existing="Replace", files=files, uncompressed=size),
                   tmp_path / "job")
    assert run.code == 11, run.output
    assert run.report["reason"] == "ContentMismatch"
    assert run.report["message"] == f"the archive holds {files - 1} members, the BackupRun records {files}"
    assert snapshot(target) == before


def test_without_counts_only_the_checksum_is_verified(tmp_path):
    artifact = write_artifact(tmp_path, FULL[:2])
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(counted_plan(artifact, target), tmp_path / "job")
    assert run.code == 0, run.output


def test_one_count_alone_is_checked(tmp_path):
    artifact = write_artifact(tmp_path, FULL)
    files, size = archive_counts(artifact, "tar")
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(counted_plan(artifact, target, uncompressed=size + 5), tmp_path / "job")
    assert run.report["reason"] == "ContentMismatch"
    assert os.listdir(target) == []


def test_negative_counts_are_an_invalid_plan(tmp_path):
    artifact = write_artifact(tmp_path, FULL)
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(counted_plan(artifact, target, files=-1), tmp_path / "job")
    assert run.report["reason"] == "InvalidPlan"
    assert "artifact.files" in run.report["message"]
