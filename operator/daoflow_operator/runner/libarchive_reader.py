"""The tar reader of libarchive (bsdtar's), behind the interface of `tarstream.TarStream`.

Kept for measurement against our own reader (docs/runner.md, "Choosing the tar reader"); the
runner uses it when DAOFLOW_RUNNER_TAR_READER=libarchive. It reads the same decompressed chunks
as our reader, from our hashing fetch stream, so the sha256 still covers every byte of the
artifact. Only the tar format is enabled: decompression stays in its own thread, and the
bytes after the end-of-archive marker stay visible to `finish`.

Each entry is turned back into a `members.Header` and passes the same rules (`check_member`,
the budget) as our reader's. What libarchive hides cannot be checked here: it applies pax
records and long names itself, and reads a typeflag it does not know as a regular file.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Iterator

from libarchive import ffi
from libarchive.exception import ArchiveError

from . import members as m
from .failures import corrupt, unsafe

_c = ctypes.c_void_p
ffi.ffi("entry_sparse_count", [_c], ctypes.c_int)
_read_support_filter_none = ffi.get_read_filter_function("none")
_read_support_format_tar = ffi.get_read_format_function("tar")

# libarchive's file types -> the ustar typeflag the member rules know them by.
_TYPEFLAGS = {0o100000: b"0", 0o040000: b"5", 0o120000: b"2", 0o020000: b"3", 0o060000: b"4",
              0o010000: b"6"}


class LibarchiveStream:
    """Yields checked members; the caller reads each regular file's data with `data()`."""

    def __init__(self, chunks: Iterator[bytes], budget: m.Budget, room: int = m.PATH_MAX - 1):
        self.budget = budget
        self.room = room
        self.ended = False
        self._chunks = chunks
        self._failure: BaseException | None = None  # raised in the read callback
        # Chunks handed to libarchive that it may not have consumed yet: (offset, chunk).
        # libarchive keeps pointers into them, and `finish` reads what it left.
        self._handed: deque[tuple[int, object]] = deque()
        self._handed_bytes = 0
        self._data_left = 0
        self._callback = ffi.READ_CALLBACK(self._read)
        self._archive = ffi.read_new()
        self._entry = ffi.entry_new()
        self._block = ctypes.c_void_p()
        self._size = ctypes.c_size_t()
        self._offset = ctypes.c_longlong()
        try:
            _read_support_filter_none(self._archive)
            _read_support_format_tar(self._archive)
            self._call(ffi.read_open, self._archive, None, ffi.NO_OPEN_CB, self._callback,
                       ffi.NO_CLOSE_CB)
        except BaseException:
            self.close()
            raise

    # --- the source ---------------------------------------------------------------------
    def _consumed(self) -> int:
        return ffi.filter_bytes(self._archive, 0)

    def _read(self, _archive, _context, pointer) -> int:
        """libarchive's read callback: the next chunk, without copying it."""
        try:
            consumed = self._consumed()
            while self._handed and self._handed[0][0] + len(self._handed[0][1]) <= consumed:
                self._handed.popleft()
            while True:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return 0
                if chunk:
                    break
            if isinstance(chunk, bytes):
                address = ctypes.cast(ctypes.c_char_p(chunk), ctypes.c_void_p).value
            else:  # a bytearray from the fetch stage (plain tar), or a view
                try:
                    chunk = (ctypes.c_char * len(chunk)).from_buffer(chunk)
                except TypeError:  # read-only
                    chunk = ctypes.create_string_buffer(bytes(chunk), len(chunk))
                address = ctypes.addressof(chunk)
            self._handed.append((self._handed_bytes, chunk))
            self._handed_bytes += len(chunk)
            pointer[0] = address
            return len(chunk)
        except BaseException as exc:  # ctypes cannot carry it through C: keep it for later
            self._failure = exc
            return -1

    def _call(self, fn, *args) -> int:
        """One libarchive call; a failure of the source comes out as itself."""
        try:
            code = fn(*args)
        except ArchiveError as exc:
            if self._failure is not None:
                raise self._failure from None
            raise corrupt(f"tar data is damaged: {exc.msg or 'libarchive failed'}") from None
        if self._failure is not None:
            raise self._failure
        if code == ffi.ARCHIVE_WARN:  # libarchive guessed at something: refuse to guess along
            message = ffi.error_string(self._archive) or b"libarchive warns"
            raise corrupt(f"tar header is malformed: {message.decode('utf-8', 'replace')}")
        return code

    # --- the interface of TarStream --------------------------------------------------------
    def next_member(self) -> m.Member | None:
        """The next member, or None at the end-of-archive marker."""
        if self.ended:
            return None
        code = self._call(ffi.read_next_header2, self._archive, self._entry)
        if code == ffi.ARCHIVE_EOF:
            self.ended = True
            return None
        header = self._header()
        member = m.check_member(header, self.room)
        if member.path:  # "./" is the target root itself and is not counted
            self.budget.admit(header.name, member.size)
        self._data_left = member.size
        return member

    def _header(self) -> m.Header:
        entry = self._entry
        hardlink = ffi.entry_hardlink(entry)
        filetype = ffi.entry_filetype(entry)
        if hardlink is not None:
            typeflag = b"1"
        elif ffi.entry_sparse_count(entry) > 0:
            typeflag = b"S"
        else:
            typeflag = _TYPEFLAGS.get(filetype, b"?")
        link = hardlink if hardlink is not None else ffi.entry_symlink(entry)
        return m.Header(
            name=m.decode_name(ffi.entry_pathname(entry) or b""),
            mode=ffi.entry_mode(entry),
            size=ffi.entry_size(entry),
            mtime=ffi.entry_mtime(entry) + ffi.entry_mtime_nsec(entry) / 1e9,
            typeflag=typeflag,
            linkname=m.decode_name(link or b""),
        )

    def data(self) -> Iterator[memoryview]:
        """The current member's data, in pieces that point into libarchive's buffer: each is
        valid until the next piece is asked for."""
        expected, left = 0, self._data_left
        self._data_left = 0
        while left > 0:
            code = self._call(ffi.read_data_block, self._archive, ctypes.byref(self._block),
                              ctypes.byref(self._size), ctypes.byref(self._offset))
            if code == ffi.ARCHIVE_EOF:
                break
            size = self._size.value
            if self._offset.value != expected:  # a hole: only sparse members have them
                raise corrupt("a member's data is not contiguous")
            if size > left:
                raise corrupt("a member holds more data than its header declares")
            expected += size
            left -= size
            if size:
                yield memoryview((ctypes.c_char * size).from_address(self._block.value)).cast("B")
        if left:
            raise corrupt("archive ends inside a member's data")

    def finish(self) -> None:
        """After the end-of-archive marker: the rest of the stream must be zero padding, as
        with our reader (`TarStream.finish`)."""
        if not self.ended:
            raise corrupt("archive ends without an end-of-archive marker")
        end = self._consumed()
        try:
            for start, chunk in self._handed:  # what libarchive read ahead but did not use
                piece = memoryview(chunk)[max(end - start, 0):]
                self._check_padding(piece, end)
            for chunk in self._chunks:
                self._check_padding(memoryview(chunk), end)
        finally:
            self.close()

    def _check_padding(self, piece: memoryview, end: int) -> None:
        if piece.nbytes and piece.tobytes().count(0) != piece.nbytes:
            raise unsafe(
                f"data follows the end-of-archive marker at byte {end} of the tar stream; the "
                "members after it would be silently dropped"
            )
        self.budget.admit_padding(piece.nbytes)

    def close(self) -> None:
        if getattr(self, "_archive", None):
            ffi.read_free(self._archive)
            ffi.entry_free(self._entry)
            self._archive = None
            self._handed.clear()

    def __del__(self) -> None:
        self.close()
