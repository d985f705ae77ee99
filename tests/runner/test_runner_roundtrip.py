"""Round trips through real storage, tampering, and Replace with rollback (issue items 1-4)."""

from __future__ import annotations

import os
import sys
import shutil

import pytest

from runner_testlib import plan_for, run_runner, sha256_file, snapshot, tree_listing

FORMATS = ["tar", "tar+gzip", "tar+zstd"]


def volume_source(sample) -> dict:
    return {"type": "volume", "mountPath": str(sample.dir)}


def target_of(path) -> dict:
    return {"type": "volume", "mountPath": str(path)}


def assert_success(run):
    assert run.code == 0, run.output
    report = run.report
    assert report["verified"] is True
    assert "reason" not in report
    return report


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_from_s3(fmt, s3, sample, uploaded, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=sample.artifacts[fmt], path=uploaded[fmt], fmt=fmt,
                    source=s3.source(prefix="team-a/"), target=target_of(target))
    run = run_runner(plan, tmp_path / "job")
    report = assert_success(run)
    assert report["sha256"] == sample.sha(fmt)
    assert report["bytes"] == os.path.getsize(sample.artifacts[fmt])
    assert snapshot(target) == snapshot(sample.tree)
    assert not os.path.exists(target / ".daoflow-restore")


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_from_volume(fmt, sample, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=sample.artifacts[fmt], path=f"runs/{sample.artifacts[fmt].name}",
                    fmt=fmt, source=volume_source(sample), target=target_of(target))
    run = run_runner(plan, tmp_path / "job")
    assert_success(run)
    assert snapshot(target) == snapshot(sample.tree)


def test_virtual_host_style_and_sub_path_prefix(s3, sample, uploaded, tmp_path):
    """Virtual-host addressing: the bucket goes into the Host header. `localhost` resolves
    to loopback, and the S3 server (started with --virtual-domain localhost) reads the bucket
    from `backups.localhost:<port>`."""
    from daoflow_operator.runner.s3 import S3Object, read_credentials

    obj = S3Object(endpoint=f"http://localhost:{s3.port}", bucket=s3.bucket,
                   key="team-a/" + uploaded["tar+zstd"], region="us-east-1",
                   force_path_style=False, credentials=read_credentials(str(s3.creds_dir)),
                   connect_host="127.0.0.1")
    import hashlib
    h = hashlib.sha256()
    for chunk in obj.chunks():
        h.update(chunk)
    assert h.hexdigest() == sample.sha("tar+zstd")
    assert obj.guard.host == "backups.localhost" and obj.guard.ip == "127.0.0.1"


def flip_byte(src, dst, offset=None):
    shutil.copyfile(src, dst)
    size = os.path.getsize(dst)
    offset = size // 2 if offset is None else offset
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    return dst


def old_data(target):
    target.mkdir()
    (target / "keep.txt").write_text("old data\n")
    (target / "sub").mkdir()
    (target / "sub" / "old.bin").write_bytes(os.urandom(1000))
    os.symlink("sub/old.bin", target / "old-link")
    return snapshot(target)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tampered_artifact_changes_nothing(fmt, sample, tmp_path):
    """One flipped byte: ChecksumMismatch, and the target (with data, under Replace) is as it
    was. In a compressed artifact the flip usually breaks decoding first; the runner still
    reads to the end and reports the checksum, the root cause."""
    dest = tmp_path / "dest"
    dest.mkdir()
    tampered = flip_byte(sample.artifacts[fmt], dest / "tampered")
    target = tmp_path / "target"
    before = old_data(target)
    plan = plan_for(artifact=tampered, path="tampered", fmt=fmt, sha256=sample.sha(fmt),
                    source={"type": "volume", "mountPath": str(dest)}, target=target_of(target),
                    existing="Replace")
    run = run_runner(plan, tmp_path / "job")
    assert run.code == 4, run.output
    assert run.report["reason"] == "ChecksumMismatch"
    assert run.report["verified"] is False
    assert run.report["sha256"] == sha256_file(tampered)
    assert snapshot(target) == before
    assert tree_listing(target) == ["keep.txt", "old-link", "sub", "sub/old.bin"]


def test_tampered_artifact_from_s3(s3, sample, tmp_path):
    tampered = flip_byte(sample.artifacts["tar+zstd"], tmp_path / "tampered.tar.zst", offset=1000)
    s3.upload("team-a/runs/tampered.tar.zst", tampered)
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=tampered, path="runs/tampered.tar.zst", fmt="tar+zstd",
                    sha256=sample.sha("tar+zstd"), source=s3.source(prefix="team-a/"),
                    target=target_of(target))
    run = run_runner(plan, tmp_path / "job")
    assert run.report["reason"] == "ChecksumMismatch", run.output
    assert tree_listing(target) == []


def test_replace_swaps_data_and_removes_old(sample, tmp_path):
    target = tmp_path / "target"
    old_data(target)
    plan = plan_for(artifact=sample.artifacts["tar+zstd"], path="runs/sample.tar.zst",
                    fmt="tar+zstd", source=volume_source(sample), target=target_of(target),
                    existing="Replace")
    run = run_runner(plan, tmp_path / "job")
    assert_success(run)
    assert snapshot(target) == snapshot(sample.tree)


def test_replace_failing_midway_keeps_old_data(sample, tmp_path):
    """The archive's tail is damaged, yet the pinned checksum is of this damaged file (the
    backup was bad from the start), so verification cannot catch it: the unpack fails midway
    with CorruptArchive, after many members were staged, and the old data stays."""
    src = sample.artifacts["tar+gzip"]
    dest = tmp_path / "dest"
    dest.mkdir()
    damaged = dest / "damaged.tar.gz"
    size = os.path.getsize(src)
    with open(src, "rb") as f, open(damaged, "wb") as out:
        out.write(f.read(size * 9 // 10))
        out.write(os.urandom(4096))
    target = tmp_path / "target"
    before = old_data(target)
    plan = plan_for(artifact=damaged, path="damaged.tar.gz", fmt="tar+gzip",
                    source={"type": "volume", "mountPath": str(dest)}, target=target_of(target),
                    existing="Replace")
    run = run_runner(plan, tmp_path / "job")
    assert run.code == 9, run.output
    assert run.report["reason"] == "CorruptArchive"
    assert run.report["verified"] is True  # it was the pinned artifact; its content is bad
    assert run.lines[-2]["progress"]["filesDone"] > 100  # it really failed midway
    assert snapshot(target) == before


def test_fail_if_not_empty_is_the_default(sample, tmp_path):
    target = tmp_path / "target"
    before = old_data(target)
    plan = plan_for(artifact=sample.artifacts["tar"], path="runs/sample.tar", fmt="tar",
                    source=volume_source(sample), target=target_of(target))
    run = run_runner(plan, tmp_path / "job")
    assert run.code == 6
    assert run.report["reason"] == "TargetNotEmpty"
    assert "keep.txt" in run.report["message"]
    assert run.report["bytes"] == 0  # refused before anything was fetched
    assert snapshot(target) == before


def test_empty_lost_and_found_does_not_count_as_data(sample, tmp_path):
    target = tmp_path / "target"
    (target / "lost+found").mkdir(parents=True)
    plan = plan_for(artifact=sample.artifacts["tar+zstd"], path="runs/sample.tar.zst",
                    fmt="tar+zstd", source=volume_source(sample), target=target_of(target))
    assert_success(run_runner(plan, tmp_path / "job"))
    assert (target / "lost+found").is_dir()


def test_merge_overwrites_archive_files_and_keeps_others(tmp_path):
    import tarfile
    from runner_testlib import info, tar_bytes

    target = tmp_path / "target"
    (target / "dir").mkdir(parents=True)
    (target / "dir" / "both.txt").write_text("old\n")
    (target / "dir" / "only-old.txt").write_text("kept\n")
    (target / "was-file").write_text("a file that becomes a folder\n")
    archive = tar_bytes([
        (info("dir", tarfile.DIRTYPE, 0o755), None),
        (info("dir/both.txt"), b"new\n"),
        (info("dir/only-new.txt"), b"added\n"),
        (info("was-file", tarfile.DIRTYPE, 0o755), None),
        (info("was-file/inner.txt"), b"inner\n"),
    ])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "m.tar").write_bytes(archive)
    plan = plan_for(artifact=dest / "m.tar", path="m.tar", fmt="tar",
                    source={"type": "volume", "mountPath": str(dest)}, target=target_of(target),
                    existing="Merge")
    assert_success(run_runner(plan, tmp_path / "job"))
    assert (target / "dir" / "both.txt").read_text() == "new\n"
    assert (target / "dir" / "only-old.txt").read_text() == "kept\n"
    assert (target / "dir" / "only-new.txt").read_text() == "added\n"
    assert (target / "was-file" / "inner.txt").read_text() == "inner\n"
    assert tree_listing(target) == ["dir", "dir/both.txt", "dir/only-new.txt", "dir/only-old.txt",
                                    "was-file", "was-file/inner.txt"]


def test_merge_conflict_rolls_back_everything(tmp_path):
    """A file in the archive where the target has a folder: Merge refuses, and the moves it
    had already made are undone."""
    import tarfile
    from runner_testlib import info, tar_bytes

    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    (target / "a" / "x.txt").write_text("old\n")
    (target / "z-folder").mkdir()
    (target / "z-folder" / "keep").write_text("keep\n")
    before = snapshot(target)
    archive = tar_bytes([
        (info("a", tarfile.DIRTYPE, 0o755), None),
        (info("a/x.txt"), b"new\n"),
        (info("a/y.txt"), b"new\n"),
        (info("z-folder"), b"a file where a folder is\n"),
    ])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "m.tar").write_bytes(archive)
    plan = plan_for(artifact=dest / "m.tar", path="m.tar", fmt="tar",
                    source={"type": "volume", "mountPath": str(dest)}, target=target_of(target),
                    existing="Merge")
    run = run_runner(plan, tmp_path / "job")
    assert run.report["reason"] == "RestoreFailed", run.output
    assert "z-folder" in run.report["message"]
    assert snapshot(target) == before


def test_volume_source_refuses_a_path_resolving_outside_the_mount(tmp_path):
    outside = tmp_path / "outside.tar"
    outside.write_bytes(b"\0" * 1024)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "escape.tar")
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=outside, path="escape.tar", fmt="tar",
                    source={"type": "volume", "mountPath": str(dest)}, target=target_of(target))
    run = run_runner(plan, tmp_path / "job")
    assert run.report["reason"] == "FetchFailed"
    assert "outside" in run.report["message"]


def test_non_root_runner_replaces_data_with_read_only_folders(sample):
    """The image runs as a non-root user: moving and removing read-only folders then needs
    care that root never needs. As root, this test drops to `nobody` with setpriv."""
    import json
    import subprocess
    import tempfile

    from runner_testlib import RUNNER

    base = tempfile.mkdtemp(prefix="daoflow-nonroot-")
    try:
        os.chmod(base, 0o755)
        dest = os.path.join(base, "dest")
        os.mkdir(dest)
        shutil.copy(sample.artifacts["tar+zstd"], os.path.join(dest, "s.tar.zst"))
        target = os.path.join(base, "target")
        os.mkdir(target)
        os.mkdir(os.path.join(target, "old-read-only"))
        with open(os.path.join(target, "old-read-only", "f"), "w") as f:
            f.write("old\n")
        os.chmod(os.path.join(target, "old-read-only"), 0o555)
        plan = plan_for(artifact=os.path.join(dest, "s.tar.zst"), path="s.tar.zst", fmt="tar+zstd",
                        source={"type": "volume", "mountPath": dest},
                        target=target_of(target), existing="Replace")
        with open(os.path.join(base, "plan.json"), "w") as f:
            json.dump(plan, f)
        prefix, command, env = [], RUNNER, None
        if os.geteuid() == 0:
            for dirpath, dirnames, filenames in os.walk(base):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                    os.lchown(name, 65534, 65534)
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            # The checkout and its venv may sit in a folder only root can enter (mktemp -d): give
            # `nobody` its own copy of what the runner imports, as the image does.
            import daoflow_operator
            import zstandard

            lib = os.path.join(base, "lib")
            for module in (daoflow_operator, zstandard):
                folder = os.path.dirname(module.__file__)
                shutil.copytree(folder, os.path.join(lib, os.path.basename(folder)),
                                ignore=shutil.ignore_patterns("__pycache__"))
            command = [os.path.realpath(sys.executable), "-m", "daoflow_operator.runner"]
            env = {**os.environ, "PYTHONPATH": lib, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(prefix + command + ["--plan", os.path.join(base, "plan.json"),
                                                  "--report", os.path.join(base, "report")],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert snapshot(target) == snapshot(sample.tree)
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(base)
