"""Very deep trees (audit, defect 2): about 1,200 folders deep, with single-letter names, so
the paths stay under 4096 bytes. Nothing in the runner may recurse once per level: Python's
limit is 1,000 frames, and a RecursionError after a failure used to hide its reason, leave the
staging folder behind (breaking every later restore), or fail a Replace after its commit."""

from __future__ import annotations

import os
import tarfile

import pytest

from daoflow_operator.runner import commit
from daoflow_operator.runner.fstree import remove_tree
from runner_testlib import info, run_main, snapshot, tar_bytes, tree_listing, volume_plan

DEPTH = 1200


@pytest.fixture(autouse=True)
def remove_deep_trees(tmp_path):
    """pytest removes old temporary folders with shutil.rmtree, which recurses per level."""
    yield
    for entry in os.listdir(tmp_path):
        remove_tree(str(tmp_path / entry))


def chain(depth: int = DEPTH, letter: str = "a") -> list[str]:
    """The folder names of one deep chain: a, a/a, a/a/a, ..."""
    return ["/".join([letter] * n) for n in range(1, depth + 1)]


def deep_archive(depth: int = DEPTH, extra=(), letter: str = "a", content: bytes = b"bottom\n") -> bytes:
    folders = chain(depth, letter)
    members = [(info(d, tarfile.DIRTYPE, 0o755), None) for d in folders]
    members.append((info(folders[-1] + "/bottom.txt"), content))
    members.append((info(folders[depth // 2] + "/middle.txt"), b"middle\n"))
    members.append((info("top.txt"), b"top\n"))
    members.extend(extra)
    return tar_bytes(members)


def restore(tmp_path, name: str, data: bytes, target, existing=None):
    dest = tmp_path / f"dest-{name}"
    dest.mkdir()
    (dest / "a.tar").write_bytes(data)
    return run_main(volume_plan(dest / "a.tar", target, existing=existing), tmp_path / f"job-{name}")


def bottom(target, depth: int = DEPTH, letter: str = "a"):
    return target.joinpath(*([letter] * depth), "bottom.txt")


def test_a_deep_tree_restores_and_the_next_restore_replaces_it(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    run = restore(tmp_path, "first", deep_archive(), target)
    assert run.code == 0, run.output
    assert run.report["files"] == DEPTH + 3
    assert bottom(target).read_bytes() == b"bottom\n"
    assert not (target / ".daoflow-restore").exists()

    # Replace: the old deep tree is moved aside, then removed after the commit.
    run = restore(tmp_path, "second", deep_archive(letter="b", content=b"new\n"), target,
                  existing="Replace")
    assert run.code == 0, run.output
    assert "reason" not in run.report
    assert bottom(target, letter="b").read_bytes() == b"new\n"
    assert sorted(os.listdir(target)) == ["b", "top.txt"]
    assert not (target / ".daoflow-restore").exists()

    # Replace again, over the same names.
    run = restore(tmp_path, "third", deep_archive(letter="b", content=b"newer\n"), target,
                  existing="Replace")
    assert run.code == 0, run.output
    assert bottom(target, letter="b").read_bytes() == b"newer\n"
    assert not (target / ".daoflow-restore").exists()


def test_merge_sets_aside_a_file_at_the_bottom_of_a_deep_tree(tmp_path):
    """Setting aside an entry at depth 1,200 creates its parents in previous/ at once."""
    target = tmp_path / "target"
    target.mkdir()
    run = restore(tmp_path, "first", deep_archive(), target)
    assert run.code == 0, run.output
    folders = chain()
    # The archive has a folder where the target has the file bottom.txt: Merge moves it aside.
    archive = tar_bytes([(info(folders[-1] + "/bottom.txt", tarfile.DIRTYPE, 0o755), None),
                         (info(folders[-1] + "/bottom.txt/inner.txt"), b"inner\n")])
    run = restore(tmp_path, "merge", archive, target, existing="Merge")
    assert run.code == 0, run.output
    assert (bottom(target) / "inner.txt").read_bytes() == b"inner\n"
    assert (target / "top.txt").read_bytes() == b"top\n"
    assert not (target / ".daoflow-restore").exists()


@pytest.mark.parametrize("existing", [None, "Replace"])
def test_a_deep_tree_then_a_dotdot_member_is_refused_and_the_target_stays_usable(existing, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    if existing:
        (target / "old.txt").write_text("old\n")
    before = snapshot(target)
    run = restore(tmp_path, "hostile", deep_archive(extra=[(info("../x"), b"escape\n")]), target,
                  existing=existing)
    assert run.report["reason"] == "UnsafeArchive", run.output
    assert run.code == 5
    assert "'../x'" in run.report["message"]
    assert "RecursionError" not in run.output and "Traceback" not in run.output
    assert snapshot(target) == before
    assert not (target / ".daoflow-restore").exists()
    assert not (tmp_path / "x").exists()

    run = restore(tmp_path, "next", tar_bytes([(info("fine.txt"), b"fine\n")]), target,
                  existing="Replace")
    assert run.code == 0, run.output
    assert tree_listing(target) == ["fine.txt"]


def test_a_failure_after_the_commit_is_not_reported_as_a_failed_restore(tmp_path, monkeypatch):
    """Replace committed, then removing the old data failed: the data is the new data, so the
    restore succeeded. The log says what was left, and the next run finishes the clean-up."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old\n")
    real = commit.Workspace.finish

    def failing_finish(self):
        raise OSError(5, "Input/output error", os.path.join(self.previous, "old.txt"))

    monkeypatch.setattr(commit.Workspace, "finish", failing_finish)
    run = restore(tmp_path, "first", tar_bytes([(info("new.txt"), b"new\n")]), target,
                  existing="Replace")
    assert run.code == 0, run.output
    assert "reason" not in run.report and run.report["verified"] is True
    assert run.report["files"] == 1
    assert "old data" in run.stderr and "Input/output error" in run.stderr
    assert str(tmp_path) not in run.stderr  # paths are relative to the target
    assert (target / "new.txt").read_text() == "new\n"
    assert (target / ".daoflow-restore" / "previous" / "old.txt").exists()

    monkeypatch.setattr(commit.Workspace, "finish", real)
    run = restore(tmp_path, "second", tar_bytes([(info("newer.txt"), b"newer\n")]), target,
                  existing="Merge")
    assert run.code == 0, run.output
    assert "finished the clean-up" in run.stderr
    assert tree_listing(target) == ["new.txt", "newer.txt"]


# --- the tree helpers themselves ---------------------------------------------------------------


def deep_dir(root, depth: int = DEPTH):
    """A chain made with fd-relative mkdir: os.makedirs itself recurses per missing level."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
            f.write("x")
    finally:
        os.close(fd)


def test_remove_tree_never_follows_symlinks_and_opens_read_only_folders(tmp_path):
    from daoflow_operator.runner import fstree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    deep_dir(tree)
    os.symlink(outside, tree / "to-outside")
    os.symlink(outside / "keep.txt", tree / "to-file")
    (tree / "locked").mkdir()
    (tree / "locked" / "inner").mkdir()
    (tree / "locked" / "inner" / "f").write_text("x")
    os.chmod(tree / "locked" / "inner", 0o000)
    os.chmod(tree / "locked", 0o500)
    assert fstree.holds_files(str(tree))
    fds_before = len(os.listdir("/proc/self/fd"))
    fstree.remove_tree(str(tree))
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "keep\n"


def test_holds_files_and_makedirs_on_deep_trees(tmp_path):
    from daoflow_operator.runner import fstree

    empty = tmp_path / "empty"
    path = str(empty) + "/e" * DEPTH
    fstree.makedirs(path, 0o700)
    assert os.path.isdir(path)
    assert not fstree.holds_files(str(empty))
    os.symlink("nowhere", os.path.join(path, "link"))
    assert fstree.holds_files(str(empty))
    assert not fstree.holds_files(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        fstree.makedirs(str(tmp_path / "file" / "sub"))
    os.symlink(tmp_path, tmp_path / "link")
    with pytest.raises(NotADirectoryError):
        fstree.makedirs(str(tmp_path / "link"))
