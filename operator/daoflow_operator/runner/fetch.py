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

QUEUE_DEPTH = 4  # chunks in flight between two steps of the pipeline
CHUNK = 1 << 20


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


def open_s3_artifact(source: S3Source, key: str):
    from .s3 import S3Object, read_credentials  # botocore only when needed

    # No credentials folder: botocore's default chain, from the pod's environment.
    creds = read_credentials(source.credentials_dir) if source.credentials_dir else None
    return S3Object(
        endpoint=source.endpoint, bucket=source.bucket, key=key, region=source.region,
        force_path_style=source.force_path_style, credentials=creds, allowlist=source.endpoint_allowlist,
        ca_bundle=source.ca_bundle_file,
    )


_END = object()


class Stage(threading.Thread):
    """One step of the pipeline in its own thread, handing its chunks on through a small
    bounded queue. The consumer iterates it, or calls read(n) like a file."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_DEPTH)
        self._halt = threading.Event()
        self._view = memoryview(b"")
        self._done = False

    def produce(self) -> Iterator[bytes]:
        raise NotImplementedError

    def _put(self, item: object) -> None:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            for chunk in self.produce():
                if self._halt.is_set():
                    return
                self._put(chunk)
            self._put(_END)
        except RunnerFailure as failure:
            self._put(failure)
        except Exception as exc:  # reported by the consumer, as a failure of this step
            self._put(self.unexpected(exc))

    def unexpected(self, exc: Exception) -> RunnerFailure:
        return RunnerFailure("RestoreFailed", f"{self.name} failed: {type(exc).__name__}")

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

    def stop(self) -> None:
        """Abandon this step (a failure elsewhere, or its output is no longer needed).

        It does not wait for the thread: the thread notices at its next chunk and ends; no
        consumer reads from it any more.
        """
        self._halt.set()
        while True:  # unblock the producer if it waits on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break


class Fetch(Stage):
    """Reads raw chunks, counts and hashes every one of them, and queues them on.

    `finish()` switches the thread to hashing only: it reads the rest of the artifact (the
    trailing bytes count for the checksum too) without queueing it, and returns the digest.
    Doing that in the fetch thread, not by draining the queue, leaves no race with a
    decompression thread that may still be reading the queue.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        *,
        size_bytes: int,
        progress: Progress,
        declared_size: Callable[[], int | None] = lambda: None,
    ):
        super().__init__(name="fetch")
        self._chunks = chunks
        self._size = size_bytes
        self._declared = declared_size
        self._progress = progress
        self._discard = threading.Event()
        self.error: RunnerFailure | None = None
        self.sha256 = hashlib.sha256()
        self.count = 0

    def _put(self, item: object) -> None:
        while not self._halt.is_set() and not self._discard.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def produce(self) -> Iterator[bytes]:
        first = True
        for chunk in self._chunks:
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
            if not self._discard.is_set():
                yield chunk

    def run(self) -> None:
        try:
            try:
                for chunk in self.produce():
                    if self._halt.is_set():
                        return
                    self._put(chunk)
            except RunnerFailure as failure:
                self.error = failure
            except Exception as exc:
                self.error = fetch_failed(f"reading the artifact failed: {type(exc).__name__}")
            self._put(self.error or _END)
        finally:
            close = getattr(self._chunks, "close", None)
            if close:
                close()
            if self._discard.is_set():  # wake a consumer that may still wait
                try:
                    self._queue.put_nowait(_END)
                except queue.Full:
                    pass

    def finish(self) -> tuple[str, int]:
        """Read to the end of the artifact; return (sha256 hex, byte count)."""
        self._discard.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.join()
        if self.error is not None:
            raise self.error
        return self.sha256.hexdigest(), self.count


class Decompress(Stage):
    """Decompression in its own thread: zlib and zstd release the GIL while they work, so it
    runs beside hashing (fetch thread) and writing (main thread) on separate cores."""

    def __init__(self, decompressor: Callable[[object], Iterator[bytes]], raw: Fetch):
        super().__init__(name="decompress")
        self._decompressor = decompressor
        self._raw = raw

    def produce(self) -> Iterator[bytes]:
        return self._decompressor(self._raw)
