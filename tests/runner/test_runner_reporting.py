"""Progress lines, the termination-message report, exit codes, secrets (item 7), and SIGTERM."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from runner_testlib import RUNNER, plan_for, run_runner, snapshot
from storage import write_s3_credentials

SUCCESS_KEYS = {"bytes", "files", "sha256", "verified", "durationSeconds"}
FAILURE_KEYS = SUCCESS_KEYS | {"reason", "message"}
PROGRESS_KEYS = {"bytesDone", "bytesTotal", "filesDone"}


def check_output_shape(run, success: bool) -> list[dict]:
    """Every stdout line is JSON: progress lines, then one result line equal to the report."""
    assert run.stdout.strip(), "no output at all"
    progress = [line["progress"] for line in run.lines[:-1]]
    assert all(set(line) == {"progress"} for line in run.lines[:-1])
    for p in progress:
        assert set(p) == PROGRESS_KEYS
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in p.values())
    done = [p["bytesDone"] for p in progress]
    assert done == sorted(done)
    assert run.lines[-1] == {"result": run.report}
    report = run.report
    assert set(report) == (SUCCESS_KEYS if success else FAILURE_KEYS)
    assert isinstance(report["bytes"], int) and isinstance(report["files"], int)
    assert isinstance(report["verified"], bool)
    assert isinstance(report["durationSeconds"], float)
    assert len(run.report_text.encode()) < 4096
    return progress


def test_progress_lines_and_report_on_success(s3, sample, uploaded, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=sample.artifacts["tar+gzip"], path=uploaded["tar+gzip"],
                    fmt="tar+gzip", source=s3.source(prefix="team-a/"),
                    target={"type": "volume", "mountPath": str(target)})
    run = run_runner(plan, tmp_path / "job", env={"DAOFLOW_PROGRESS_INTERVAL_SECONDS": "0.05"})
    assert run.code == 0, run.output
    progress = check_output_shape(run, success=True)
    assert len(progress) >= 3, "expected several progress lines during a 100 MB restore"
    size = os.path.getsize(sample.artifacts["tar+gzip"])
    assert progress[-1] == {"bytesDone": size, "bytesTotal": size, "filesDone": run.report["files"]}
    assert run.report["files"] == len(snapshot(sample.tree))
    assert run.report["sha256"] == sample.sha("tar+gzip")
    # The real S3 secret is in use here; it appears nowhere.
    assert s3.secret_key not in run.output


def test_report_on_failure_has_reason_and_message(sample, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=sample.artifacts["tar"], path="runs/sample.tar", fmt="tar",
                    sha256="0" * 64, source={"type": "volume", "mountPath": str(sample.dir)},
                    target={"type": "volume", "mountPath": str(target)})
    run = run_runner(plan, tmp_path / "job")
    assert run.code == 4
    check_output_shape(run, success=False)
    assert run.report["reason"] == "ChecksumMismatch"
    assert run.report["verified"] is False


def test_planted_credentials_never_appear_in_any_output(s3, tmp_path):
    """Fake S3 keys, placed so that they would surface: the artifact path itself contains the
    secret, so the server's refusal would quote it if nothing masked it."""
    secret = "FAKE-Secret-Key/0123456789+abcdefABCDEF"
    access = "AKIAFAKEFAKEFAKE9999"
    token = "FAKE-Session-Token-zyxwvut987654321"
    creds = write_s3_credentials(tmp_path / "fake-creds", access, secret, token)
    target = tmp_path / "target"
    target.mkdir()
    artifact = tmp_path / "whatever.tar"
    artifact.write_bytes(b"\0" * 1024)
    plan = plan_for(artifact=artifact, path=f"runs/{secret}/{token}.tar", fmt="tar",
                    source=s3.source(creds_dir=creds),
                    target={"type": "volume", "mountPath": str(target)})
    run = run_runner(plan, tmp_path / "job")
    assert run.code == 3, run.output
    assert run.report["reason"] == "FetchFailed"
    # The server refuses the unknown key or session token (S3 answers 403, or 400 InvalidToken).
    assert re.search(r"HTTP (400|403) ", run.report["message"]), run.report["message"]
    assert "***" in run.report["message"]  # the path was quoted, the secrets were masked
    for planted in (secret, access, token):
        assert planted not in run.stdout
        assert planted not in run.stderr
        assert planted not in run.report_text


@pytest.mark.parametrize("plan,needle", [
    ({"artifact": {"path": "../etc/shadow"}}, "artifact.path must not contain '..'"),
    ({"artifact": {"path": "/abs.tar"}}, "artifact.path must be relative"),
    ({"artifact": {"path": "a\\b.tar"}}, "backslash"),
    ({"artifact": {"format": "zip"}}, "artifact.format must be one of"),
    ({"existingData": "Overwrite"}, "existingData must be one of"),
    ({"limits": {"maxMembers": 0}}, "must be positive"),
])
def test_invalid_plan_exits_2_and_names_the_field(plan, needle, tmp_path):
    base = {
        "artifact": {"path": "a.tar", "format": "tar", "sizeBytes": 1, "sha256": "a" * 64},
        "source": {"type": "volume", "mountPath": "/nonexistent"},
        "target": {"type": "volume", "mountPath": str(tmp_path)},
    }
    for key, value in plan.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    run = run_runner(base, tmp_path / "job")
    assert run.code == 2
    assert run.report["reason"] == "InvalidPlan"
    assert needle in run.report["message"]


def test_missing_plan_file(tmp_path):
    report = tmp_path / "report"
    proc = subprocess.run(RUNNER + ["--plan", str(tmp_path / "none.json"), "--report", str(report)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert json.loads(report.read_text())["reason"] == "InvalidPlan"


def test_plan_and_report_paths_from_environment(sample, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    plan = plan_for(artifact=sample.artifacts["tar+zstd"], path="runs/sample.tar.zst",
                    fmt="tar+zstd", source={"type": "volume", "mountPath": str(sample.dir)},
                    target={"type": "volume", "mountPath": str(target)})
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, DAOFLOW_RUNNER_PLAN=str(tmp_path / "plan.json"),
               DAOFLOW_TERMINATION_LOG=str(tmp_path / "termination-log"))
    proc = subprocess.run(RUNNER, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "termination-log").read_text())["verified"] is True


class TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Serves the first part of an object, then stalls: a restore caught in the middle."""

    data = b""
    sent = 0
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data[: self.sent])
        self.wfile.flush()
        self.release.wait(60)

    def log_message(self, *args):
        pass


def test_sigterm_midway_rolls_back_and_reports_interrupted(sample, tmp_path):
    artifact = sample.artifacts["tar+zstd"]
    TrickleHandler.data = artifact.read_bytes()
    TrickleHandler.sent = len(TrickleHandler.data) // 2
    TrickleHandler.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TrickleHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old\n")
    before = snapshot(target)
    plan = plan_for(artifact=artifact, path="runs/sample.tar.zst", fmt="tar+zstd",
                    source={"type": "s3", "endpoint": f"http://127.0.0.1:{server.server_port}", "allowInsecureHTTP": True,
                            "bucket": "anonymous", "forcePathStyle": True},
                    target={"type": "volume", "mountPath": str(target)}, existing="Replace")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    report = tmp_path / "report"
    proc = subprocess.Popen(RUNNER + ["--plan", str(tmp_path / "plan.json"), "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # No credentialsDir: the default chain, which finds these (the server ignores them).
                            env=dict(os.environ, DAOFLOW_PROGRESS_INTERVAL_SECONDS="0.1",
                                     AWS_ACCESS_KEY_ID="AKIDTRICKLE", AWS_SECRET_ACCESS_KEY="unused"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: fails below if never midway
            line = json.loads(proc.stdout.readline())
            # The client reads whole 1 MiB chunks, so the last partial chunk is not counted.
            if line.get("progress", {}).get("bytesDone", 0) >= TrickleHandler.sent - (2 << 20):
                break
        else:
            pytest.fail("the restore never got midway")
        staged = target / ".daoflow-restore" / "staging"
        assert staged.exists() and os.listdir(staged), "the restore should be midway"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        TrickleHandler.release.set()
        server.shutdown()
        if proc.poll() is None:
            proc.kill()
    assert code == 10
    result = json.loads(report.read_text())
    assert result["reason"] == "Interrupted"
    assert snapshot(target) == before
