"""Execute, part two: make the verified staging tree visible in the target, or undo everything.

Everything the runner keeps on the target volume lives under one reserved folder:

    <target>/.daoflow-restore/
        staging/        the unpacked archive, invisible until the commit
        previous/       old entries moved aside by Replace (and by Merge for files it overwrites)
        journal.jsonl   one line per move, written before the move
        state           "committed" once every move is done
        dirs.jsonl, symlinks.jsonl   the unpacker's spools

Moves are renames on one filesystem, so each is atomic. Undo reads the journal and checks the
filesystem for what really happened, so it works after an exception, after SIGTERM, and at the
next start after a crash (`recover`): a restore is either fully visible or not at all.
"""

from __future__ import annotations

import json
import os
import stat

from . import members as m
from .fstree import holds_files, libc, makedirs, remove_tree
from .failures import SHIELD, RunnerFailure, restore_failed, shielded

WORKDIR = m.RESERVED_TOP_LEVEL[0]
# Left alone by every policy: mkfs puts lost+found at the root of ext volumes.
IGNORED = (WORKDIR, "lost+found")


def visible_entries(target: str) -> list[str]:
    """Names at the top of the target that count as data."""
    names = []
    for name in sorted(os.listdir(target)):
        if name == WORKDIR:
            continue
        if name == "lost+found":
            path = os.path.join(target, name)
            if os.path.isdir(path) and not os.path.islink(path) and not _listdir_quiet(path):
                continue
        names.append(name)
    return names


def _listdir_quiet(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return ["?"]  # unreadable: count it as data


def not_empty_message(names: list[str]) -> str:
    first = m.show(names[0], 60)
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return (f"the target is not empty (it holds {first}{more}); existingData must be Replace or "
            "Merge to restore over data")


def os_error_text(exc: OSError, root: str) -> str:
    """An OSError for the report or the log: its description, and the path it names made
    relative to `root` (the target) and escaped. Never an absolute path."""
    text = exc.strerror or type(exc).__name__
    name = exc.filename
    if isinstance(name, (str, bytes)):
        name = os.fsdecode(name)
        if os.path.isabs(name):
            rel = os.path.relpath(name, root)
            name = os.path.basename(name) if rel == ".." or rel.startswith("../") else rel
        text += f" ({m.show(name)})"
    return text


def _syncfs(path: str) -> None:
    """Flush the target volume: the new data must be on disk before the old data goes."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _rename(src: str, dst: str) -> None:
    """rename(2), also for a folder without write permission.

    Moving a folder to another parent rewrites its '..' entry, which needs write permission on
    the folder itself; a non-root runner lends itself that permission for the move only.
    """
    try:
        os.rename(src, dst)
    except PermissionError:
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IWUSR:
            raise
        os.chmod(src, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
        try:
            os.rename(src, dst)
        except OSError:
            os.chmod(src, stat.S_IMODE(st.st_mode))
            raise
        os.chmod(dst, stat.S_IMODE(st.st_mode))


class Workspace:
    def __init__(self, target: str):
        self.target = target
        self.dir = os.path.join(target, WORKDIR)
        self.staging = os.path.join(self.dir, "staging")
        self.previous = os.path.join(self.dir, "previous")
        self.journal = os.path.join(self.dir, "journal.jsonl")
        self.state = os.path.join(self.dir, "state")
        self.sync = True

    @property
    def path_room(self) -> int:
        """The longest member path that fits below staging/ and previous/ (the longer one)."""
        prefix = max(len(os.fsencode(self.staging)), len(os.fsencode(self.previous))) + 1
        return m.PATH_MAX - 1 - prefix

    # --- set up and tear down ---------------------------------------------------------
    def create(self) -> None:
        os.mkdir(self.dir, 0o700)
        os.mkdir(self.staging, 0o700)
        os.mkdir(self.previous, 0o700)

    def remove(self) -> None:
        remove_tree(self.dir)

    def discard(self) -> bool:
        with shielded():
            return self._discard()

    def _discard(self) -> bool:
        """After a failure: remove the work folder, unless old data is still set aside in it.

        Returns False when it kept `previous/` because a rollback could not put all back.
        """
        if self._read_state() != "committed" and holds_files(self.previous):
            remove_tree(self.staging)
            return False
        self.remove()
        return True

    def recover(self) -> str | None:
        """At start: finish or undo what an interrupted earlier run left. Returns what it did."""
        with shielded(raise_after=True):
            return self._recover()

    def _recover(self) -> str | None:
        if not os.path.lexists(self.dir):
            return None
        if self._read_state() == "committed":
            self.remove()
            return "finished the clean-up of an earlier restore that had committed"
        if os.path.exists(self.journal):
            self.rollback()
            if not self.discard():
                raise restore_failed(
                    f"an earlier interrupted restore could not be rolled back fully; its old data "
                    f"is kept in {WORKDIR}/previous"
                )
            return "rolled back an earlier restore that was interrupted"
        self.remove()
        return "removed the staging folder of an earlier restore that was interrupted"

    def _read_state(self) -> str:
        try:
            with open(self.state, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def _write_state(self, value: str) -> None:
        tmp = self.state + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.state)
        self._fsync_dir(self.dir)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the moves --------------------------------------------------------------------
    def _log(self, journal, op: str, rel: str) -> None:
        journal.write(json.dumps({"op": op, "path": rel}) + "\n")
        journal.flush()

    def _aside(self, journal, rel: str) -> None:
        self._log(journal, "aside", rel)
        dst = os.path.join(self.previous, rel)
        makedirs(os.path.dirname(dst), mode=0o700)
        _rename(os.path.join(self.target, rel), dst)

    def _move_in(self, journal, rel: str) -> None:
        self._log(journal, "in", rel)
        _rename(os.path.join(self.staging, rel), os.path.join(self.target, rel))

    def commit(self, policy: str) -> None:
        """Move the staging tree into the target under the policy; undo all on any failure.

        Shielded from SIGTERM: the moves are quick renames, and a half-done swap is the one
        state that must never be left behind.
        """
        if self.sync:
            _syncfs(self.dir)
        with shielded():
            self._commit(policy)

    def _commit(self, policy: str) -> None:
        try:
            with open(self.journal, "w", encoding="utf-8") as journal:
                if policy == "Merge":
                    self._merge(journal)
                else:
                    if policy == "Replace":
                        for name in visible_entries(self.target):
                            self._aside(journal, name)
                    elif visible_entries(self.target):  # FailIfNotEmpty: data appeared meanwhile
                        raise RunnerFailure("TargetNotEmpty", not_empty_message(visible_entries(self.target)))
                    for name in sorted(os.listdir(self.staging)):
                        self._move_in(journal, name)
            if self.sync:
                _syncfs(self.dir)
            self._write_state("committed")
            SHIELD.committed = True
        except BaseException:
            self.rollback()
            raise

    def _merge(self, journal) -> None:
        """Overwrite what the archive holds, keep the rest; never merge through a symlink."""
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            # Entries are moved out of the folder being listed; Linux readdir tolerates
            # removal of entries it has already returned.
            with os.scandir(os.path.join(self.staging, rel_dir)) as entries:
                for entry in entries:
                    rel = os.path.join(rel_dir, entry.name)
                    try:
                        existing = os.lstat(os.path.join(self.target, rel)).st_mode
                    except FileNotFoundError:
                        self._move_in(journal, rel)
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if stat.S_ISDIR(existing):
                            stack.append(rel)
                            continue
                        self._aside(journal, rel)  # a file or symlink gives way to the folder
                    elif stat.S_ISDIR(existing):
                        raise restore_failed(
                            f"Merge cannot replace the folder {m.show(rel)} in the target with a "
                            "file from the archive"
                        )
                    else:
                        self._aside(journal, rel)
                    self._move_in(journal, rel)

    def _journal_ops(self):
        try:
            with open(self.journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line torn by a crash: its move had not started
                    yield entry["op"], entry["path"]
        except FileNotFoundError:
            return

    def rollback(self) -> None:
        """Undo the moves in the journal, judging each by what the filesystem shows.

        Moves in are undone first (back into staging), then the old entries come back, so an
        old and a new entry of the same name never collide.
        """
        with shielded():
            self._rollback()

    def _rollback(self) -> None:
        for op, rel in self._journal_ops():
            if op != "in":
                continue
            src = os.path.join(self.staging, rel)
            dst = os.path.join(self.target, rel)
            if not os.path.lexists(src) and os.path.lexists(dst):
                makedirs(os.path.dirname(src), mode=0o700)
                _rename(dst, src)
        for op, rel in self._journal_ops():
            if op != "aside":
                continue
            old = os.path.join(self.previous, rel)
            dst = os.path.join(self.target, rel)
            if os.path.lexists(old):
                if os.path.lexists(dst):  # cannot happen after the first pass; never lose `old`
                    continue
                _rename(old, dst)
        if os.path.exists(self.journal):
            os.unlink(self.journal)

    def finish(self) -> None:
        """After the commit point: the old data can go now."""
        with shielded():
            self.remove()
