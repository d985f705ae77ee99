"""The commit step: Replace and Merge swaps, failures injected during the swap, and recovery
after a crash in every state the journal can be in."""

from __future__ import annotations

import os

import pytest

from daoflow_operator.runner import commit
from daoflow_operator.runner.commit import Workspace
from daoflow_operator.runner.failures import RunnerFailure
from runner_testlib import snapshot


def make_old(target):
    target.mkdir(exist_ok=True)
    (target / "a.txt").write_text("old a\n")
    (target / "shared").mkdir()
    (target / "shared" / "old.txt").write_text("old\n")
    os.symlink("a.txt", target / "link")
    return snapshot(target)


def staged(ws: Workspace):
    ws.create()
    s = ws.staging
    os.mkdir(os.path.join(s, "shared"))
    with open(os.path.join(s, "shared", "new.txt"), "w") as f:
        f.write("new\n")
    with open(os.path.join(s, "a.txt"), "w") as f:
        f.write("new a\n")
    os.mkdir(os.path.join(s, "only-new"))
    return ws


@pytest.fixture
def ws(tmp_path):
    w = Workspace(str(tmp_path / "target"))
    w.sync = False
    return w


def test_replace_commit(ws, tmp_path):
    make_old(tmp_path / "target")
    staged(ws).commit("Replace")
    ws.finish()
    t = tmp_path / "target"
    assert sorted(os.listdir(t)) == ["a.txt", "only-new", "shared"]
    assert (t / "a.txt").read_text() == "new a\n"
    assert os.listdir(t / "shared") == ["new.txt"]


@pytest.mark.parametrize("policy", ["Replace", "Merge"])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_failure_during_the_swap_puts_everything_back(ws, tmp_path, monkeypatch, policy, fail_at):
    before = make_old(tmp_path / "target")
    staged(ws)
    real = os.rename
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(commit.os, "rename", flaky)
    with pytest.raises(OSError):
        ws.commit(policy)
    monkeypatch.setattr(commit.os, "rename", real)
    assert ws.discard()
    assert snapshot(tmp_path / "target") == before


def test_merge_keeps_files_the_archive_does_not_have(ws, tmp_path):
    make_old(tmp_path / "target")
    staged(ws).commit("Merge")
    ws.finish()
    t = tmp_path / "target"
    assert sorted(os.listdir(t)) == ["a.txt", "link", "only-new", "shared"]
    assert sorted(os.listdir(t / "shared")) == ["new.txt", "old.txt"]
    assert (t / "a.txt").read_text() == "new a\n"


def test_merge_never_writes_through_a_symlink_in_the_target(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    t = tmp_path / "target"
    t.mkdir()
    os.symlink(outside, t / "shared")  # a folder of the archive is a symlink in the target
    staged(ws).commit("Merge")
    ws.finish()
    assert os.listdir(outside) == []
    assert (t / "shared").is_dir() and not (t / "shared").is_symlink()


def test_fail_if_not_empty_rechecks_at_commit(ws, tmp_path):
    (tmp_path / "target").mkdir()
    staged(ws)
    (tmp_path / "target" / "appeared").write_text("x")
    with pytest.raises(RunnerFailure) as exc:
        ws.commit("FailIfNotEmpty")
    assert exc.value.reason == "TargetNotEmpty"


def crash_after(ws, policy, moves, monkeypatch):
    """Simulate SIGKILL: the process stops after `moves` renames, nothing else runs."""
    real = os.rename
    calls = {"n": 0}

    class Killed(BaseException):
        pass

    def dying(src, dst):
        if calls["n"] == moves:
            raise Killed()
        calls["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(commit.os, "rename", dying)
    monkeypatch.setattr(Workspace, "rollback", lambda self: None)  # a killed process rolls nothing back
    with pytest.raises(Killed):
        ws.commit(policy)
    monkeypatch.undo()


@pytest.mark.parametrize("policy", ["Replace", "Merge"])
@pytest.mark.parametrize("moves", [0, 1, 2, 3, 4])
def test_recover_after_a_crash_mid_swap(ws, tmp_path, monkeypatch, policy, moves):
    before = make_old(tmp_path / "target")
    staged(ws)
    crash_after(ws, policy, moves, monkeypatch)
    again = Workspace(str(tmp_path / "target"))
    assert again.recover() is not None
    assert snapshot(tmp_path / "target") == before
    assert not os.path.exists(again.dir)


def test_recover_after_a_crash_past_the_commit_point(ws, tmp_path):
    make_old(tmp_path / "target")
    staged(ws).commit("Replace")  # committed, but the old data was never removed
    assert os.listdir(ws.previous)
    again = Workspace(str(tmp_path / "target"))
    assert "committed" in again.recover()
    assert (tmp_path / "target" / "a.txt").read_text() == "new a\n"
    assert not os.path.exists(again.dir)


def test_read_only_folders_are_moved_and_removed(ws, tmp_path):
    """A folder without write permission can still be swapped and cleaned up (this matters
    for the non-root runner; as root it passes trivially, and it must not break)."""
    make_old(tmp_path / "target")
    os.chmod(tmp_path / "target" / "shared", 0o555)
    staged(ws)
    os.chmod(os.path.join(ws.staging, "only-new"), 0o555)
    ws.commit("Replace")
    ws.finish()
    assert oct(os.stat(tmp_path / "target" / "only-new").st_mode & 0o777) == "0o555"
    assert not os.path.exists(ws.dir)


def test_a_signal_during_the_commit_waits_for_it(ws, tmp_path, monkeypatch):
    """SIGTERM in the middle of the swap: the swap completes, the signal does not cut it in
    half, and nothing raises afterwards (the restore has happened)."""
    from daoflow_operator.runner.failures import SHIELD
    from daoflow_operator.runner.main import Signals

    make_old(tmp_path / "target")
    staged(ws)
    signals = Signals()
    SHIELD.committed = SHIELD.pending = False
    real = os.rename
    calls = {"n": 0}

    def rename_and_signal(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            signals.handler(15, None)  # what Python runs on SIGTERM
        return real(src, dst)

    monkeypatch.setattr(commit.os, "rename", rename_and_signal)
    ws.commit("Replace")
    assert SHIELD.pending and SHIELD.committed
    signals.handler(15, None)  # after the commit point: ignored
    ws.finish()
    assert (tmp_path / "target" / "a.txt").read_text() == "new a\n"
    SHIELD.committed = SHIELD.pending = False


def test_a_signal_outside_a_shield_interrupts(monkeypatch):
    from daoflow_operator.runner.failures import SHIELD
    from daoflow_operator.runner.main import Signals

    SHIELD.committed = SHIELD.pending = False
    signals = Signals()
    with pytest.raises(RunnerFailure) as exc:
        signals.handler(15, None)
    assert exc.value.reason == "Interrupted"
    signals.handler(15, None)  # the second one is ignored: the rollback must run undisturbed
