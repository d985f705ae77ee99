"""Progress of a running restore: the runner's lines parsed, status.progress at most once per interval,
never 100% before success, and the Stalled condition that comes and goes."""

import json
from datetime import datetime, timedelta, timezone

from daoflow_operator import progress, status
from daoflow_operator.progress import Sample
from daoflow_operator.status import Observation, decide

from objects import allowed, free, restore, run, s3_destination, still
from test_cancel_decisions import ended_pod, running_job

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
SIZE = 1000


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def running(size: int = SIZE) -> dict:
    r = restore()
    d = decide(r, Observation(run=run(size=size), destination=s3_destination(), target=free(), authorization=allowed(),
                              still_authorized=still()), T0)
    r = {**r, "status": d.status}
    d = decide(r, Observation(job=running_job()), T0 + timedelta(seconds=1))
    assert d.status["phase"] == "Running"
    return {**r, "status": d.status}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(r: dict, seconds: float, sample: Sample | None, **kw) -> tuple[dict, status.Decision]:
    d = decide(r, Observation(job=running_job(), progress=sample), at(seconds), progress_interval=10,
               stall_after=60, **kw)
    return {**r, "status": d.status}, d


def line(done: int, files: int = 0, total: int = SIZE) -> str:
    return json.dumps({"progress": {"bytesDone": done, "bytesTotal": total, "filesDone": files}})


def test_the_last_well_formed_progress_line_counts():
    log = "\n".join([line(10, 1), "daoflow-runner: a log line", line(20, 2), '{"progress": {"bytesDone": -1}}',
                     '{"progress": {"bytesDone": "9", "filesDone": 1}}', "{not json", ""])
    assert progress.last_sample(log) == Sample(20, 2)
    assert progress.last_sample(None) is None and progress.last_sample("nothing here") is None
    assert progress.last_sample(json.dumps({"progress": {"bytesDone": True, "filesDone": 1}})) is None
    assert progress.last_sample(line(1 << 63)) is None  # absurd values are ignored, not clamped


def test_progress_is_written_when_it_advanced_at_most_once_per_interval():
    r = running()
    r, d = step(r, 5, Sample(100, 3))
    p = r["status"]["progress"]
    assert (p["bytesDone"], p["bytesTotal"], p["filesDone"], p["percent"]) == (100, SIZE, 3, 10)
    assert p["lastProgressTime"] == "2026-11-27T12:00:05Z"
    assert p["throughputBytesPerSecond"] == 20  # since the Job was created, 5 s before
    assert p["etaSeconds"] == 45
    # Within the interval: nothing is written, and the next look is when a write is due.
    r2, d = step(r, 9, Sample(300, 5))
    assert not status.changed(r["status"], r2["status"]) and d.events == []
    assert d.requeue_after == 6
    # Once the interval has passed, it is.
    r3, d = step(r2, 15, Sample(300, 5))
    p = r3["status"]["progress"]
    assert (p["bytesDone"], p["percent"], p["throughputBytesPerSecond"], p["etaSeconds"]) == (300, 30, 20, 35)
    # Nothing moved: no write, however long after.
    r4, d = step(r3, 40, Sample(300, 5))
    assert not status.changed(r3["status"], r4["status"])


def test_it_never_shows_100_percent_before_the_restore_succeeded():
    r = running()
    r, _ = step(r, 5, Sample(SIZE, 7))
    assert r["status"]["progress"]["percent"] == 99 and r["status"]["phase"] == "Running"
    r, _ = step(r, 20, Sample(SIZE * 5, 8))  # more than the plan's size: held to it
    assert r["status"]["progress"]["bytesDone"] == SIZE and r["status"]["progress"]["percent"] == 99
    done = {"metadata": {"name": "r1-restore", "uid": "job-uid"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}
    d = decide(r, Observation(job=done, pods=[ended_pod(None, 0)], report=ended_pod(None, 0)["status"][
        "containerStatuses"][0]["state"]["terminated"]["message"]), at(30))
    assert d.status["phase"] == "Succeeded"
    assert d.status["progress"]["percent"] == 100 and d.status["progress"]["filesDone"] == 3
    assert "etaSeconds" not in d.status["progress"]
    assert cond(d.status, status.PROGRESSING)["reason"] == progress.ENDED


def test_a_restore_without_progress_is_stalled_with_a_warning_and_resumes():
    r = running()
    r, d = step(r, 5, Sample(100, 1))
    assert cond(r["status"], status.PROGRESSING)["status"] == "True"
    # The next look is no later than the stall threshold.
    r, d = step(r, 40, Sample(100, 1))
    assert d.requeue_after == 10 and not d.events
    r, d = step(r, 66, Sample(100, 1))
    c = cond(r["status"], status.PROGRESSING)
    assert (c["status"], c["reason"]) == ("False", progress.STALLED)
    assert "2026-11-27T12:00:05Z" in c["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", progress.STALLED)]
    assert r["status"]["phase"] == "Running"  # it fails only at its deadline
    # Still stalled: nothing new is written or posted.
    r2, d = step(r, 90, Sample(100, 1))
    assert not status.changed(r["status"], r2["status"]) and d.events == []
    # Progress resumes: the condition clears, with an event, and lastTransitionTime moves.
    r3, d = step(r2, 95, Sample(500, 2))
    c = cond(r3["status"], status.PROGRESSING)
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("True", progress.ADVANCING, "2026-11-27T12:01:35Z")
    assert [(e.type, e.reason) for e in d.events] == [("Normal", progress.RESUMED)]
    assert r3["status"]["progress"]["bytesDone"] == 500


def test_a_runner_that_never_reports_stalls_from_its_start():
    r = running()
    r, d = step(r, 70, None)
    assert cond(r["status"], status.PROGRESSING)["reason"] == progress.STALLED
    assert "progress" not in r["status"]


def test_a_write_is_due_only_once_the_interval_has_passed():
    assert progress.due({}, T0, 10)
    st = {"progress": {"bytesDone": 1, "lastProgressTime": "2026-11-27T12:00:00Z"}}
    assert not progress.due(st, at(9.5), 10) and progress.due(st, at(10), 10)
