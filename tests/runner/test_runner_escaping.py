"""Control characters in archive-controlled text (audit, defect 4).

A member name may hold a newline, a carriage return, terminal escapes (ESC, or the one-byte
C1 CSI 0x9b) and DEL. Wherever such text can surface (the report's message, the result and
progress lines on stdout, the log on stderr) it is escaped, so an archive cannot forge log
lines or drive a terminal.
"""

from __future__ import annotations

import os
import re
import tarfile

import pytest

from daoflow_operator.runner import members as m, report, unpack
from runner_testlib import info, raw_header, pad, END_OF_ARCHIVE, run_main, tar_bytes, volume_plan

HOSTILE = "x\nforged line\r\x1b[2J\x9b\x7fend"
# Every C0 control, DEL and every C1 control: none may reach any output raw.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def assert_no_raw_controls(run):
    for stream in (run.stdout, run.stderr):
        for line in stream.split("\n"):  # the lines themselves end with a real newline
            assert not CONTROLS.search(line), repr(line)
    assert not CONTROLS.search(run.report_text), repr(run.report_text)
    assert "forged line" not in [line.strip() for line in run.stderr.split("\n")]


def restore(tmp_path, data: bytes, existing=None, prepare=None):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.tar").write_bytes(data)
    target = tmp_path / "target"
    target.mkdir()
    if prepare:
        prepare(target)
    return run_main(volume_plan(dest / "a.tar", target, existing=existing), tmp_path / "job")


def escaped_hostile_is_in(message: str) -> None:
    assert "\\n" in message and "\\r" in message and "\\x1b[2J" in message, message
    assert "\\x9b" in message and "\\x7f" in message, message


CASES = {
    # refused by the member rules
    "dotdot": lambda: tar_bytes([(info("../" + HOSTILE), b"x")]),
    # refused for length: the paths in which the audit saw raw text in the report
    "long-component": lambda: tar_bytes([(info(HOSTILE + "/" + "n" * 300), b"x")]),
    "long-parent": lambda: tar_bytes([(info(HOSTILE + "n" * 300 + "/file"), b"x")]),
    # the raw byte 0x9b, not UTF-8 (kept by surrogateescape), in a GNU long name
    "raw-bytes": lambda: (raw_header(b"././@LongLink", typeflag=b"L", size=12)
                          + pad(b"../a\n\x9b\x1b[2J\x7f\x00") + raw_header(b"x", size=0)
                          + END_OF_ARCHIVE),
    # a hard link whose target is not an earlier file
    "hardlink": lambda: tar_bytes([(info(HOSTILE, tarfile.LNKTYPE, 0o644, HOSTILE + "2"), None)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_control_characters_in_names_are_escaped_everywhere(case, tmp_path):
    run = restore(tmp_path, CASES[case]())
    assert_no_raw_controls(run)
    assert run.report["reason"] == "UnsafeArchive", run.output
    message = run.report["message"]
    if case == "raw-bytes":
        assert "\\n\\x9b\\x1b[2J\\x7f" in message, message
    else:
        escaped_hostile_is_in(message)


def test_merge_conflict_message_is_escaped(tmp_path):
    def prepare(target):
        (target / HOSTILE).mkdir()
        (target / HOSTILE / "keep").write_text("keep\n")

    run = restore(tmp_path, tar_bytes([(info(HOSTILE), b"file where a folder is")]),
                  existing="Merge", prepare=prepare)
    assert run.report["reason"] == "RestoreFailed", run.output
    escaped_hostile_is_in(run.report["message"])
    assert_no_raw_controls(run)


def test_an_unexpected_error_carrying_a_name_is_escaped(tmp_path, monkeypatch):
    """The last line of defence: an error the runner did not foresee, whose text holds a member
    name, is escaped in the report, and its traceback in the log is too."""

    def broken(self, member, stream):
        raise ValueError(f"cannot handle {member.path}")

    monkeypatch.setattr(unpack.Unpacker, "write_file", broken)
    run = restore(tmp_path, tar_bytes([(info(HOSTILE), b"x")]))
    assert_no_raw_controls(run)
    assert run.report["reason"] == "RestoreFailed", run.output
    escaped_hostile_is_in(run.report["message"])
    assert "ValueError" in run.stderr


def test_an_os_error_outside_the_unpacker_is_escaped(tmp_path, monkeypatch):
    from daoflow_operator.runner import main as runner_main

    def broken(plan, progress, result, out):
        raise OSError(5, "Input/output error", "/somewhere/" + HOSTILE)

    monkeypatch.setattr(runner_main, "execute", broken)
    run = restore(tmp_path, tar_bytes([(info("a"), b"x")]))
    assert_no_raw_controls(run)
    assert run.report["reason"] == "RestoreFailed"
    escaped_hostile_is_in(run.report["message"])


def test_the_escaping_function():
    assert report.escape("a\nb\r\t\x1b[2J\x9b\x7f\x00") == "a\\nb\\r\\t\\x1b[2J\\x9b\\x7f\\x00"
    assert report.escape("déjà vu 😀") == "déjà vu 😀"
    assert report.escape("\u2028\u202e") == "\\u2028\\u202e"  # line separator, bidi override
    assert report.escape("a\udc9bb") == "a\\x9bb"  # a raw byte kept by surrogateescape
    assert report.escape("\ud800") == "\\ud800"
    # Names: the same escaping, quoted, and a literal backslash doubled so that it cannot pass
    # for an escape.
    assert m.show("a\\nb\n") == "'a\\\\nb\\n'"
    assert m.show(os.fsdecode(b"\x9b\xff")) == "'\\x9b\\xff'"


def test_the_report_is_escaped_whatever_builds_the_message():
    text = report.render_report(report.build_report(
        bytes_=0, files=0, sha256="", verified=False, duration_seconds=0.0,
        reason="RestoreFailed", message="raw " + HOSTILE + "\udcff"))
    assert not CONTROLS.search(text)
    text.encode("utf-8")  # no lone surrogate left to break the write
