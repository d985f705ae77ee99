"""Progress of a running restore, as pure functions: the runner's progress lines in, `status.progress`
and the Progressing condition out.

The runner has no API token: it prints a progress line on stdout every few seconds, and the operator
reads the tail of its pod's log (`pods/log`, read-only) while the restore runs. The operator writes
progress into status at most once every `interval` seconds per restore, and only when it advanced,
so the API load is one log read and one pod list per running restore per interval, plus one status
write when something moved. Nothing from the log is trusted beyond small integers: the total is the
plan's artifact size, and the percentage stays below 100 until the restore has succeeded (the bytes
are all fetched before they are committed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from . import access

PROGRESSING = "Progressing"  # condition type
ADVANCING = "Advancing"  # the runner reports progress
STALLED = "Stalled"  # no progress for `stall_after` seconds; the restore fails only at its deadline
RESUMED = "ProgressResumed"  # event reason when a stall ends
ENDED = "RestoreEnded"  # the restore reached its end: nothing progresses any more

MAX_LOG_BYTES = 16 << 10  # the tail read from the runner's log: a few progress lines
TAIL_LINES = 20
MAX_VALUE = 1 << 62


@dataclass(frozen=True)
class Sample:
    """The runner's last progress line."""

    bytes_done: int
    files_done: int


def last_sample(log: str | None) -> Sample | None:
    """The last well-formed progress line of the runner's log tail; None when there is none."""
    for line in reversed((log or "").splitlines()):
        line = line.strip()
        if not line.startswith('{"progress"'):
            continue
        try:
            body = json.loads(line).get("progress")
            done, files = body.get("bytesDone"), body.get("filesDone")
        except (ValueError, AttributeError):
            continue
        if all(type(v) is int and 0 <= v <= MAX_VALUE for v in (done, files)):
            return Sample(done, files)
    return None


def _seconds(since: str | None, now: datetime) -> float | None:
    start = access.parse_time(since)
    return None if start is None else (now - start).total_seconds()


def due(status: dict, now: datetime, interval: float) -> bool:
    """Whether a progress write may happen now: none yet, or the last one is `interval` old."""
    age = _seconds((status.get("progress") or {}).get("lastProgressTime"), now)
    return age is None or age >= interval


def advance(status: dict, sample: Sample | None, total: int | None, running_since: str | None, now: datetime,
            interval: float, fmt) -> bool:
    """Writes `sample` into status.progress when it advanced and a write is due. True when it did."""
    old = status.get("progress") or {}
    if sample is None or not due(status, now, interval):
        return False
    if old and (sample.bytes_done, sample.files_done) <= (old.get("bytesDone", 0), old.get("filesDone", 0)):
        return False
    done = min(sample.bytes_done, total) if total else sample.bytes_done
    # Throughput since the previous write (or since the runner started): a rate that follows the link.
    elapsed = _seconds(old.get("lastProgressTime") or running_since, now)
    delta = done - old.get("bytesDone", 0)
    throughput = int(delta / elapsed) if elapsed and elapsed > 0 else None
    progress = {"bytesDone": done, "filesDone": sample.files_done, "lastProgressTime": fmt(now)}
    if total:
        progress["bytesTotal"] = total
        # 100 only once the restore succeeded: fetched is not yet committed.
        progress["percent"] = min(99, done * 100 // total)
    if throughput is not None:
        progress["throughputBytesPerSecond"] = throughput
        if total and throughput > 0:
            progress["etaSeconds"] = int((total - done) / throughput)
    status["progress"] = progress
    return True


def idle_seconds(status: dict, running_since: str | None, now: datetime) -> float | None:
    """Seconds since the last progress (or since the runner started, before any)."""
    return _seconds((status.get("progress") or {}).get("lastProgressTime") or running_since, now)


def completed(status: dict, total: int | None, files: int | None, fmt, now: datetime) -> None:
    """The restore succeeded: the data is committed, so now progress says 100%."""
    old = status.get("progress") or {}
    done = total if total is not None else old.get("bytesDone", 0)
    status["progress"] = {**{k: v for k, v in old.items() if k != "etaSeconds"}, "bytesDone": done,
                          "filesDone": files if files is not None else old.get("filesDone", 0),
                          "percent": 100, "lastProgressTime": fmt(now)}
    if total is not None:
        status["progress"]["bytesTotal"] = total
