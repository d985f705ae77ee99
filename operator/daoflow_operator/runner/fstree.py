"""Folder trees on disk, handled without recursion and without following symlinks.

A tree may be as deep as its paths allow (2,000 levels within 4096 bytes), far deeper than
Python's recursion limit, so nothing here recurses per level: `os.walk`, `shutil.rmtree` and
`os.makedirs` all do in Python 3.11.

Trees that may hold symlinks (old data set aside, a staging folder after its links were made)
are walked through file descriptors: each folder is opened by name relative to its parent
with O_NOFOLLOW, so a symlink is never followed, even one that appears while the walk runs.
Only the folder being visited is held open, so a deep tree cannot run out of descriptors; the
walk climbs back through '..' and checks that it arrives in the folder it came from.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A folder the runner removes must let it list and unlink: read, write and search.
OWNER_ALL = stat.S_IRWXU


def libc() -> ctypes.CDLL:
    """The C library, for the calls that `os` lacks (syncfs, sync_file_range). dlopen(NULL)
    finds it among the libraries the process has loaded already; ctypes.util.find_library
    would run ldconfig in a subprocess to look for it, at every start."""
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syncfs  # noqa: B018 - raises AttributeError where the symbol is not global
        return lib
    except (OSError, AttributeError):
        return ctypes.CDLL("libc.so.6", use_errno=True)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _chmod_entry(parent_fd: int, name: str, mode: int) -> None:
    """chmod a folder by name below parent_fd, never through a symlink."""
    try:
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
    except (ValueError, NotImplementedError):
        # Older C libraries cannot chmod without following; check the kind first.
        if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name) from None
        os.chmod(name, mode, dir_fd=parent_fd)


def open_dir(parent_fd: int, name: str, *, writable: bool = False) -> int:
    """Open the folder `name` below parent_fd without following a symlink.

    With `writable`, a folder whose mode shuts the owner out (read-only trees restored from an
    archive) is opened up to u+rwx first, as removing its entries needs.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        if not writable:
            raise
        _chmod_entry(parent_fd, name, OWNER_ALL)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    if writable:
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & OWNER_ALL != OWNER_ALL:
                os.fchmod(fd, mode | OWNER_ALL)
        except BaseException:
            os.close(fd)
            raise
    return fd


class _Walk:
    """The folder being visited (one descriptor), and the way back to the top.

    Going down opens a child by name; going up opens '..' and checks its identity against the
    folder recorded on the way down, so a tree moved during the walk stops it with an error
    instead of sending it elsewhere.
    """

    def __init__(self, top_fd: int, name: str, opener: Callable[[int, str], int]):
        self.top_fd = top_fd
        self.opener = opener
        self.fd = opener(top_fd, name)
        self.frames: list[tuple[str, tuple[int, int]]] = [(name, _ident(self.fd))]

    def down(self, name: str) -> None:
        child = self.opener(self.fd, name)
        os.close(self.fd)
        self.fd = child
        self.frames.append((name, _ident(child)))

    def up(self) -> tuple[int, str]:
        """Leave the current folder: returns (its parent's descriptor, its name)."""
        name, _ = self.frames.pop()
        if self.frames:
            parent = os.open("..", DIR_FLAGS, dir_fd=self.fd)
            if _ident(parent) != self.frames[-1][1]:
                os.close(parent)
                raise OSError(errno.ESTALE, "a folder was moved while the runner walked its tree", name)
        else:
            parent = self.top_fd
        os.close(self.fd)
        self.fd = parent
        return parent, name

    def close(self) -> None:
        if self.fd != self.top_fd:
            os.close(self.fd)
        self.fd = self.top_fd


def _split(path: str) -> tuple[str, str]:
    parent, name = os.path.split(os.path.normpath(path))
    return parent or ".", name


def remove_tree(path: str) -> None:
    """Remove a file, a symlink or a whole folder tree, also when read-only folders sit in it.

    No recursion, no symlink followed, at most three descriptors open whatever the depth.
    """
    parent, name = _split(path)
    top_fd = os.open(parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        remove_entry(top_fd, name)
    finally:
        os.close(top_fd)


def _unlink_files(fd: int) -> list[str]:
    """Unlink every non-folder in the folder fd; return the names of its subfolders."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return folders


def remove_entry(parent_fd: int, name: str) -> None:
    """remove_tree for the entry `name` of the folder parent_fd."""
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    walk = _Walk(parent_fd, name, lambda fd, n: open_dir(fd, n, writable=True))
    try:
        pending = [_unlink_files(walk.fd)]
        while pending:
            if pending[-1]:
                sub = pending[-1].pop()
                try:
                    walk.down(sub)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    os.unlink(sub, dir_fd=walk.fd)  # no longer a folder: remove it as it is
                    continue
                pending.append(_unlink_files(walk.fd))
                continue
            pending.pop()
            up_fd, done = walk.up()
            os.rmdir(done, dir_fd=up_fd)
    finally:
        walk.close()


def holds_files(path: str) -> bool:
    """Whether a folder tree holds anything but empty folders (symlinks count, unread-
    able folders count). A path that is not a folder holds nothing."""
    parent, name = _split(path)
    try:
        top_fd = os.open(parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        try:
            walk = _Walk(top_fd, name, lambda fd, n: os.open(n, DIR_FLAGS, dir_fd=fd))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False  # a symlink, not a folder
            return True  # cannot look inside: count it as data
        try:
            pending = [_subfolders_or_none(walk.fd)]
            while pending:
                if pending[-1] is None:
                    return True
                if pending[-1]:
                    sub = pending[-1].pop()
                    try:
                        walk.down(sub)
                    except OSError:
                        return True
                    pending.append(_subfolders_or_none(walk.fd))
                    continue
                pending.pop()
                if pending:
                    walk.up()
            return False
        finally:
            walk.close()
    finally:
        os.close(top_fd)


def _subfolders_or_none(fd: int) -> list[str] | None:
    """The subfolders of fd, or None as soon as it holds anything else."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                return None
            folders.append(entry.name)
    return folders


def makedirs(path: str, mode: int = 0o755) -> None:
    """os.makedirs(path, exist_ok=True) without recursion, for trees the runner owns.

    It climbs from `path` to the deepest folder that exists, then creates the missing ones
    downwards. An existing entry on the way that is not a real folder (a file or a symlink)
    raises NotADirectoryError. Meant for staging/ and previous/, which hold no symlink above
    the folders it creates (see unpack.py), so resolving the path is safe there.
    """
    missing = []
    current = path
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current or not parent:
                break
            current = parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current)
        break
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder) from None
