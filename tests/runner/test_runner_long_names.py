"""Names the target filesystem cannot hold (audit, defect 3), and OS errors while unpacking.

A path component over 255 bytes (NAME_MAX), or a path that passes the 4096-byte member check
but is too long once the runner's own prefix (`<target>/.daoflow-restore/previous/`) is
added, is refused up front with UnsafeArchive and a message naming the member. No OS error
while unpacking ever reaches the report as a traceback or an absolute staging path.
"""

from __future__ import annotations

import errno
import os
import tarfile

import pytest

from daoflow_operator.runner import unpack
from runner_testlib import info, run_main, snapshot, tar_bytes, tree_listing, volume_plan

PATH_MAX = 4096
NAME_MAX = 255


def room(target) -> int:
    """The longest member path that fits below the runner's longest prefix in `target`."""
    prefix = os.path.join(str(target), ".daoflow-restore", "previous", "")
    return PATH_MAX - 1 - len(prefix.encode())


def long_path(total: int, component: int = 200) -> str:
    """A relative path of exactly `total` bytes, made of components of at most `component`."""
    parts = []
    left = total
    while left > 0:
        n = min(component, left if not parts else left - 1)
        if parts:
            left -= 1  # the slash
        parts.append("p" * n if len(parts) % 2 else "q" * n)
        left -= n
    path = "/".join(parts)
    assert len(path) == total, (len(path), total)
    return path


def restore(tmp_path, name, members, target, existing=None):
    dest = tmp_path / f"dest-{name}"
    dest.mkdir()
    (dest / "a.tar").write_bytes(tar_bytes(members, fmt=tarfile.PAX_FORMAT))
    return run_main(volume_plan(dest / "a.tar", target, existing=existing), tmp_path / f"job-{name}")


def assert_clean_refusal(run, target, before, needle: str):
    assert run.report["reason"] == "UnsafeArchive", run.output
    assert run.code == 5
    assert needle in run.report["message"], run.report["message"]
    assert "Traceback" not in run.output
    assert ".daoflow-restore" not in run.report["message"]
    assert str(target) not in run.output  # no absolute path, staging or other
    assert snapshot(target) == before
    assert not (target / ".daoflow-restore").exists()


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "target"
    t.mkdir()
    (t / "old.txt").write_text("old\n")
    return t


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_a_component_over_255_bytes_is_refused_by_name(kind, tmp_path, target):
    before = snapshot(target)
    name = "dir/" + "n" * (NAME_MAX + 1) + "/x"
    member = {"file": (info(name), b"data"),
              "dir": (info(name, tarfile.DIRTYPE, 0o755), None),
              "symlink": (info(name, tarfile.SYMTYPE, 0o777, "target"), None)}[kind]
    run = restore(tmp_path, kind, [(info("first.txt"), b"1"), member], target, existing="Replace")
    assert_clean_refusal(run, target, before, "'dir/nnnn")
    assert "255 bytes" in run.report["message"]


def test_a_component_of_exactly_255_bytes_restores(tmp_path, target):
    name = "dir/" + "é" * 127 + "n"  # 255 bytes in UTF-8
    assert len(name.split("/")[1].encode()) == NAME_MAX
    run = restore(tmp_path, "ok", [(info(name), b"data")], target, existing="Replace")
    assert run.code == 0, run.output
    assert (target / name).read_bytes() == b"data"


def test_a_path_too_long_once_the_staging_prefix_is_added_is_refused(tmp_path, target):
    """Under 4096 bytes, so the member check of old let it through; with the target's path and
    `.daoflow-restore/previous/` in front it no longer fits in PATH_MAX."""
    before = snapshot(target)
    name = long_path(room(target) + 1)
    assert len(name.encode()) < PATH_MAX
    run = restore(tmp_path, "long", [(info(name), b"data")], target, existing="Replace")
    assert_clean_refusal(run, target, before, "'qqqq")
    assert "bytes" in run.report["message"]


@pytest.mark.parametrize("existing", ["Replace", "Merge"])
def test_the_longest_path_that_fits_restores_and_can_be_replaced(existing, tmp_path, target):
    name = long_path(room(target))
    run = restore(tmp_path, "first", [(info(name), b"first")], target, existing="Replace")
    assert run.code == 0, run.output
    assert (target / name).read_bytes() == b"first"
    # Again over it: the old file moves aside into previous/, the longest prefix.
    run = restore(tmp_path, "second", [(info(name), b"second")], target, existing=existing)
    assert run.code == 0, run.output
    assert (target / name).read_bytes() == b"second"
    assert not (target / ".daoflow-restore").exists()


def test_a_hard_link_to_a_too_long_name_is_refused(tmp_path, target):
    before = snapshot(target)
    run = restore(tmp_path, "hard", [
        (info("a.txt"), b"a"),
        (info("h", tarfile.LNKTYPE, 0o644, "x/" + "n" * 300), None)], target, existing="Replace")
    assert_clean_refusal(run, target, before, "'h'")


def test_a_symlink_target_over_4095_bytes_is_refused(tmp_path, target):
    before = snapshot(target)
    run = restore(tmp_path, "sym", [
        (info("s", tarfile.SYMTYPE, 0o777, "a/" * 2100), None)], target, existing="Replace")
    assert_clean_refusal(run, target, before, "'s'")


@pytest.mark.parametrize("where", ["parent", "file", "dir", "link"])
def test_any_os_error_while_unpacking_names_the_member(where, tmp_path, target, monkeypatch):
    """An OS error the checks cannot foresee (here EIO, injected): a clean report that names
    the member by its path in the archive, never a traceback or a path in staging."""
    before = snapshot(target)
    members = [(info("d", tarfile.DIRTYPE, 0o755), None), (info("d/e/f.txt"), b"f"),
               (info("d/g", tarfile.DIRTYPE, 0o755), None),
               (info("d/h", tarfile.LNKTYPE, 0o644, "d/e/f.txt"), None)]
    victim = {"parent": "e", "file": "f.txt", "dir": "g", "link": "h"}[where]
    member = {"parent": "d/e/f.txt", "file": "d/e/f.txt", "dir": "d/g", "link": "d/h"}[where]
    real = {"mkdir": os.mkdir, "open": os.open, "link": os.link}

    def failing(name):
        def call(*args, **kwargs):
            for path in args[:2]:
                if isinstance(path, str) and os.path.basename(path) == victim:
                    raise OSError(errno.EIO, "Input/output error", path)
            return real[name](*args, **kwargs)
        return call

    monkeypatch.setattr(unpack.os, "mkdir", failing("mkdir"))
    monkeypatch.setattr(unpack.os, "open", failing("open"))
    monkeypatch.setattr(unpack.os, "link", failing("link"))
    run = restore(tmp_path, where, members, target, existing="Replace")
    monkeypatch.undo()
    assert run.report["reason"] == "RestoreFailed", run.output
    assert f"'{member}'" in run.report["message"], run.report["message"]
    assert "Input/output error" in run.report["message"]
    assert "Traceback" not in run.output
    assert str(target) not in run.output
    assert snapshot(target) == before
    assert tree_listing(target) == ["old.txt"]


def test_normalise_checks_components_and_the_room_left():
    from daoflow_operator.runner import members as m
    from daoflow_operator.runner.failures import RunnerFailure

    assert m.normalise("a/" + "b" * 255, room=257) == ["a", "b" * 255]
    for name, room_left in (("a/" + "b" * 256, 4095), ("a/bc", 3), ("é" * 128, 4095)):
        with pytest.raises(RunnerFailure) as exc:
            m.normalise(name, room=room_left)
        assert exc.value.reason == "UnsafeArchive"
    with pytest.raises(RunnerFailure):
        m.check_symlink_target(["s"], "x" * 4096, "s")
