"""Long names whose raw 100-byte ustar name field ends with '/' (audit, defect 1), and data
after the end-of-archive marker.

GNU tar (gnu and posix formats) and Python's tarfile write a name that does not fit in the
ustar fields into a GNU `L` header or a pax `path` record, and cut the ustar name field at 100
bytes. When byte 100 of the path is a '/', that cut field ends with '/', which the old v7
convention reads as "this regular file is a folder". The real name is the long one, and the
file's data must be skipped by its size, never parsed as headers.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from daoflow_operator.runner import members as m
from daoflow_operator.runner.tarstream import TarStream
from runner_testlib import (
    END_OF_ARCHIVE, compress_bytes, info, pad, raw_header, run_main, snapshot, tar_bytes,
    tree_listing, volume_plan,
)

MTIME = 1_650_000_000
SLASH_AT = (99, 100, 101, 155, 156)  # byte position (1-based) of a '/' in the member's path


def inner_tar() -> bytes:
    """File content that looks like a whole archive: a member, then the end-of-archive zero
    blocks. Parsed as headers it would plant `evil.txt` and end the archive early."""
    return tar_bytes([(info("evil.txt"), b"planted by the archive's own data\n")])


def build_tree(root: Path) -> list[str]:
    """Files and folders whose paths have a '/' at each position in SLASH_AT, with short and
    long last components (long ones force GNU `L` / pax `path` headers in every tool), and a
    last member that a truncated archive would lose. Returns the member names, parents first."""
    names = []
    root.mkdir(parents=True)
    for i, pos in enumerate(SLASH_AT):
        for j, tail in enumerate(("file.bin", "t" * 120)):
            folder = chr(ord("a") + 2 * i + j) * (pos - 1)
            path = folder + "/" + tail
            assert path.encode()[pos - 1:pos] == b"/"
            (root / folder).mkdir()
            (root / path).write_bytes(inner_tar() + os.urandom(700) + b"\0" * 2048)
            names += [folder, path]
            # A folder whose own name has a '/' at that position too.
            sub = path + ".d"
            (root / sub).mkdir()
            (root / sub / "inside.txt").write_text(f"{pos}\n")
            names += [sub, sub + "/inside.txt"]
    (root / "zz-last.txt").write_text("the last member\n")
    names.append("zz-last.txt")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME))
    return names


def archive(maker: str, root: Path, names: list[str], out: Path) -> Path:
    if maker.startswith("gnutar-"):
        fmt = maker.removeprefix("gnutar-")
        listing = out.with_suffix(".names")
        listing.write_text("\n".join(names) + "\n")
        subprocess.run(["tar", "-C", str(root), f"--format={fmt}", "--no-recursion",
                        "-cf", str(out), "-T", str(listing)], check=True)
    else:
        fmt = {"tarfile-gnu": tarfile.GNU_FORMAT, "tarfile-pax": tarfile.PAX_FORMAT}[maker]
        with tarfile.open(out, "w", format=fmt) as tf:
            for name in names:
                tf.add(root / name, arcname=name, recursive=False)
    return out


def name_fields_ending_in_slash(data: bytes) -> int:
    """How many regular-file headers have a raw name field ending with '/' (the trigger)."""
    count = 0
    pos = 0
    while pos + 512 <= len(data):
        block = data[pos:pos + 512]
        if not block.strip(b"\0"):
            break
        header = m.parse_header(block)
        raw_name = m.cstr(block[:100])
        if block[156:157] in (b"0", b"\0") and raw_name.endswith(b"/"):
            count += 1
        size = header.size if block[156:157] in (b"0", b"\0", b"7", b"x", b"g", b"L", b"K") else 0
        pos += 512 + (size + 511) // 512 * 512
    return count


MAKERS = ["gnutar-gnu", "gnutar-posix", "tarfile-gnu", "tarfile-pax"]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("slash") / "tree"
    names = build_tree(root)
    return root, names


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize("policy", ["FailIfNotEmpty", "Merge"])
def test_slash_at_byte_100_restores_the_whole_tree(maker, policy, source_tree, tmp_path):
    root, names = source_tree
    dest = tmp_path / "dest"
    dest.mkdir()
    artifact = archive(maker, root, names, dest / "a.tar")
    assert name_fields_ending_in_slash(artifact.read_bytes()) >= 2, "the trigger is not in the archive"
    target = tmp_path / "target"
    target.mkdir()
    if policy == "Merge":
        (target / "kept.txt").write_text("old\n")
        os.utime(target / "kept.txt", (MTIME, MTIME))
    run = run_main(volume_plan(artifact, target, existing=policy), tmp_path / "job")
    assert run.code == 0, run.output
    assert run.report["verified"] is True
    assert run.report["files"] == len(names)
    restored = snapshot(target)
    if policy == "Merge":
        assert restored.pop("kept.txt")[0] == "file"
    assert restored == snapshot(root)
    assert not (target / "evil.txt").exists()


@pytest.mark.parametrize("fmt", ["tar", "tar+gzip", "tar+zstd"])
def test_compressed_gnu_tar_archive_with_the_trigger(fmt, source_tree, tmp_path):
    root, names = source_tree
    dest = tmp_path / "dest"
    dest.mkdir()
    plain = archive("gnutar-gnu", root, names, tmp_path / "plain.tar")
    artifact = dest / "a.art"
    artifact.write_bytes(compress_bytes(plain.read_bytes(), fmt))
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(volume_plan(artifact, target, fmt=fmt), tmp_path / "job")
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(root)


# --- the rules, at the level of the tar stream -----------------------------------------------


def stream_members(data: bytes) -> list[tuple[str, str, bytes | None]]:
    stream = TarStream(iter([data]), m.Budget(1000, 1 << 30))
    out = []
    while (member := stream.next_member()) is not None:
        content = b"".join(bytes(x) for x in stream.data()) if member.kind == m.REGULAR else None
        out.append((member.path, member.kind, content))
    stream.finish()
    return out


def gnu_longname(name: bytes) -> bytes:
    return raw_header(b"././@LongLink", typeflag=b"L", size=len(name) + 1) + pad(name + b"\0")


def test_long_name_replaces_a_name_field_ending_in_slash():
    long = b"d" * 99 + b"/" + b"f" * 30
    data = inner_tar()
    archive_bytes = (gnu_longname(long) + raw_header(long[:100], size=len(data)) + pad(data)
                     + raw_header(b"after.txt", size=2) + pad(b"ok") + END_OF_ARCHIVE)
    assert stream_members(archive_bytes) == [
        (long.decode(), m.REGULAR, data), ("after.txt", m.REGULAR, b"ok")]


def test_v7_folder_by_trailing_slash_still_skips_its_data():
    """A v7 regular-file header whose final name ends with '/' is a folder; whatever size it
    declares is skipped, so what it carries can never be read as headers."""
    hidden = inner_tar()
    data = (raw_header(b"olddir/", typeflag=b"\0", size=len(hidden)) + pad(hidden)
            + raw_header(b"olddir/x", size=1) + pad(b"x") + END_OF_ARCHIVE)
    assert stream_members(data) == [("olddir", m.DIRECTORY, None), ("olddir/x", m.REGULAR, b"x")]


def test_pax_path_ending_in_slash_keeps_a_regular_file_regular():
    body = b"18 path=pax-name/\n"
    data = (raw_header(b"././@PaxHeader", typeflag=b"x", size=len(body)) + pad(body)
            + raw_header(b"ignored/", size=3) + pad(b"abc") + END_OF_ARCHIVE)
    assert stream_members(data) == [("pax-name", m.REGULAR, b"abc")]


# --- after the end-of-archive marker: zero padding only ----------------------------------------


def hidden_after_end() -> bytes:
    return (raw_header(b"shown.txt", size=1) + pad(b"s") + b"\0" * 512
            + raw_header(b"hidden.txt", size=1) + pad(b"h") + END_OF_ARCHIVE)


@pytest.mark.parametrize("fmt", ["tar", "tar+gzip", "tar+zstd"])
def test_data_after_the_end_marker_is_refused(fmt, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    artifact = dest / "a.art"
    artifact.write_bytes(compress_bytes(hidden_after_end(), fmt))
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(volume_plan(artifact, target, fmt=fmt), tmp_path / "job")
    assert run.report["reason"] == "UnsafeArchive", run.output
    assert run.code == 5
    assert "end-of-archive" in run.report["message"]
    assert run.report["verified"] is True
    assert tree_listing(target) == []


@pytest.mark.parametrize("padding", [0, 512, 10240 - 1024, 1 << 20])
def test_zero_padding_after_the_end_marker_is_accepted(padding, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    artifact = dest / "a.tar"
    artifact.write_bytes(raw_header(b"a.txt", size=1) + pad(b"a") + b"\0" * 512 + b"\0" * padding)
    target = tmp_path / "target"
    target.mkdir()
    run = run_main(volume_plan(artifact, target), tmp_path / "job")
    assert run.code == 0, run.output
    assert tree_listing(target) == ["a.txt"]


def test_a_byte_at_the_very_end_is_refused():
    data = raw_header(b"a.txt", size=1) + pad(b"a") + END_OF_ARCHIVE + b"\0" * 8191 + b"\x01"
    stream = TarStream(iter([data[i:i + 1000] for i in range(0, len(data), 1000)]),
                       m.Budget(10, 1 << 20))
    assert stream.next_member().path == "a.txt"
    assert stream.next_member() is None
    with pytest.raises(Exception) as exc:
        stream.finish()
    assert getattr(exc.value, "reason", None) == "UnsafeArchive"
    assert "end-of-archive" in exc.value.message


def test_tarfile_archives_end_with_zero_padding_only():
    """The unit-level check over what tarfile writes in each format (record padding)."""
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            ti = tarfile.TarInfo("x")
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"abc"))
        assert stream_members(buf.getvalue()) == [("x", m.REGULAR, b"abc")]


def test_an_extended_header_right_before_the_end_is_corrupt():
    data = gnu_longname(b"a" * 120) + END_OF_ARCHIVE
    with pytest.raises(Exception) as exc:
        stream_members(data)
    assert getattr(exc.value, "reason", None) == "CorruptArchive"
