"""Record: the progress lines and the final report. Pure functions plus a redactor.

The report goes to the termination-message file, which the kubelet cuts at 4096 bytes; the
operator copies it into `status.result`. Its fields are camelCase, as in the API.
"""

from __future__ import annotations

import json
from typing import Any

MAX_REPORT_BYTES = 4096
MAX_MESSAGE_CHARS = 1000
MASK = "***"


# The one escaping function, shared with the CLI.
from ..escaping import escape  # noqa: E402,F401


class Redactor:
    """Replaces every known secret value in text that leaves the process."""

    MIN_LENGTH = 4  # shorter values would mask ordinary words and digits

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: str) -> None:
        for value in values:
            if value and len(value) >= self.MIN_LENGTH:
                self._secrets.add(value)

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def progress_line(bytes_done: int, bytes_total: int, files_done: int) -> str:
    return json.dumps(
        {"progress": {"bytesDone": bytes_done, "bytesTotal": bytes_total, "filesDone": files_done}},
        separators=(",", ":"),
    )


def build_report(
    *,
    bytes_: int,
    files: int,
    sha256: str,
    verified: bool,
    duration_seconds: float,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "bytes": bytes_,
        "files": files,
        "sha256": sha256,
        "verified": verified,
        "durationSeconds": round(duration_seconds, 3),
    }
    if reason:
        report["reason"] = reason
        report["message"] = escape(message or reason)[:MAX_MESSAGE_CHARS]
    return report


def render_report(report: dict[str, Any], redact: Redactor | None = None) -> str:
    """The report as one JSON line, redacted, and always under the kubelet's limit."""
    report = dict(report)
    if "message" in report:
        message = redact(report["message"]) if redact is not None else report["message"]
        report["message"] = escape(message)
    text = json.dumps(report, separators=(",", ":"), ensure_ascii=False)
    while len(text.encode("utf-8")) >= MAX_REPORT_BYTES and report.get("message"):
        report["message"] = report["message"][: max(0, len(report["message"]) // 2 - 3)] + "..."
        text = json.dumps(report, separators=(",", ":"), ensure_ascii=False)
    return text
