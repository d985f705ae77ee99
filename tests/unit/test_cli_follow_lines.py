"""`--wait` without a terminal: plain lines, one per progress change, escaped; the restore's end decides the exit code."""

from daoflow_operator import cli


def test_a_progress_line_says_bytes_percent_files_rate_and_eta():
    assert cli.describe_progress({"bytesDone": 10, "bytesTotal": 40, "percent": 25, "filesDone": 2,
                                  "throughputBytesPerSecond": 5, "etaSeconds": 6}) == \
        "10/40 bytes (25%), 2 files, 5 B/s, ETA 6 s"
    assert cli.describe_progress({"bytesDone": 3}) == "3 bytes, 0 files"


def test_without_a_terminal_wait_prints_plain_lines_until_the_end(monkeypatch, capsys):
    running = {"phase": "Running", "progress": {"bytesDone": 5, "bytesTotal": 10, "percent": 50, "filesDone": 1}}
    done = {"phase": "Succeeded", "completionTime": "2026-11-27T12:00:00Z",
            "progress": {"bytesDone": 10, "bytesTotal": 10, "percent": 100, "filesDone": 2},
            "conditions": [{"type": "Ready", "status": "True", "reason": "RestoreSucceeded"}]}
    seen = iter([{"status": running}, {"status": running}, {"status": {**done, "phase": "Succ\x1b[2Jeeded"}}])
    monkeypatch.setattr(cli, "_custom", lambda *a: next(seen))
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    monkeypatch.setattr(cli, "_client", lambda args: object())
    assert cli.main(["backup", "restore", "status", "r1", "--wait", "-n", "ns"]) == 0
    out = capsys.readouterr().out
    assert out.count("progress: ") == 2
    assert "progress: 5/10 bytes (50%), 1 files" in out and "progress: 10/10 bytes (100%), 2 files" in out
    assert "\x1b" not in out and "\r" not in out
