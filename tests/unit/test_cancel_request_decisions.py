"""`daoflow backup restore cancel`: the annotation takes the path of a deletion, keeps the record, names
the canceller, and ends the restore Cancelled; a finished restore is never touched."""

from datetime import timedelta

from daoflow_operator import cli, status
from daoflow_operator.status import Observation, decide

from objects import allowed, free, pod, restore, run, s3_destination, still
from test_cancel_decisions import T0, ended_pod, running_job, running_restore


def requested(obj: dict, by: str | None = "carol") -> dict:
    annotations = {**(obj["metadata"].get("annotations") or {}), status.CANCEL_REQUESTED: "true"}
    if by:
        annotations[status.CANCEL_REQUESTED_BY] = by
    return {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}


def cond(st, ctype):
    return status.get_condition(st, ctype) or {}


def test_a_requested_cancel_stops_the_job_and_names_the_canceller():
    r = requested(running_restore())
    assert status.cancelling(r) and not status.deleting(r)
    d = decide(r, Observation(job=running_job(), pods=[pod(phase="Running", running=True)]), T0 + timedelta(seconds=5))
    assert d.cancel_job and not status.is_final(d.status)
    ready = cond(d.status, "Ready")
    assert ready["reason"] == status.CANCELLING and ready["message"].startswith("cancellation was requested by carol")
    assert "carol" in d.status["auditTrail"][-1]["message"]
    assert [e.reason for e in d.events] == [status.CANCELLING]


def test_a_requested_cancel_whose_runner_rolled_back_ends_cancelled_with_the_canceller_on_record():
    r = requested(running_restore())
    r = {**r, "status": decide(r, Observation(job=running_job(), pods=[]), T0).status}
    ended = ended_pod("Interrupted", 10)
    d = decide(r, Observation(job=running_job(deleting=True), pods=[ended],
                              report=ended["status"]["containerStatuses"][0]["state"]["terminated"]["message"]),
               T0 + timedelta(seconds=9))
    st = d.status
    assert st["phase"] == "Cancelled" and st["completionTime"]
    assert "cancellation was requested by carol" in cond(st, "Succeeded")["message"]
    assert "rolled the target back" in cond(st, "Succeeded")["message"]
    assert [e.reason for e in d.events] == [status.CANCELLED]
    record = status.final_record(r, st)
    assert (record["phase"], record["deleted"], record["cancelRequestedBy"]) == ("Cancelled", False, "carol")


def test_a_waiting_restore_with_a_cancel_request_ends_without_a_job():
    r = requested(restore())
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(),
                              still_authorized=still()), T0)
    assert not d.create_job and d.status["phase"] == "Cancelled"
    assert cond(d.status, "Ready")["message"] == ("cancellation was requested by carol before its Job was created; "
                                                  "nothing was written to the target")


def test_a_request_without_a_recorded_canceller_says_so():
    assert status.cancel_cause(requested(restore(), by=None)) == "cancellation was requested by an unknown user"


def test_a_finished_restore_is_never_changed_by_a_cancel_request():
    r = running_restore()
    ended = ended_pod(None, 0)
    done = decide(r, Observation(job={**running_job(), "status": {"conditions": [{"type": "Complete", "status": "True"}]}},
                                 pods=[ended], report=ended["status"]["containerStatuses"][0]["state"]["terminated"]["message"]),
                  T0 + timedelta(seconds=9))
    assert done.status["phase"] == "Succeeded"
    r = requested({**r, "status": done.status})
    again = decide(r, Observation(job=running_job()), T0 + timedelta(seconds=20))
    assert again.status == done.status and not again.cancel_job and again.events == []


def test_the_cli_refuses_to_cancel_a_finished_restore_before_asking_the_api(monkeypatch, capsys):
    finished = {"metadata": {"name": "r1", "namespace": "ns"},
                "status": {"phase": "Succeeded", "completionTime": "2026-11-27T12:00:00Z"}}
    monkeypatch.setattr(cli, "_client", lambda args: object())
    monkeypatch.setattr(cli, "_custom", lambda *a: finished)
    assert cli.main(["backup", "restore", "cancel", "r1", "-n", "ns"]) == cli.EXIT_REFUSED
    assert "BackupRestore r1 has already ended (Succeeded): there is nothing to cancel" in capsys.readouterr().err


def test_the_restore_command_still_needs_a_backup_run(capsys):
    assert cli.main(["backup", "restore", "--dry-run"]) == cli.EXIT_USAGE
    assert "--backup-run-id is required" in capsys.readouterr().err
