"""What tests know of an artifact without the runner: its own counts, read with Python's tarfile."""

from __future__ import annotations

import tarfile
from pathlib import Path

import zstandard


def archive_counts(path: Path, fmt: str) -> tuple[int, int]:
    """(files, uncompressedBytes) as docs/runner.md defines them, computed with Python's tarfile:
    every member but the archive's root, and the sum of the regular files' sizes."""
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f) if fmt == "tar+zstd" else f
        with tarfile.open(fileobj=raw, mode="r|gz" if fmt == "tar+gzip" else "r|") as tf:
            files = size = 0
            for member in tf:
                if member.name.strip("/") in ("", "."):
                    continue
                files += 1
                if member.isreg():
                    size += member.size
    return files, size
