"""Unit tests of the pure core: plan, member checks, tar parsing, decompression, signing,
report, failure table, pg_restore arguments. No server, no subprocess."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import re
import tarfile
from pathlib import Path

import pytest
import zstandard

from daoflow_operator.runner import decompress, members as m, plan as p, postgres, report, s3
from daoflow_operator.runner.failures import FAILURES, RunnerFailure, exit_code
from daoflow_operator.runner.main import verify_checksum
from daoflow_operator.runner.tarstream import TarStream
from runner_testlib import info, pad, raw_header, tar_bytes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "runner.md"


def valid_plan(**over) -> dict:
    plan = {
        "restore": {"namespace": "ns", "name": "r1", "uid": "u"},
        "artifact": {"path": "runs/db.tar.zst", "format": "tar+zstd", "sizeBytes": 10,
                     "sha256": "AB" * 32},
        "source": {"type": "s3", "endpoint": "https://s3.example.test", "bucket": "b",
                   "prefix": "backups/", "credentialsDir": "/var/run/daoflow/s3-credentials"},
        "target": {"type": "volume", "mountPath": "/var/run/daoflow/target"},
    }
    plan.update(over)
    return plan


def refused(reason: str, fn, *args) -> str:
    with pytest.raises(RunnerFailure) as exc:
        fn(*args)
    assert exc.value.reason == reason, exc.value.message
    return exc.value.message


# --- plan ---------------------------------------------------------------------------------


def test_plan_defaults_and_key():
    plan = p.parse_plan(valid_plan())
    assert plan.artifact.sha256 == "ab" * 32
    assert plan.existing_data == "FailIfNotEmpty"
    assert plan.limits == p.Limits(1_000_000, 1 << 40)
    assert plan.source.region == "us-east-1" and plan.source.force_path_style is False
    assert plan.s3_key == "backups/runs/db.tar.zst"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/abs", "a\\b", "a\x00b", "", ".", "./"])
def test_artifact_path_refusals(path):
    refused("InvalidPlan", p.parse_plan, valid_plan(artifact={**valid_plan()["artifact"], "path": path}))


def test_artifact_path_is_normalised():
    assert p.check_relative_path("./a//b/./c", "x") == "a/b/c"


@pytest.mark.parametrize("change,needle", [
    ({"artifact": {"sha256": "xyz"}}, "sha256"),
    ({"artifact": {"sizeBytes": True}}, "sizeBytes must be an integer"),
    ({"artifact": {"sizeBytes": -1}}, "negative"),
    ({"artifact": {"format": "rar"}}, "artifact.format"),
    ({"source": {"endpoint": "ftp://x"}}, "endpoint"),
    ({"source": {"bucket": "no spaces"}}, "bucket"),
    ({"source": {"prefix": "a/../b/"}}, "prefix"),
    ({"source": {"forcePathStyle": "yes"}}, "forcePathStyle"),
    ({"source": {"type": "ftp"}}, "source.type"),
    ({"target": {"type": "postgres", "credentialsDir": "/db"}}, "postgres-custom"),
    ({"target": {"mountPath": "relative"}}, "absolute"),
    ({"existingData": "Overwrite"}, "existingData"),
    ({"limits": {"maxBytes": 0}}, "positive"),
])
def test_plan_refusals_name_the_field(change, needle):
    raw = valid_plan()
    for key, value in change.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    assert needle in refused("InvalidPlan", p.parse_plan, raw)


def test_volume_source_and_postgres_target():
    plan = p.parse_plan(valid_plan(
        artifact={"path": "x.dump", "format": "postgres-custom", "sizeBytes": 1, "sha256": "0" * 64},
        source={"type": "volume", "mountPath": "/m", "subPath": "team/a"},
        target={"type": "postgres", "credentialsDir": "/db"}, existingData="Replace"))
    assert plan.source == p.VolumeSource("/m", "team/a")
    assert plan.target == p.PostgresTarget("/db")
    refused("InvalidPlan", p.parse_plan, valid_plan(source={"type": "volume", "mountPath": "/m",
                                                            "subPath": "../up"}))


def test_verify_checksum():
    art = p.Artifact("a", "tar", 3, "a" * 64)
    verify_checksum(art, "a" * 64, 3)
    assert "pinned size" in refused("ChecksumMismatch", verify_checksum, art, "a" * 64, 4)
    assert "sha256" in refused("ChecksumMismatch", verify_checksum, art, "b" * 64, 3)


# --- failures and docs ----------------------------------------------------------------------


def test_each_failure_has_its_own_exit_code():
    codes = [code for code, _ in FAILURES.values()]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes
    assert exit_code("ChecksumMismatch") == 4


def test_docs_table_matches_the_code():
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", DOCS.read_text(), re.M)
    assert {reason: int(code) for reason, code in rows} == {r: c for r, (c, _) in FAILURES.items()}


# --- members ------------------------------------------------------------------------------


def test_numbers():
    assert m.parse_number(b"0000644\x00", "mode") == 0o644
    assert m.parse_number(b"\x80" + (5 << 33).to_bytes(11, "big"), "size") == 5 << 33
    assert m.parse_number(b"\xff" * 12, "mtime") == -1
    refused("CorruptArchive", m.parse_number, b"12z\x00", "size")


def test_header_checksum_and_ustar_prefix():
    block = bytearray(raw_header(b"name.txt", size=5))
    block[345:351] = b"prefix"
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    assert m.parse_header(bytes(block)).name == "prefix/name.txt"
    block[0] ^= 1
    assert "checksum" in refused("CorruptArchive", m.parse_header, bytes(block))


def test_old_style_directory_by_trailing_slash():
    # The rule applies to the final name (a long-name header may still replace the raw one).
    header = m.parse_header(raw_header(b"olddir/", typeflag=b"\x00"))
    assert m.v7_folder(header, named_by_extension=False).typeflag == b"5"
    header = m.parse_header(raw_header(b"cut-at-100-bytes/", typeflag=b"0"))
    assert m.v7_folder(header, named_by_extension=True).typeflag == b"0"


def test_pax_records():
    rec = b" path=d\xc3\xa9j\xc3\xa0\n"
    rec = str(len(rec) + 2).encode() + rec
    assert m.parse_pax(rec) == {"path": "déjà"}
    refused("CorruptArchive", m.parse_pax, b"99 path=x\n")


@pytest.mark.parametrize("name,parts", [("./a//b/./c", ["a", "b", "c"]), ("a/", ["a"]), ("./", [])])
def test_normalise(name, parts):
    assert m.normalise(name) == parts


@pytest.mark.parametrize("name", ["", "/etc/x", "a/../b", "..", "a\x00b", "x" * 5000])
def test_normalise_refusals(name):
    refused("UnsafeArchive", m.normalise, name)


@pytest.mark.parametrize("where,target,ok", [
    ("l", "x", True), ("l", "./x/y", True), ("a/l", "../x", True), ("a/b/l", "../../x", True),
    ("l", "../x", False), ("a/l", "../../x", False), ("l", "/etc", False), ("l", "", False),
    ("l", "s/..", False), ("a/l", "x/../../y", False), ("l", "a/./b", True),
])
def test_symlink_targets(where, target, ok):
    parts = where.split("/")
    if ok:
        m.check_symlink_target(parts, target, where)
    else:
        refused("UnsafeArchive", m.check_symlink_target, parts, target, where)


def test_modes_lose_setuid_and_setgid_only():
    assert m.safe_mode(0o106755) == 0o755
    assert m.safe_mode(0o2775) == 0o775
    assert m.safe_mode(0o1777) == 0o1777


def test_budget():
    b = m.Budget(max_members=2, max_bytes=10)
    b.admit("a", 4)
    assert "'b'" in refused("LimitExceeded", b.admit, "b", 7)
    b = m.Budget(max_members=1, max_bytes=10)
    b.admit("a", 0)
    assert "member number 2" in refused("LimitExceeded", b.admit, "c", 0)


def test_show_escapes_and_bounds():
    assert m.show("a\nb\x1b") == "'a\\nb\\x1b'"
    assert len(m.show("x" * 500)) <= 122


# --- tar stream -------------------------------------------------------------------------------


def sample_members():
    long = "d/" + "é" * 80 + "/" + "n" * 120
    return [
        (info("d", tarfile.DIRTYPE, 0o750), None),
        (info("d/a.txt", mode=0o600), b"hello"),
        (info(long), os.urandom(1500)),
        (info("d/empty"), b""),
        (info("d/link", tarfile.SYMTYPE, 0o777, "a.txt"), None),
        (info("d/hard", tarfile.LNKTYPE, 0o600, "d/a.txt"), None),
        (info("big"), os.urandom(70_000)),
    ]


def read_all(chunks, budget=None):
    stream = TarStream(iter(chunks), budget or m.Budget(100, 1 << 30))
    out = []
    while (member := stream.next_member()) is not None:
        data = b"".join(bytes(x) for x in stream.data()) if member.kind == m.REGULAR else None
        out.append((member.path, member.kind, member.mode, member.linkname, data))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
def test_tar_stream_reads_what_tarfile_writes(fmt, chunk):
    mem = sample_members()
    if fmt == tarfile.USTAR_FORMAT:
        mem = [x for x in mem if len(x[0].name) < 100]
    data = tar_bytes(mem, fmt=fmt)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    got = read_all(chunks)
    assert [g[0] for g in got] == [x[0].name for x in mem]
    for (path, kind, mode, linkname, content), (ti, expected) in zip(got, mem):
        assert mode == ti.mode
        if expected is not None:
            assert content == expected


def test_tar_stream_skips_unread_data_and_needs_an_end_marker():
    data = tar_bytes([(info("a"), b"x" * 1000), (info("b"), b"y")])
    stream = TarStream(iter([data]), m.Budget(10, 10_000))
    assert stream.next_member().path == "a"
    assert stream.next_member().path == "b"  # a's data was never read
    assert stream.next_member() is None
    truncated = raw_header(b"a", size=3) + pad(b"abc")
    assert "end-of-archive" in refused("CorruptArchive", read_all, [truncated])
    assert "inside a member" in refused("CorruptArchive", read_all, [raw_header(b"a", size=3000)])


def test_tar_stream_reads_member_count_before_data():
    data = tar_bytes([(info(f"f{i}"), b"") for i in range(5)])
    assert "'f3'" in refused("LimitExceeded", read_all, [data], m.Budget(3, 100))


# --- decompression ------------------------------------------------------------------------------


class Raw:
    """The consumer side of a Fetch, over bytes, for both iteration and read()."""

    def __init__(self, data: bytes, chunk: int = 1000):
        self.chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        self.buf = b""

    def __iter__(self):
        while self.chunks:
            yield self.chunks.pop(0)

    def read(self, n=-1):
        if not self.buf and self.chunks:
            self.buf = self.chunks.pop(0)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def test_gzip_concatenated_members():
    data = gzip.compress(b"a" * 5000) + gzip.compress(b"b" * 5000)
    assert b"".join(decompress.gzip(Raw(data))) == b"a" * 5000 + b"b" * 5000


def test_zstd_several_frames():
    c = zstandard.ZstdCompressor()
    data = c.compress(b"x" * 3000) + c.compress(b"y" * 3000)
    assert b"".join(decompress.zstd(Raw(data))) == b"x" * 3000 + b"y" * 3000


@pytest.mark.parametrize("fmt", ["tar+gzip", "tar+zstd"])
def test_output_is_bounded_for_a_bomb(fmt):
    zeros = b"\0" * (64 << 20)
    packed = gzip.compress(zeros, 9) if fmt == "tar+gzip" else zstandard.ZstdCompressor().compress(zeros)
    assert len(packed) < (1 << 20)
    sizes = [len(c) for c in decompress.DECOMPRESSORS[fmt](Raw(packed, chunk=len(packed)))]
    assert sum(sizes) == 64 << 20 and max(sizes) <= decompress.OUT_CHUNK


@pytest.mark.parametrize("fmt", ["tar+gzip", "tar+zstd"])
def test_damaged_stream_is_corrupt_archive(fmt):
    data = bytearray(gzip.compress(os.urandom(20000)) if fmt == "tar+gzip"
                     else zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(20000)))
    data[len(data) // 2] ^= 0xFF
    data[-6] ^= 0xFF
    refused("CorruptArchive", lambda: b"".join(decompress.DECOMPRESSORS[fmt](Raw(bytes(data)))))


# --- S3 errors ----------------------------------------------------------------------------------


def test_error_summary_does_not_echo_the_request():
    assert s3.error_summary(404, "NoSuchKey", {}) == "HTTP 404 NoSuchKey"
    assert "eu-west-1" in s3.error_summary(301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"})
    assert s3.error_summary(403, "403", {}) == "HTTP 403"
    assert "***" in repr(s3.Credentials("a", "b"))


# --- report ------------------------------------------------------------------------------------


def test_report_shapes_and_limit():
    ok = report.build_report(bytes_=1, files=2, sha256="s", verified=True, duration_seconds=1.23456)
    assert ok == {"bytes": 1, "files": 2, "sha256": "s", "verified": True, "durationSeconds": 1.235}
    bad = report.build_report(bytes_=0, files=0, sha256="", verified=False, duration_seconds=0,
                              reason="FetchFailed", message="m" * 10_000)
    text = report.render_report(bad)
    assert len(text.encode()) < report.MAX_REPORT_BYTES
    assert report.progress_line(1, 2, 3) == '{"progress":{"bytesDone":1,"bytesTotal":2,"filesDone":3}}'


def test_redactor():
    r = report.Redactor()
    r.add("topsecret", "top", "")
    assert r("a topsecret b top") == "a *** b top"  # too-short values are not masked
    rendered = report.render_report({"message": "key topsecret"}, r)
    assert "topsecret" not in rendered


# --- postgres arguments ---------------------------------------------------------------------------


def test_pg_restore_arguments_never_hold_the_password():
    db = postgres.Database("h", "5432", "it's", "u", "pw-Secret-123")
    args = postgres.restore_args("pg_restore", db, "Replace", "/tmp/d")
    assert "pw-Secret-123" not in " ".join(args)
    assert ["--clean", "--if-exists"] == args[-3:-1]
    assert "--single-transaction" in args and args[2] == "dbname='it\\'s'"
    assert "--clean" not in postgres.restore_args("pg_restore", db, "Merge", "/tmp/d")
    env = postgres.libpq_env(db, {"PATH": "/bin", "PGSERVICE": "evil", "PGPASSWORD": "old"})
    assert env["PGPASSWORD"] == "pw-Secret-123" and "PGSERVICE" not in env
    assert "pw-Secret-123" not in repr(db)


def test_verify_after_failure_reads_only_a_bounded_rest(monkeypatch):
    """A failing archive with a huge rest is not read to the end just to pick a reason."""
    from daoflow_operator.runner import main as runner_main

    class Reader:
        count = 10
        finished = False

        def finish(self):
            self.finished = True
            return "b" * 64, 20

    plan = p.parse_plan(valid_plan(artifact={"path": "a.tar", "format": "tar", "sizeBytes": 20,
                                             "sha256": "a" * 64}))
    result = runner_main.Result()
    failure = RunnerFailure("UnsafeArchive", "x")
    monkeypatch.setattr(runner_main, "VERIFY_AFTER_FAILURE_BYTES", 5)
    reader = Reader()
    runner_main._verify_after_failure(reader, plan, result, failure)
    assert not reader.finished and result.sha256 == ""
    monkeypatch.setattr(runner_main, "VERIFY_AFTER_FAILURE_BYTES", 50)
    assert "sha256" in refused("ChecksumMismatch", runner_main._verify_after_failure, reader, plan,
                               result, failure)
    assert reader.finished
