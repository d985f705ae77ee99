"""Execute, part one: unpack checked members into a staging folder on the target volume.

Why symlinks are created last: while the archive is being written out, the staging tree holds
no symlink at all, so no member can be written through one, whatever the order of members.
Symlinks are spooled to a file and created after the checksum has matched, each below real
directories only. Directory modes and times are spooled too and applied at the very end,
because a read-only directory mode would stop the members below it from being written.
Spooling to files (not lists) keeps memory flat for archives with millions of members.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator

from . import members as m
from .failures import restore_failed, unsafe
from .fetch import Progress
from .fstree import libc, makedirs
from .tarstream import TarStream

def _writeback():
    """sync_file_range(SYNC_FILE_RANGE_WRITE), or None where libc lacks it.

    Starting the disk writes of each file as soon as it is written lets the disk work while
    the rest unpacks, so the flush before the commit has little left to wait for.
    """
    import ctypes

    try:
        fn = libc().sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd: fn(fd, 0, 0, 2)


_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _os_failure(exc: OSError, member: str):
    if exc.errno == errno.ENOSPC:
        return restore_failed(f"no space left on the target volume while writing {m.show(member)}")
    return restore_failed(f"writing {m.show(member)} failed: {exc.strerror}")


def reverse_lines(path: str, block: int = 1 << 16) -> Iterator[str]:
    """The lines of a file, last first, reading it in blocks from the end."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        rest = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + rest
            lines = data.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line.decode("utf-8")
        if rest:
            yield rest.decode("utf-8")


class Unpacker:
    def __init__(self, staging: str, spool_dir: str, progress: Progress, writeback: bool = False):
        self.root = staging
        self._writeback = _writeback() if writeback else None
        self.progress = progress
        self.files = 0
        self.bytes = 0
        self._dirs_path = os.path.join(spool_dir, "dirs.jsonl")
        self._links_path = os.path.join(spool_dir, "symlinks.jsonl")
        self._dirs = open(self._dirs_path, "w", encoding="utf-8")
        self._links = open(self._links_path, "w", encoding="utf-8")
        self._known_dir = ""  # the last parent made sure of: members come grouped by folder

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _ensure_parent(self, rel: str) -> None:
        parent = os.path.dirname(rel)
        if not parent or parent == self._known_dir:
            return
        try:
            # Safe to follow paths here: the staging tree has no symlinks yet (see above).
            makedirs(self._path(parent), mode=0o755)
        except (FileExistsError, NotADirectoryError):
            raise unsafe(f"member {m.show(rel)}: a parent folder is a file in the archive") from None
        self._known_dir = parent

    def _clear(self, rel: str) -> None:
        """Make room for a member that repeats a name (tar semantics: the last one wins)."""
        path = self._path(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise unsafe(f"member {m.show(rel)}: would replace a folder of the same name")
        os.unlink(path)

    def write_file(self, member: m.Member, stream: TarStream) -> None:
        self._ensure_parent(member.path)
        path = self._path(member.path)
        try:
            try:
                fd = os.open(path, _OPEN_NEW, 0o600)
            except FileExistsError:
                self._clear(member.path)
                fd = os.open(path, _OPEN_NEW, 0o600)
            try:
                for piece in stream.data():
                    while piece:
                        written = os.write(fd, piece)
                        piece = piece[written:]
                        self.bytes += written
                os.fchmod(fd, member.mode)
                os.utime(fd, (member.mtime, member.mtime))
                if self._writeback is not None and member.size:
                    self._writeback(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_failure(exc, member.path) from None

    def write_dir(self, member: m.Member) -> None:
        if not member.path:
            return  # the target root: its mode belongs to the volume, not the archive
        self._ensure_parent(member.path)
        try:
            os.mkdir(self._path(member.path), 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(self._path(member.path)).st_mode):
                raise unsafe(f"member {m.show(member.path)}: a folder replaces a file of the same name") from None
        except OSError as exc:
            raise _os_failure(exc, member.path) from None
        self._dirs.write(json.dumps([member.path, member.mode, member.mtime]) + "\n")

    def write_hardlink(self, member: m.Member) -> None:
        source = self._path(member.linkname)
        try:
            st = os.lstat(source)
        except (FileNotFoundError, NotADirectoryError):
            raise unsafe(
                f"hard link {m.show(member.path)}: target {m.show(member.linkname)} is not an "
                "earlier file of the archive"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise unsafe(f"hard link {m.show(member.path)}: target {m.show(member.linkname)} is not a regular file")
        self._ensure_parent(member.path)
        self._clear(member.path)
        try:
            os.link(source, self._path(member.path), follow_symlinks=False)
        except OSError as exc:
            raise _os_failure(exc, member.path) from None

    def unpack(self, stream: TarStream) -> None:
        while (member := stream.next_member()) is not None:
            try:
                if member.kind == m.REGULAR:
                    self.write_file(member, stream)
                elif member.kind == m.DIRECTORY:
                    self.write_dir(member)
                elif member.kind == m.HARDLINK:
                    self.write_hardlink(member)
                elif member.kind == m.SYMLINK:
                    self._links.write(json.dumps([member.path, member.linkname, member.mtime]) + "\n")
            except OSError as exc:  # whatever the checks could not foresee: name the member
                raise _os_failure(exc, member.path) from None
            if member.path:
                self.files += 1
                self.progress.files_done = self.files
        stream.finish()
        self.close()

    def close(self) -> None:
        self._dirs.close()
        self._links.close()

    def _check_real_parents(self, rel: str) -> None:
        """Every folder above rel must be a real folder, not a symlink made before it."""
        path = self.root
        for part in rel.split("/")[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return  # makedirs below creates real folders
            if not stat.S_ISDIR(st.st_mode):
                raise unsafe(
                    f"symlink {m.show(rel)}: lies below {m.show(os.path.relpath(path, self.root))}, "
                    "which is a symlink or a file"
                )

    def make_symlinks(self) -> None:
        """After the checksum matched: create the spooled symlinks."""
        with open(self._links_path, encoding="utf-8") as f:
            for line in f:
                rel, target, mtime = json.loads(line)
                try:
                    self._make_symlink(rel, target, mtime)
                except OSError as exc:
                    raise _os_failure(exc, rel) from None

    def _make_symlink(self, rel: str, target: str, mtime: float) -> None:
        self._check_real_parents(rel)
        self._ensure_parent(rel)
        path = self._path(rel)
        if os.path.lexists(path):
            raise unsafe(
                f"symlink {m.show(rel)}: another member has the same name or was written through it"
            )
        os.symlink(target, path)
        os.utime(path, (mtime, mtime), follow_symlinks=False)

    def apply_dir_metadata(self, root: str) -> None:
        """Modes and times of the archive's folders, deepest last-written first.

        `root` is the staging folder, or the target itself after a Merge has moved files in.
        """
        try:
            for line in reverse_lines(self._dirs_path):
                rel, mode, mtime = json.loads(line)
                path = os.path.join(root, rel)
                try:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        continue
                    os.chmod(path, mode)
                    os.utime(path, (mtime, mtime))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _os_failure(exc, rel) from None
        except OSError as exc:  # the spool file itself
            raise restore_failed(
                f"reading the runner's list of folders failed: {exc.strerror}"
            ) from None
