"""A corpus of hostile archives (issue item 5).

Each one is refused with a message naming the offending member, and nothing is written
outside the target, nor left in it. The runner runs in-process here (the same `main` the Job
runs) to keep the corpus fast; the round-trip tests run it as a separate process.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from daoflow_operator.runner.main import main
from runner_testlib import (
    END_OF_ARCHIVE, compress_bytes, info, pad, plan_for, raw_header, tar_bytes, tree_listing,
)


def members_then_end(*parts: bytes) -> bytes:
    return b"".join(parts) + END_OF_ARCHIVE


def pax_header(records: dict[str, bytes], name: bytes = b"././@PaxHeader") -> bytes:
    body = b""
    for key, value in records.items():
        rec = b" " + key.encode() + b"=" + value + b"\n"
        n = len(rec) + 1
        while len(str(n).encode()) + len(rec) != n:
            n = len(str(n).encode()) + len(rec)
        body += str(n).encode() + rec
    return raw_header(name, typeflag=b"x", size=len(body)) + pad(body)


def bomb_zstd(size: int) -> bytes:
    """One member of `size` zero bytes, zstd-compressed to a few kilobytes."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=3)
    with cctx.stream_writer(out, closefd=False) as w:
        w.write(raw_header(b"bomb.bin", size=size))
        zeros = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            w.write(zeros)
        w.write(END_OF_ARCHIVE)
    return out.getvalue()


def many_members(n: int) -> bytes:
    return tar_bytes([(info(f"f{i}"), b"") for i in range(n)], fmt=tarfile.USTAR_FORMAT)


# name -> (archive bytes builder, format, expected reason, text the message must contain, limits)
CORPUS = {
    "dotdot": (lambda: tar_bytes([(info("../evil.txt"), b"x")]), "tar", "UnsafeArchive",
               "'../evil.txt'", None),
    "nested-dotdot": (lambda: tar_bytes([(info("a/b/../../../evil.txt"), b"x")]), "tar+gzip",
                      "UnsafeArchive", "a/b/../../../evil.txt", None),
    "absolute-path": (lambda: members_then_end(raw_header(b"/tmp/daoflow-evil-abs.txt", size=1)
                                               + pad(b"x")), "tar", "UnsafeArchive",
                      "/tmp/daoflow-evil-abs.txt", None),
    "symlink-relative-escape": (lambda: tar_bytes([(info("link", tarfile.SYMTYPE, 0o777, "../../outside"), None)]),
                                "tar+zstd", "UnsafeArchive", "'link'", None),
    "symlink-absolute": (lambda: tar_bytes([(info("etc", tarfile.SYMTYPE, 0o777, "/etc"), None)]),
                         "tar", "UnsafeArchive", "'etc'", None),
    "symlink-deep-escape-by-one": (lambda: tar_bytes([
        (info("a/b", tarfile.DIRTYPE, 0o755), None),
        (info("a/b/l", tarfile.SYMTYPE, 0o777, "../../../x"), None)]),
        "tar", "UnsafeArchive", "'a/b/l'", None),
    "symlink-escape-then-file-through-it": (lambda: tar_bytes([
        (info("esc", tarfile.SYMTYPE, 0o777, "../../outside"), None),
        (info("esc/evil.txt"), b"through the link")]),
        "tar", "UnsafeArchive", "'esc'", None),
    "file-through-inner-symlink": (lambda: tar_bytes([
        (info("real", tarfile.DIRTYPE, 0o755), None),
        (info("s", tarfile.SYMTYPE, 0o777, "real"), None),
        (info("s/file.txt"), b"written through s")]),
        "tar", "UnsafeArchive", "'s'", None),
    "symlink-chain-escape": (lambda: tar_bytes([
        (info("s", tarfile.SYMTYPE, 0o777, "."), None),
        (info("t", tarfile.SYMTYPE, 0o777, "s/.."), None)]),
        "tar", "UnsafeArchive", "'t'", None),
    "hardlink-relative-escape": (lambda: tar_bytes([
        (info("h", tarfile.LNKTYPE, 0o644, "../../outside/sentinel.txt"), None)]),
        "tar", "UnsafeArchive", "'h'", None),
    "hardlink-absolute": (lambda: tar_bytes([(info("h", tarfile.LNKTYPE, 0o644, "/etc/passwd"), None)]),
                          "tar", "UnsafeArchive", "'h'", None),
    "hardlink-through-symlink": (lambda: tar_bytes([
        (info("sub/f"), b"x"),
        (info("s", tarfile.SYMTYPE, 0o777, "sub"), None),
        (info("h", tarfile.LNKTYPE, 0o644, "s/f"), None)]),
        "tar", "UnsafeArchive", "'h'", None),
    "char-device": (lambda: tar_bytes([(info("dev/null-ish", tarfile.CHRTYPE, 0o666), None)]),
                    "tar", "UnsafeArchive", "character device", None),
    "block-device": (lambda: tar_bytes([(info("sda", tarfile.BLKTYPE, 0o660), None)]),
                     "tar", "UnsafeArchive", "'sda': block device", None),
    "fifo": (lambda: tar_bytes([(info("pipe", tarfile.FIFOTYPE, 0o644), None)]),
             "tar+gzip", "UnsafeArchive", "'pipe': FIFOs", None),
    "decompression-bomb": (lambda: bomb_zstd(200 << 20), "tar+zstd", "LimitExceeded",
                           "'bomb.bin'", {"maxBytes": 64 << 20}),
    "member-count": (lambda: many_members(1500), "tar+gzip", "LimitExceeded",
                     "'f1000'", {"maxMembers": 1000}),
    "pax-path-override": (lambda: members_then_end(
        pax_header({"path": b"../pax-evil.txt"}) + raw_header(b"benign.txt", size=1) + pad(b"x")),
        "tar", "UnsafeArchive", "../pax-evil.txt", None),
    "pax-nul-in-path": (lambda: members_then_end(
        pax_header({"path": b"ok\x00/../../x"}) + raw_header(b"benign.txt", size=1) + pad(b"x")),
        "tar", "UnsafeArchive", "NUL", None),
    "huge-pax-header": (lambda: members_then_end(raw_header(b"././@PaxHeader", typeflag=b"x",
                                                            size=100 << 20)),
                        "tar", "LimitExceeded", "extended header", None),
    "gnu-longname-dotdot": (lambda: tar_bytes([(info("../" + "x" * 150), b"x")],
                                              fmt=tarfile.GNU_FORMAT),
                            "tar", "UnsafeArchive", "'../xxxx", None),
    "reserved-workdir-name": (lambda: tar_bytes([(info(".daoflow-restore/previous/x"), b"x")]),
                              "tar", "UnsafeArchive", ".daoflow-restore", None),
    "gnu-sparse": (lambda: members_then_end(raw_header(b"sparse.bin", typeflag=b"S")),
                   "tar", "UnsafeArchive", "'sparse.bin': GNU sparse", None),
    "file-replaces-folder": (lambda: tar_bytes([
        (info("d", tarfile.DIRTYPE, 0o755), None), (info("d/x"), b"x"), (info("d"), b"x")]),
        "tar", "UnsafeArchive", "'d'", None),
    "terminal-escape-in-name": (lambda: tar_bytes([(info("../\x1b[2Jlog\nforged", tarfile.REGTYPE), b"x")]),
                                "tar", "UnsafeArchive", "\\x1b[2Jlog\\nforged", None),
}


@pytest.fixture
def jail(tmp_path):
    """target sits two folders deep, next to an `outside` folder with a sentinel file, so any
    escape lands somewhere this test looks."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "sentinel.txt").write_text("untouched\n")
    target = tmp_path / "t1" / "t2" / "target"
    target.mkdir(parents=True)
    (tmp_path / "dest").mkdir()
    return tmp_path, target


def run_in_process(plan: dict, workdir: Path, capsys) -> tuple[int, dict, str]:
    plan_file = workdir / "plan.json"
    report_file = workdir / "report.json"
    plan_file.write_text(json.dumps(plan))
    code = main(["--plan", str(plan_file), "--report", str(report_file)])
    captured = capsys.readouterr()
    return code, json.loads(report_file.read_text()), captured.out + captured.err


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_archive_is_refused(case, jail, capsys, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DAOFLOW_RUNNER_SYNC", "false")
    root, target = jail
    build, fmt, reason, needle, limits = CORPUS[case]
    data = build()
    if fmt != "tar" and case not in ("decompression-bomb",):
        data = compress_bytes(data, fmt)
    (root / "dest" / "artifact").write_bytes(data)
    before = tree_listing(root)
    abs_evil_before = os.path.exists("/tmp/daoflow-evil-abs.txt")
    plan = plan_for(artifact=root / "dest" / "artifact", path="artifact", fmt=fmt,
                    source={"type": "volume", "mountPath": str(root / "dest")},
                    target={"type": "volume", "mountPath": str(target)}, limits=limits)
    workdir = tmp_path_factory.mktemp("job")
    code, report, output = run_in_process(plan, workdir, capsys)
    assert report["reason"] == reason, report
    assert code == {"UnsafeArchive": 5, "LimitExceeded": 7}[reason]
    assert needle in report["message"], report["message"]
    assert report["verified"] is True  # the artifact was the pinned one; its content is hostile
    assert tree_listing(root) == before  # nothing outside, nothing left inside
    assert tree_listing(target) == []
    assert (root / "outside" / "sentinel.txt").read_text() == "untouched\n"
    assert os.path.exists("/tmp/daoflow-evil-abs.txt") == abs_evil_before
    assert "\x1b" not in output  # archive names cannot drive the terminal or forge lines


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 12


def test_setuid_and_setgid_bits_are_stripped(jail, capsys, tmp_path_factory, monkeypatch):
    """Not refused but neutralised: the file is restored without setuid/setgid; sticky stays."""
    monkeypatch.setenv("DAOFLOW_RUNNER_SYNC", "false")
    root, target = jail
    data = tar_bytes([
        (info("suid", mode=0o4755), b"#!/bin/sh\n"),
        (info("sgid-dir", tarfile.DIRTYPE, 0o2775), None),
        (info("sticky", tarfile.DIRTYPE, 0o1777), None),
    ])
    (root / "dest" / "artifact").write_bytes(data)
    plan = plan_for(artifact=root / "dest" / "artifact", path="artifact", fmt="tar",
                    source={"type": "volume", "mountPath": str(root / "dest")},
                    target={"type": "volume", "mountPath": str(target)})
    code, report, _ = run_in_process(plan, tmp_path_factory.mktemp("job"), capsys)
    assert code == 0, report
    assert os.stat(target / "suid").st_mode & 0o7777 == 0o755
    assert os.stat(target / "sgid-dir").st_mode & 0o7777 == 0o775
    assert os.stat(target / "sticky").st_mode & 0o7777 == 0o1777
