"""Decompression with bounded output: a small input never turns into a huge buffer.

Each function takes the fetch stream and yields decompressed chunks of at most OUT_CHUNK bytes,
so a decompression bomb costs time, not memory, and the budget in members.py stops it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import zstandard

from .failures import corrupt

OUT_CHUNK = 1 << 20
# zstd's default window limit (128 MiB) also accepts artifacts made with `zstd --long`;
# ordinary levels use windows of 8 MiB or less, and the decoder allocates what the frame asks.
ZSTD_MAX_WINDOW = 1 << 27


class RawStream(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...

    def read(self, n: int = -1) -> bytes: ...


def plain(raw: RawStream) -> Iterator[bytes]:
    yield from raw


def gzip(raw: RawStream) -> Iterator[bytes]:
    """gzip, including several concatenated members (as pigz or `cat a.gz b.gz` make)."""
    d = zlib.decompressobj(wbits=31)
    try:
        for data in raw:
            while data:
                out = d.decompress(data, OUT_CHUNK)
                if out:
                    yield out
                if d.eof:
                    data = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                else:
                    data = d.unconsumed_tail
        tail = d.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise corrupt(f"gzip data is damaged: {exc}") from None


def zstd(raw: RawStream) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    reader = dctx.stream_reader(raw, read_size=OUT_CHUNK, read_across_frames=True, closefd=False)
    try:
        while True:
            out = reader.read(OUT_CHUNK)
            if not out:
                return
            yield out
    except zstandard.ZstdError as exc:
        raise corrupt(f"zstd data is damaged: {exc}") from None


DECOMPRESSORS = {"tar": plain, "tar+gzip": gzip, "tar+zstd": zstd}
