"""The restore runner: the program inside the restore Job.

One restore, in the product's steps:
  fetch    read the artifact once from S3 or a volume, hashing every byte   (fetch.py, s3.py)
  verify   the sha256 and size must equal the pinned ones                   (verify_checksum)
  execute  unpack into staging and commit, or pg_restore in one transaction (unpack.py,
           commit.py, postgres.py); nothing becomes visible before verify has passed
  record   progress lines on stdout, the report in the termination-message file (report.py)

Usage: python -m daoflow_operator.runner [--plan FILE] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from . import decompress, members
from .commit import WORKDIR, Workspace, not_empty_message, os_error_text, visible_entries
from .failures import FAILURES, SHIELD, RunnerFailure, exit_code, invalid_plan, restore_failed
from .fetch import Decompress, Fetch, Progress, open_s3_artifact, open_volume_artifact
from .plan import Artifact, Plan, PostgresTarget, S3Source, parse_plan
from .report import Redactor, build_report, escape, progress_line, render_report
from .tarstream import open_tar
from .unpack import Unpacker

DEFAULT_PLAN = "/etc/daoflow/plan/plan.json"
DEFAULT_REPORT = "/dev/termination-log"
MAX_PLAN_BYTES = 1 << 20
# Failures that the archive's content causes: worth checking whether the content was the
# pinned one at all before blaming it (a flipped byte usually breaks decompression first).
CONTENT_FAILURES = ("UnsafeArchive", "CorruptArchive", "LimitExceeded")
VERIFY_AFTER_FAILURE_BYTES = 4 << 30


@dataclass
class Result:
    bytes: int = 0
    files: int = 0
    sha256: str = ""
    verified: bool = False


class Output:
    """stdout carries JSON lines only; stderr carries log lines. Both pass the redactor."""

    def __init__(self, redact: Redactor, stdout=None, stderr=None):
        self.redact = redact
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._lock = threading.Lock()

    def json_line(self, line: str) -> None:
        with self._lock:
            self._stdout.write(self.redact(line) + "\n")
            self._stdout.flush()

    def log(self, text: str) -> None:
        """One log line. Whatever the text holds, it stays one line: control characters
        (archive names, a server's answer) are escaped after the secrets are masked."""
        with self._lock:
            self._stderr.write(escape(self.redact(f"daoflow-runner: {text}")) + "\n")
            self._stderr.flush()

    def log_traceback(self, exc: BaseException) -> None:
        """An unforeseen error's traceback, one log line per line of it. The frames come from
        the runner's code; the exception's own text may carry names and is escaped whole."""
        for chunk in traceback.format_tb(exc.__traceback__):
            for line in chunk.rstrip("\n").split("\n"):
                self.log(line)
        self.log(f"{type(exc).__name__}: {exc}")


class Ticker(threading.Thread):
    """Prints one progress line every `interval` seconds until stopped, then a last one."""

    def __init__(self, progress: Progress, interval: float, out: Output):
        super().__init__(name="progress", daemon=True)
        self.progress, self.interval, self.out = progress, interval, out
        self._stopped = threading.Event()

    def line(self) -> None:
        p = self.progress
        self.out.json_line(progress_line(p.bytes_done, p.bytes_total, p.files_done))

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.line()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)
        self.line()


class Signals:
    """SIGTERM/SIGINT raise Interrupted once, so that the rollback code runs; later ones are
    ignored so that they cannot cut the rollback short."""

    def __init__(self) -> None:
        self.armed = True
        self._previous: dict[int, object] = {}

    def handler(self, signum, _frame) -> None:
        if not self.armed or SHIELD.committed:
            return
        if SHIELD.depth:  # inside a commit or a rollback: let it finish (failures.shielded)
            SHIELD.pending = True
            return
        self.armed = False
        raise RunnerFailure("Interrupted", f"stopped by {signal.Signals(signum).name}; nothing was committed")

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self.handler)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def load_plan(path: str) -> Plan:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise invalid_plan(f"cannot read the plan file {path}: {exc.strerror}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise invalid_plan("the plan file is larger than 1 MiB")
    try:
        raw = json.loads(data)
    except ValueError:
        raise invalid_plan(f"the plan file {path} is not valid JSON") from None
    return parse_plan(raw)


def verify_checksum(artifact: Artifact, sha256: str, size: int) -> None:
    """Verify: pure. The artifact read must be exactly the pinned one."""
    if size != artifact.size_bytes:
        raise RunnerFailure(
            "ChecksumMismatch", f"the artifact is {size} bytes, the pinned size is {artifact.size_bytes}"
        )
    if sha256 != artifact.sha256:
        raise RunnerFailure(
            "ChecksumMismatch", f"the artifact's sha256 is {sha256}, the pinned one is {artifact.sha256}"
        )


def verify_contents(artifact: Artifact, files: int, size: int) -> None:
    """Verify: pure. What was unpacked must match the archive's own recorded counts, when the
    BackupRun records them: `files` members (the archive's root not counted) and
    `uncompressedBytes`, the sum of the regular files' sizes."""
    if artifact.files is not None and files != artifact.files:
        raise RunnerFailure(
            "ContentMismatch", f"the archive holds {files} members, the BackupRun records {artifact.files}"
        )
    if artifact.uncompressed_bytes is not None and size != artifact.uncompressed_bytes:
        raise RunnerFailure(
            "ContentMismatch", f"the archive's files hold {size} bytes, the BackupRun records "
                               f"{artifact.uncompressed_bytes}"
        )


def fetch(plan: Plan, progress: Progress, redact: Redactor) -> Fetch:
    """Fetch: open the artifact and start reading it in the background."""
    if isinstance(plan.source, S3Source):
        obj = open_s3_artifact(plan.source, plan.s3_key)
        if obj.credentials is not None:
            redact.add(obj.credentials.access_key_id, obj.credentials.secret_access_key,
                       obj.credentials.session_token)
        chunks, declared = obj.chunks(), (lambda: obj.length)
    else:
        chunks, size = open_volume_artifact(plan.source, plan.artifact.path)
        declared = lambda: size  # noqa: E731
    reader = Fetch(chunks, size_bytes=plan.artifact.size_bytes, progress=progress,
                   declared_size=declared)
    reader.start()
    return reader


def _verify_after_failure(reader: Fetch, plan: Plan, result: Result, failure: RunnerFailure) -> None:
    """An archive failed to unpack: read the rest and, if it is not the pinned artifact,
    report that instead, since it is the cause. Only when the rest is at most
    VERIFY_AFTER_FAILURE_BYTES: a reason is not worth reading terabytes for."""
    if plan.artifact.size_bytes - reader.count > VERIFY_AFTER_FAILURE_BYTES:
        return
    try:
        result.sha256, result.bytes = reader.finish()
    except RunnerFailure:
        return  # cannot tell; the unpack failure stands
    verify_checksum(plan.artifact, result.sha256, result.bytes)
    result.verified = True


def execute_volume(plan: Plan, progress: Progress, result: Result, out: Output) -> None:
    target = plan.target.mount_path  # type: ignore[union-attr]
    if not os.path.isdir(target):
        raise RunnerFailure("RestoreFailed", f"the target {target} is not a mounted folder")
    ws = Workspace(target)
    ws.sync = os.environ.get("DAOFLOW_RUNNER_SYNC", "true").lower() not in ("0", "false", "no")
    try:
        recovered = ws.recover()
    except OSError as exc:
        raise restore_failed(
            f"cleaning up after an earlier restore failed: {os_error_text(exc, target)}"
        ) from None
    if recovered:
        out.log(recovered)
    if plan.existing_data == "FailIfNotEmpty":
        names = visible_entries(target)
        if names:
            raise RunnerFailure("TargetNotEmpty", not_empty_message(names))
    reader = fetch(plan, progress, out.redact)
    committed = False
    inflate = None
    try:
        ws.create()
        unpacker = Unpacker(ws.staging, ws.dir, progress, writeback=ws.sync)
        budget = members.Budget(plan.limits.max_members, plan.limits.max_bytes)
        if plan.artifact.format == "tar":
            chunks = iter(reader)
        else:
            inflate = Decompress(decompress.DECOMPRESSORS[plan.artifact.format], reader)
            inflate.start()
            chunks = iter(inflate)
        try:
            unpacker.unpack(open_tar(chunks, budget, room=ws.path_room))
        except RunnerFailure as failure:
            unpacker.close()
            if failure.reason in CONTENT_FAILURES:
                if inflate is not None:
                    inflate.stop()
                _verify_after_failure(reader, plan, result, failure)
            raise
        if inflate is not None:
            inflate.stop()  # the tar stream has been read to its end; the rest is only hashed
        result.sha256, result.bytes = reader.finish()
        verify_checksum(plan.artifact, result.sha256, result.bytes)
        result.verified = True
        verify_contents(plan.artifact, unpacker.files, unpacker.bytes)
        unpacker.make_symlinks()
        if plan.existing_data != "Merge":
            unpacker.apply_dir_metadata(ws.staging)
        ws.commit(plan.existing_data)
        committed = True
        # Past the commit point the data is restored: nothing after it may turn the report
        # into a failure. What goes wrong from here on is logged (see _after_commit).
        result.files = unpacker.files
        if plan.existing_data == "Merge":
            _after_commit(out, target, "not all folder modes were applied",
                          lambda: unpacker.apply_dir_metadata(target))
    except OSError as exc:  # the unpacker names its members; this is the workspace's own I/O
        raise restore_failed(f"restoring into the target failed: {os_error_text(exc, target)}") from None
    finally:
        try:
            if inflate is not None:
                inflate.stop()
            reader.stop()
        finally:
            if committed:
                _after_commit(
                    out, target,
                    f"the old data could not be removed; it stays in {WORKDIR}/previous until the "
                    "next restore into this target removes it",
                    ws.finish,
                )
            else:
                _discard(ws, out, target)


def _after_commit(out: Output, target: str, what: str, step) -> None:
    """Run a step that follows the commit: a failure is logged, never reported as a failed
    restore, because the target already holds the new, verified data."""
    try:
        step()
    except RunnerFailure as failure:
        out.log(f"restored, but {what}: {failure.message}")
    except OSError as exc:
        out.log(f"restored, but {what}: {os_error_text(exc, target)}")
    except Exception as exc:
        out.log(f"restored, but {what}: {type(exc).__name__}")


def _discard(ws: Workspace, out: Output, target: str) -> None:
    """After a failure: remove the staging folder. A failure to do so is logged, so that the
    report keeps the failure's own reason; the next run's recovery removes what is left."""
    try:
        if not ws.discard():
            out.log(f"old data that could not be put back is kept in {WORKDIR}/previous")
    except OSError as exc:
        out.log(f"the staging folder could not be removed ({os_error_text(exc, target)}); "
                "the next restore into this target removes it")


def execute_postgres(plan: Plan, progress: Progress, result: Result, out: Output) -> None:
    # Imported here: a volume restore, the common case, starts without them.
    import tempfile

    from .postgres import count_user_objects, read_database_credentials, run_pg_restore, toc_entries

    db = read_database_credentials(plan.target.credentials_dir)  # type: ignore[union-attr]
    out.redact.add(db.password)
    if plan.existing_data == "FailIfNotEmpty":
        objects = count_user_objects(db)
        if objects:
            raise RunnerFailure(
                "TargetNotEmpty",
                f"the target database holds {objects} tables, views or sequences; existingData "
                "must be Replace or Merge to restore over data",
            )
    scratch = os.environ.get("DAOFLOW_RUNNER_SCRATCH") or tempfile.gettempdir()
    # pg_restore needs the whole, verified dump before it may touch the database: the dump is
    # spooled to scratch space while it is hashed, then restored from there.
    try:
        fd, spool = tempfile.mkstemp(prefix="daoflow-dump-", suffix=".pgdump", dir=scratch)
    except OSError as exc:
        raise RunnerFailure("RestoreFailed", f"cannot create a spool file in {scratch}: {exc.strerror}") from None
    reader = None
    try:
        reader = fetch(plan, progress, out.redact)
        with os.fdopen(fd, "wb") as f:
            for chunk in reader:
                f.write(chunk)
        result.sha256, result.bytes = reader.finish()
        verify_checksum(plan.artifact, result.sha256, result.bytes)
        result.verified = True
        result.files = toc_entries(spool)
        progress.files_done = result.files
        run_pg_restore(db, plan.existing_data, spool, out.log)
        SHIELD.committed = True
    except OSError as exc:
        raise RunnerFailure("RestoreFailed", f"spooling the dump to {scratch} failed: {exc.strerror}") from None
    finally:
        try:
            if reader is not None:
                reader.stop()
            else:
                os.close(fd)
        finally:
            os.unlink(spool)


def execute(plan: Plan, progress: Progress, result: Result, out: Output) -> None:
    progress.bytes_total = plan.artifact.size_bytes
    if isinstance(plan.target, PostgresTarget):
        execute_postgres(plan, progress, result, out)
    else:
        execute_volume(plan, progress, result, out)


def record(report: dict, path: str, out: Output) -> None:
    """Record: the report into the termination-message file, and as the last stdout line."""
    text = render_report(report, out.redact)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        out.log(f"cannot write the report to {path}: {exc.strerror}")
    out.json_line(json.dumps({"result": json.loads(text)}, separators=(",", ":"), ensure_ascii=False))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m daoflow_operator.runner",
        description="Fetch, verify and restore one backup artifact (the restore Job's program).",
        epilog="exit codes: " + ", ".join(f"{code} {reason}" for reason, (code, _) in FAILURES.items()),
    )
    parser.add_argument("--plan", default=os.environ.get("DAOFLOW_RUNNER_PLAN", DEFAULT_PLAN),
                        help="the plan JSON file (env DAOFLOW_RUNNER_PLAN)")
    parser.add_argument("--report", default=os.environ.get("DAOFLOW_TERMINATION_LOG", DEFAULT_REPORT),
                        help="where the final report goes (env DAOFLOW_TERMINATION_LOG)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, stdout=None, stderr=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    redact = Redactor()
    out = Output(redact, stdout, stderr)
    progress = Progress()
    try:
        interval = float(os.environ.get("DAOFLOW_PROGRESS_INTERVAL_SECONDS", "5"))
    except ValueError:
        interval = 5.0
    ticker = Ticker(progress, max(interval, 0.05), out)
    ticker.start()
    signals = Signals()
    SHIELD.committed = SHIELD.pending = False
    signals.install()
    result = Result()
    reason = message = None
    try:
        try:
            plan = load_plan(args.plan)
            execute(plan, progress, result, out)
        finally:
            signals.armed = False
    except RunnerFailure as failure:
        reason, message = failure.reason, failure.message
    except OSError as exc:  # a file operation outside the unpacker's and workspace's handling
        reason = "RestoreFailed"
        message = exc.strerror or type(exc).__name__
        if isinstance(exc.filename, (str, bytes)):
            message += f": {members.show(os.fsdecode(exc.filename), 300)}"
        out.log_traceback(exc)
    except Exception as exc:
        reason, message = "RestoreFailed", f"unexpected error: {type(exc).__name__}: {exc}"
        out.log_traceback(exc)
    ticker.stop()
    signals.uninstall()
    if reason:
        out.log(f"{reason}: {message}")
    report = build_report(
        bytes_=result.bytes, files=result.files, sha256=result.sha256, verified=result.verified,
        duration_seconds=time.monotonic() - started, reason=reason, message=message,
    )
    record(report, args.report, out)
    return exit_code(reason) if reason else 0
