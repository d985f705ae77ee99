"""Helpers shared by the runner tests: tree snapshots, plans, archives, running the runner."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

RUNNER = [sys.executable, "-m", "daoflow_operator.runner"]


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def walk(root: Path | str):
    """os.walk without recursion (Python 3.11's os.walk recurses once per level, so a very
    deep tree would raise RecursionError in the test itself). Top-down, never follows links."""
    stack = [str(root)]
    while stack:
        dirpath = stack.pop()
        dirnames, filenames = [], []
        with os.scandir(dirpath) as entries:
            for entry in entries:
                (dirnames if entry.is_dir(follow_symlinks=False) else filenames).append(entry.name)
        yield dirpath, dirnames, filenames
        stack.extend(os.path.join(dirpath, d) for d in reversed(dirnames))


def snapshot(root: Path | str) -> dict[str, tuple]:
    """Everything a restore must reproduce: kind, mode, mtime, content, link target, and which
    paths share an inode (hard links). The root itself is left out (it is the mount point)."""
    root = str(root)
    entries: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path), int(st.st_mtime))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", oct(mode), int(st.st_mtime))
            else:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
                entries[rel] = ("file", oct(mode), int(st.st_mtime), st.st_size, sha256_file(path))
    for group in inodes.values():
        for rel in group:
            entries[rel] = entries[rel] + (tuple(sorted(group)),)
    return entries


def tree_listing(root: Path | str) -> list[str]:
    """Every path below root (cheap: no content), for 'nothing was written' checks."""
    out = []
    for dirpath, dirnames, filenames in walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def plan_for(
    *,
    artifact: Path | str,
    path: str,
    fmt: str,
    source: dict,
    target: dict,
    existing: str | None = None,
    limits: dict | None = None,
    sha256: str | None = None,
    size: int | None = None,
) -> dict:
    plan = {
        "restore": {"namespace": "ns", "name": "r1", "uid": "0000-test"},
        "artifact": {
            "path": path,
            "format": fmt,
            "sizeBytes": os.path.getsize(artifact) if size is None else size,
            "sha256": sha256 or sha256_file(artifact),
        },
        "source": source,
        "target": target,
    }
    if existing:
        plan["existingData"] = existing
    if limits:
        plan["limits"] = limits
    return plan


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    report_text: str
    lines: list[dict] = field(default_factory=list)

    @property
    def report(self) -> dict:
        return json.loads(self.report_text)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr + self.report_text


def _plan_files(plan: dict, workdir: Path) -> tuple[Path, Path]:
    """The plan file the runner reads, and a fresh report file for it to write, as in the Job."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan_file = workdir / "plan.json"
    report_file = workdir / "termination-log"
    plan_file.write_text(json.dumps(plan))
    report_file.unlink(missing_ok=True)
    return plan_file, report_file


def _result(code: int, stdout: str, stderr: str, report_file: Path) -> Run:
    report_text = report_file.read_text() if report_file.exists() else ""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return Run(code, stdout, stderr, report_text, lines)


def run_runner(plan: dict, workdir: Path, env: dict | None = None, timeout: float = 300) -> Run:
    """Run the runner as the Job does: a separate process, a plan file, a report file."""
    plan_file, report_file = _plan_files(plan, workdir)
    full_env = dict(os.environ)
    full_env.setdefault("DAOFLOW_PROGRESS_INTERVAL_SECONDS", "0.5")
    full_env.update(env or {})
    proc = subprocess.run(
        RUNNER + ["--plan", str(plan_file), "--report", str(report_file)],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )
    return _result(proc.returncode, proc.stdout, proc.stderr, report_file)


def compress(data_path: Path, fmt: str, out: Path) -> Path:
    """Wrap a plain tar file in the artifact format (streaming, bounded memory)."""
    with open(data_path, "rb") as src, open(out, "wb") as dst:
        if fmt == "tar":
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        elif fmt == "tar+gzip":
            import gzip
            with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=1, mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    gz.write(chunk)
        elif fmt == "tar+zstd":
            cctx = zstandard.ZstdCompressor(level=3)
            cctx.copy_stream(src, dst)
        else:
            raise ValueError(fmt)
    return out


def compress_bytes(data: bytes, fmt: str) -> bytes:
    if fmt == "tar":
        return data
    if fmt == "tar+gzip":
        import gzip
        return gzip.compress(data, compresslevel=1, mtime=0)
    if fmt == "tar+zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    raise ValueError(fmt)


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar archive built member by member, so tests can write what tar itself would refuse."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "",
         size: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.linkname = linkname
    ti.size = size
    ti.mtime = 1_700_000_000
    return ti


def raw_header(name: bytes, *, typeflag: bytes = b"0", size: int = 0, mode: int = 0o644,
               linkname: bytes = b"") -> bytes:
    """One ustar header block with a valid checksum, for names tarfile would not write."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % 1_700_000_000
    block[156:157] = typeflag
    block[157:157 + len(linkname)] = linkname
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 512)


END_OF_ARCHIVE = b"\x00" * 1024


def run_main(plan: dict, workdir: Path, env: dict | None = None) -> Run:
    """Run the runner's `main` in this process (fast), with its own stdout and stderr."""
    import contextlib
    import io as _io
    from unittest import mock

    from daoflow_operator.runner.main import main

    plan_file, report_file = _plan_files(plan, workdir)
    out, err = _io.StringIO(), _io.StringIO()
    values = {"DAOFLOW_RUNNER_SYNC": "false", "DAOFLOW_PROGRESS_INTERVAL_SECONDS": "0.5"}
    values.update(env or {})
    with mock.patch.dict(os.environ, values), contextlib.redirect_stderr(err):
        code = main(["--plan", str(plan_file), "--report", str(report_file)], stdout=out, stderr=err)
    return _result(code, out.getvalue(), err.getvalue(), report_file)


def volume_plan(artifact: Path, target: Path, fmt: str = "tar", existing: str | None = None,
                limits: dict | None = None) -> dict:
    """A plan for an artifact file restored from its own folder into `target`."""
    return plan_for(artifact=artifact, path=artifact.name, fmt=fmt,
                    source={"type": "volume", "mountPath": str(artifact.parent)},
                    target={"type": "volume", "mountPath": str(target)}, existing=existing,
                    limits=limits)
