"""A forward-only tar reader over a stream of decompressed chunks.

It holds one chunk at a time and never a list of members, so memory does not grow with the
archive. Every member it returns has passed `members.check_member` and the budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from . import members as m
from .failures import corrupt, invalid_plan, unsafe

READERS = ("own", "libarchive")


class ChunkReader:
    """Exact reads over an iterator of bytes-like chunks, without joining them."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._view = memoryview(b"")
        self.offset = 0  # bytes handed out so far, for error messages

    def _fill(self) -> bool:
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._view = memoryview(chunk)
        return True

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the stream."""
        if self._fill() and len(self._view) >= n:  # the common case: one slice
            out = bytes(self._view[:n])
            self._view = self._view[n:]
            self.offset += n
            return out
        parts = bytearray()
        while len(parts) < n and self._fill():
            take = self._view[: n - len(parts)]
            parts += take
            self._view = self._view[len(take) :]
        self.offset += len(parts)
        return bytes(parts)

    def pieces(self, n: int) -> Iterator[memoryview]:
        """n bytes as views into the chunks; raises CorruptArchive if the stream ends first."""
        while n > 0:
            if not self._fill():
                raise corrupt("archive ends inside a member's data")
            take = self._view[:n]
            self._view = self._view[len(take) :]
            n -= len(take)
            self.offset += len(take)
            yield take

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def rest(self) -> Iterator[memoryview]:
        """Everything left in the stream, in pieces."""
        while self._fill():
            take, self._view = self._view, memoryview(b"")
            self.offset += len(take)
            yield take


def padded(size: int) -> int:
    return (size + m.BLOCK - 1) // m.BLOCK * m.BLOCK


class TarStream:
    """Yields checked members; the caller reads each regular file's data with `data()`."""

    def __init__(self, chunks: Iterator[bytes], budget: m.Budget, room: int = m.PATH_MAX - 1):
        self.reader = ChunkReader(chunks)
        self.budget = budget
        self.room = room  # bytes a member path may have below the runner's prefix
        self._data_left = 0  # unread data of the current member
        self._padding = 0
        self.ended = False
        self._end_offset = 0

    def data(self) -> Iterator[memoryview]:
        """The current member's data, in pieces. May be called once per member."""
        left, self._data_left = self._data_left, 0
        yield from self.reader.pieces(left)

    def _read_extension(self, header: m.Header) -> bytes:
        m.check_extension_size(header)
        data = self.reader.read(header.size)
        if len(data) != header.size:
            raise corrupt("archive ends inside an extended header")
        self.reader.skip(padded(header.size) - header.size)
        return data

    def next_member(self) -> m.Member | None:
        """The next member, or None at the end-of-archive marker."""
        if self.ended:
            return None
        # Whatever the caller did not read of the previous member is skipped here.
        self.reader.skip(self._data_left + self._padding)
        self._data_left = self._padding = 0
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self.reader.read(m.BLOCK)
            if not block:
                raise corrupt("archive ends without an end-of-archive marker")
            if m.is_zero_block(block):
                if pax or long_name is not None or long_link is not None:
                    raise corrupt("an extended header is followed by the end of the archive, "
                                  "not by the member it describes")
                # One zero block ends the archive, as GNU tar treats it. The rest of the stream
                # (the second zero block, record padding) must be zeros: see `finish`.
                self.ended = True
                self._end_offset = self.reader.offset - m.BLOCK
                return None
            header = m.parse_header(block)
            if header.typeflag in m.EXTENSION_TYPES:
                data = self._read_extension(header)
                if header.typeflag == m.PAX_LOCAL:
                    pax.update(m.parse_pax(data))
                elif header.typeflag == m.GNU_LONGNAME:
                    long_name = m.decode_name(m.cstr(data))
                elif header.typeflag == m.GNU_LONGLINK:
                    long_link = m.decode_name(m.cstr(data))
                # Global pax headers and volume labels carry nothing a restore needs.
                continue
            if long_name is not None:
                header.name = long_name
            if long_link is not None:
                header.linkname = long_link
            if pax:
                m.apply_pax(header, pax)
            # The data that follows is decided by the header's own kind, never by what the
            # member becomes: a v7 folder's declared data is skipped, not read as headers.
            size = m.data_size(header)
            m.v7_folder(header, named_by_extension=long_name is not None or "path" in pax)
            member = m.check_member(header, self.room)
            if member.path:  # "./" is the target root itself and is not counted
                self.budget.admit(header.name, size)
            self._data_left = member.size
            self._padding = padded(size) - member.size
            return member

    def finish(self) -> None:
        """After the end-of-archive marker: the rest of the stream must be zero padding.

        Anything else would be members that a restore silently drops (a second archive
        appended, or a file's data misread as the end), so it is refused.
        """
        if not self.ended:
            raise corrupt("archive ends without an end-of-archive marker")
        for piece in self.reader.rest():
            if piece.tobytes().count(0) != len(piece):
                raise unsafe(
                    f"data follows the end-of-archive marker at byte {self._end_offset} of the "
                    "tar stream; the members after it would be silently dropped"
                )
            self.budget.admit_padding(len(piece))


def open_tar(chunks: Iterator[bytes], budget: m.Budget, room: int = m.PATH_MAX - 1):
    """The tar reader that env DAOFLOW_RUNNER_TAR_READER names (for measurement, see
    docs/runner.md): `own` (this module, the default) or `libarchive`."""
    name = os.environ.get("DAOFLOW_RUNNER_TAR_READER", "own")
    if name == "libarchive":
        try:  # libarchive-c is a test and benchmark dependency, not in the image
            from .libarchive_reader import LibarchiveStream
        except ImportError as exc:
            raise invalid_plan(f"DAOFLOW_RUNNER_TAR_READER=libarchive needs libarchive-c and "
                               f"libarchive13: {exc}") from None
        return LibarchiveStream(chunks, budget, room)
    if name != "own":
        raise invalid_plan(f"DAOFLOW_RUNNER_TAR_READER must be one of {', '.join(READERS)}, not {name!r}")
    return TarStream(chunks, budget, room)
