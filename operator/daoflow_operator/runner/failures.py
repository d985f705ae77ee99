"""Failure kinds of the runner: one reason, one exit code, one table.

The operator reads `reason` from the report, never the exit code; the codes exist so that a
person reading `kubectl get pods` or a shell script can tell the kinds apart too.
"""

from __future__ import annotations

import contextlib

# reason -> (exit code, what it means). docs/runner.md carries the same table.
FAILURES: dict[str, tuple[int, str]] = {
    "InvalidPlan": (2, "the plan file is missing, unreadable or invalid"),
    "FetchFailed": (3, "the artifact could not be read from the destination"),
    "ChecksumMismatch": (4, "the artifact's sha256 or size differs from the pinned one"),
    "UnsafeArchive": (5, "a member would escape the target or is of a refused kind, or data "
                         "follows the end-of-archive marker"),
    "TargetNotEmpty": (6, "existingData is FailIfNotEmpty and the target holds data"),
    "LimitExceeded": (7, "the archive has more members or bytes than the limits allow"),
    "RestoreFailed": (8, "writing into the target or pg_restore failed"),
    "CorruptArchive": (9, "the artifact matched its checksum but cannot be decoded"),
    "Interrupted": (10, "the runner was stopped by a signal; the target was rolled back"),
    "ContentMismatch": (11, "the archive matched its checksum, but its members or their bytes differ from "
                            "the BackupRun's recorded counts"),
    "EndpointNotAllowed": (12, "the S3 endpoint resolves to a link-local or cloud metadata address, or "
                               "outside the allowed networks; nothing was sent to it"),
}

EXIT_SUCCESS = 0


def exit_code(reason: str) -> int:
    """The exit code for a reason; unknown reasons count as RestoreFailed."""
    return FAILURES.get(reason, FAILURES["RestoreFailed"])[0]


class RunnerFailure(Exception):
    """A failure with a known reason. `message` is one short sentence for people."""

    def __init__(self, reason: str, message: str):
        if reason not in FAILURES:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message


def invalid_plan(message: str) -> RunnerFailure:
    return RunnerFailure("InvalidPlan", message)


def fetch_failed(message: str) -> RunnerFailure:
    return RunnerFailure("FetchFailed", message)


def endpoint_not_allowed(message: str) -> RunnerFailure:
    return RunnerFailure("EndpointNotAllowed", message)


def unsafe(message: str) -> RunnerFailure:
    return RunnerFailure("UnsafeArchive", message)


def corrupt(message: str) -> RunnerFailure:
    return RunnerFailure("CorruptArchive", message)


def limit_exceeded(message: str) -> RunnerFailure:
    return RunnerFailure("LimitExceeded", message)


def restore_failed(message: str) -> RunnerFailure:
    return RunnerFailure("RestoreFailed", message)


class _Shield:
    depth = 0
    pending = False
    # Set once the restore is committed: from then on a signal changes nothing, and the report
    # must say what happened (success), not "Interrupted".
    committed = False


SHIELD = _Shield()


@contextlib.contextmanager
def shielded(raise_after: bool = False):
    """While inside, SIGTERM/SIGINT do not interrupt: a commit or a rollback runs to its end.

    A signal that arrived meanwhile is raised on the way out only if `raise_after` (work that
    may still be abandoned); after a commit it is dropped, since the restore has happened.
    """
    SHIELD.depth += 1
    try:
        yield
    finally:
        SHIELD.depth -= 1
    if raise_after and SHIELD.depth == 0 and SHIELD.pending:
        SHIELD.pending = False
        raise RunnerFailure("Interrupted", "stopped by a signal; nothing was committed")
