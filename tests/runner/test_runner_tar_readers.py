"""Both tar readers of the runner (ours and libarchive's, `tarstream.READERS`) behind one
interface: the same members from the same chunks, however the stream is cut, and the same
refusal of data after the end-of-archive marker. What libarchive reads ahead must not hide it."""

from __future__ import annotations

import os
import tarfile

import pytest

from daoflow_operator.runner import members as m
from daoflow_operator.runner.failures import RunnerFailure
from daoflow_operator.runner.tarstream import READERS, open_tar
from runner_testlib import END_OF_ARCHIVE, info, raw_header, tar_bytes

MEMBERS = [
    (info("d", tarfile.DIRTYPE, 0o750), None),
    (info("d/a.txt", mode=0o600), b"hello"),
    (info("d/" + "é" * 80 + "/" + "n" * 120), os.urandom(1500)),
    (info("d/link", tarfile.SYMTYPE, 0o777, "a.txt"), None),
    (info("d/hard", tarfile.LNKTYPE, 0o600, "d/a.txt"), None),
    (info("big"), os.urandom(70_000)),
]


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def read_all(reader: str, chunks, monkeypatch) -> list[tuple]:
    monkeypatch.setenv("DAOFLOW_RUNNER_TAR_READER", reader)
    stream = open_tar(iter(chunks), m.Budget(100, 1 << 30))
    out = []
    while (member := stream.next_member()) is not None:
        data = b"".join(bytes(x) for x in stream.data()) if member.kind == m.REGULAR else None
        out.append((member.path, member.kind, member.mode, member.linkname, data))
    stream.finish()
    return out


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("size", [1, 511, 1000, 1 << 20])
def test_readers_agree_however_the_stream_is_cut(reader, size, monkeypatch):
    data = tar_bytes(MEMBERS, fmt=tarfile.PAX_FORMAT) + b"\x00" * 10240  # record padding
    got = read_all(reader, cut(data, size), monkeypatch)
    assert got == read_all("own", [data], monkeypatch)
    assert [g[0] for g in got] == [ti.name for ti, _ in MEMBERS]
    assert got[5][4] == MEMBERS[5][1]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("size", [1, 700, 1 << 20])
@pytest.mark.parametrize("where", [0, 511, 5000])
def test_data_after_the_end_marker_is_refused(reader, size, where, monkeypatch):
    # A second archive (or anything not zero) after the marker, at any distance from it.
    data = (tar_bytes(MEMBERS[:2], fmt=tarfile.USTAR_FORMAT) + b"\x00" * where
            + raw_header(b"hidden.txt", size=0) + END_OF_ARCHIVE)
    with pytest.raises(RunnerFailure) as failed:
        read_all(reader, cut(data, size), monkeypatch)
    assert failed.value.reason == "UnsafeArchive"
    assert "follows the end-of-archive marker" in failed.value.message


@pytest.mark.parametrize("reader", READERS)
def test_a_failure_of_the_source_comes_out_as_itself(reader, monkeypatch):
    data = tar_bytes(MEMBERS, fmt=tarfile.PAX_FORMAT)

    def chunks():
        yield data[:3000]
        raise RunnerFailure("FetchFailed", "the connection dropped")

    with pytest.raises(RunnerFailure) as failed:
        read_all(reader, chunks(), monkeypatch)
    assert (failed.value.reason, failed.value.message) == ("FetchFailed", "the connection dropped")


def test_an_unknown_reader_is_an_invalid_plan(monkeypatch):
    with pytest.raises(RunnerFailure) as failed:
        read_all("bsdtar", [END_OF_ARCHIVE], monkeypatch)
    assert failed.value.reason == "InvalidPlan"


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("size", [1, 512, 1 << 20])
def test_one_zero_block_ends_the_archive_and_what_follows_is_refused(reader, size, monkeypatch):
    # libarchive looks at the block after the first zero block and leaves it unread when it is
    # not zero: the rest of the stream is then checked from there.
    data = raw_header(b"a", size=0) + b"\x00" * 512 + raw_header(b"hidden.txt") + END_OF_ARCHIVE
    with pytest.raises(RunnerFailure) as failed:
        read_all(reader, cut(data, size), monkeypatch)
    assert failed.value.reason == "UnsafeArchive"
