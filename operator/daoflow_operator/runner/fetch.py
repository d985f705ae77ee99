"""Fetch: read the artifact once, from S3 or a mounted volume, hashing every byte on the way.

The read happens in its own thread and hands chunks to the unpacker through a small bounded
queue, so downloading and hashing overlap with decompressing and writing (two cores), while
memory stays at a few chunks whatever the artifact's size.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .failures import RunnerFailure, fetch_failed
from .plan import S3Source, VolumeSource
from .s3 import CHUNK, S3Object, read_credentials

QUEUE_DEPTH = 8  # chunks in flight between the fetch thread and the unpacker


@dataclass
class Progress:
    """Counters shared with the progress ticker. Plain ints: each has a single writer."""

    bytes_total: int = 0
    bytes_done: int = 0
    files_done: int = 0


def volume_artifact_path(source: VolumeSource, artifact_path: str) -> str:
    """Pure: where the artifact sits below the destination mount (before resolving links)."""
    return os.path.join(source.mount_path, source.sub_path, artifact_path)


def open_volume_artifact(source: VolumeSource, artifact_path: str) -> tuple[Iterator[bytes], int]:
    """Open the artifact on the destination volume; refuse a path that resolves outside it."""
    path = volume_artifact_path(source, artifact_path)
    root = os.path.realpath(source.mount_path)
    resolved = os.path.realpath(path)
    if os.path.commonpath([root, resolved]) != root:
        raise fetch_failed(f"artifact path {artifact_path!r} resolves outside the destination mount")
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise fetch_failed(f"artifact {artifact_path!r} does not exist on the destination volume") from None
    except OSError as exc:
        raise fetch_failed(f"cannot open artifact {artifact_path!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise fetch_failed(f"artifact {artifact_path!r} is not a regular file")
    try:  # the file is read once, front to back
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return _file_chunks(fd), st.st_size


def _file_chunks(fd: int) -> Iterator[bytes]:
    try:
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return
            yield chunk
    except OSError as exc:
        raise fetch_failed(f"reading the artifact failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def open_s3_artifact(source: S3Source, key: str) -> S3Object:
    creds = read_credentials(source.credentials_dir) if source.credentials_dir else None
    return S3Object(
        endpoint=source.endpoint, bucket=source.bucket, key=key, region=source.region,
        force_path_style=source.force_path_style, credentials=creds,
    )


_END = object()


class Fetch(threading.Thread):
    """Reads raw chunks, counts and hashes them, and queues them for the consumer.

    The consumer reads with `read(n)` or by iterating, then calls `finish()`, which reads
    whatever is left (the trailing bytes count for the checksum too) and returns the digest.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        *,
        size_bytes: int,
        progress: Progress,
        declared_size: Callable[[], int | None] = lambda: None,
    ):
        super().__init__(name="fetch", daemon=True)
        self._chunks = chunks
        self._size = size_bytes
        self._declared = declared_size
        self._progress = progress
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_DEPTH)
        self._halt = threading.Event()
        self._view = memoryview(b"")
        self._done = False
        self.sha256 = hashlib.sha256()
        self.count = 0

    # --- the fetch thread -------------------------------------------------------------
    def _put(self, item: object) -> None:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            first = True
            for chunk in self._chunks:
                if self._halt.is_set():
                    return
                if first:
                    first = False
                    declared = self._declared()
                    if declared is not None and declared != self._size:
                        raise RunnerFailure(
                            "ChecksumMismatch",
                            f"the stored artifact is {declared} bytes, the pinned size is {self._size}",
                        )
                self.count += len(chunk)
                if self.count > self._size:
                    raise RunnerFailure(
                        "ChecksumMismatch",
                        f"the artifact is larger than its pinned size of {self._size} bytes",
                    )
                self.sha256.update(chunk)
                self._progress.bytes_done = self.count
                self._put(chunk)
            self._put(_END)
        except RunnerFailure as failure:
            self._put(failure)
        except Exception as exc:  # anything else is a fetch failure, reported by the consumer
            self._put(fetch_failed(f"reading the artifact failed: {type(exc).__name__}"))
        finally:
            close = getattr(self._chunks, "close", None)
            if close:
                close()

    # --- the consumer -------------------------------------------------------------------
    def _next(self) -> bytes | None:
        if self._done:
            return None
        item = self._queue.get()
        if item is _END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[bytes]:
        if self._view:
            rest, self._view = self._view, memoryview(b"")
            yield rest  # type: ignore[misc]
        while (chunk := self._next()) is not None:
            yield chunk

    def read(self, n: int = -1) -> bytes:
        """File-like read for decompressors that pull (zstandard's stream_reader)."""
        if not self._view:
            chunk = self._next()
            if chunk is None:
                return b""
            if n < 0 or len(chunk) <= n:
                return chunk
            self._view = memoryview(chunk)
        take = self._view if n < 0 else self._view[:n]
        self._view = self._view[len(take):]
        return bytes(take)

    def finish(self) -> tuple[str, int]:
        """Read to the end of the artifact; return (sha256 hex, byte count)."""
        self._view = memoryview(b"")
        while self._next() is not None:
            pass
        self.join()
        return self.sha256.hexdigest(), self.count

    def stop(self) -> None:
        """Abandon the read (a failure elsewhere); safe to call more than once."""
        self._halt.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.join(timeout=5)
