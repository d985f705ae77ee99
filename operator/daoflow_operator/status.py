"""Status transitions, as pure functions: what was observed in, the next status out.

Queue, Execute, Verify and Record are decided here. `decide()` takes the restore's
current status and what the shell observed (the BackupRun, its destination, the target
claim, who holds the target, whether the requester may restore into it, the Job, its pods and
their events, and the runner's report) and returns the next status, the target to take or let go
of, the Job to create or delete if any, and the events to post; or, before a Job, the question
to ask the API server first (`review`). It never reads a clock
or the network: `now` is passed in.

Rules that hold by construction:
- A condition's lastTransitionTime changes only when its status changes.
- An event and an audit entry are produced only by a transition, so a repeated
  observation produces neither, and `changed()` lets the shell skip the write.
- Once completionTime is set, the record has reached its end and `decide()` returns
  it untouched.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import access, approvals, planning, pods as pods_, progress as progress_, targets
from .api import models

AUDIT_LIMIT = 64
# Written at admission by the MutatingAdmissionPolicy in manifests/scopes.yaml.
REQUESTED_BY = access.REQUESTED_BY

# Condition types.
VALIDATED = "Validated"
STARTED = "Started"
ARTIFACT_VERIFIED = "ArtifactVerified"
SUCCEEDED = "Succeeded"
READY = "Ready"
APPROVED = "Approved"  # only on a restore with spec.approvalRef
PROGRESSING = progress_.PROGRESSING

# Reasons the operator itself gives (planning.py has those of validation).
JOB_CREATED = "JobCreated"
JOB_RUNNING = "JobRunning"
JOB_DELETED = "JobDeleted"
JOB_FAILED = "JobFailed"
RESTORE_SUCCEEDED = "RestoreSucceeded"
# Deleting a restore cancels it: its Job is deleted, its runner stops and rolls back what it has not committed.
CANCELLING = "Cancelling"
CANCELLED = "Cancelled"
INTERRUPTED = "Interrupted"  # the runner's report after a signal: it rolled the target back
# The operator's own finalizer: a restore that may have a Job is not removed before its Job has ended.
FINALIZER = "backup.daoflow.dev/cancel-on-delete"
# `daoflow backup restore cancel` sets CANCEL_REQUESTED; the API server records who did in CANCEL_REQUESTED_BY
# (the policies daoflow-record-canceller and daoflow-cancel-requires-scope in manifests/scopes.yaml). It
# takes the path of a deletion, without removing the record.
CANCEL_REQUESTED = "backup.daoflow.dev/cancel-requested"
CANCEL_REQUESTED_BY = "backup.daoflow.dev/cancel-requested-by"
REPORT_MISSING = "ReportMissing"
TARGET_BUSY = targets.TARGET_BUSY
REQUESTER_NO_LONGER_AUTHORIZED = "RequesterNoLongerAuthorized"
WAIT_DEADLINE_EXCEEDED = "WaitDeadlineExceeded"


@dataclass
class Observation:
    """What the shell read from the cluster for one decision."""

    run: dict | None = None
    destination: dict | None = None
    job: dict | None = None
    job_missing: bool = False  # True when the Job named in status.jobRef was looked up and is gone
    report: str | None = None  # the runner's termination message, when its pod has ended
    # The target PersistentVolumeClaim (metadata and status), read before the Job exists: None when it
    # does not exist, planning.Unreadable when it could not be read or was not read.
    target_claim: dict | planning.Unreadable | None = planning.NOT_READ
    pods: list[dict] | None = None  # the Job's pods, read while its runner has not started (None: not read)
    pod_events: list[dict] = field(default_factory=list)  # events about the newest pod, when they may tell more
    # Who holds the target, read before the Job exists for a real restore whose BackupRun succeeded
    # (None: not read).
    target: targets.Holder | None = None
    # Whether the requester may restore into the target, asked once when the Decision says `review`
    # (None: not asked).
    authorization: planning.Authorization | None = None
    # Whether the requester may still restore the BackupRun, asked with `authorization` on the pass that
    # would create a real restore's Job (None: not asked).
    still_authorized: planning.Authorization | None = None
    # The API server refused the Job for good, or its name is taken: (reason, message), from the
    # create the previous decision asked for (None: not refused).
    job_refused: tuple[str, str] | None = None
    # Pods that carry the Job's labels but are not its own (pods.judge): never counted, only named.
    untrusted_pods: list[pods_.Untrusted] = field(default_factory=list)
    # The RestoreApproval of spec.approvalRef, read before the Job exists (None: it does not exist).
    approval: dict | None = None
    # Whether its decider may still approve it, asked with `authorization` when the Decision says
    # `approver` (None: not asked).
    approver_authorized: planning.Authorization | None = None
    # The runner's last progress line, read from its log while it runs and a progress write is due
    # (None: not read, or no line yet).
    progress: progress_.Sample | None = None


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    create_job: bool = False
    events: list[Event] = field(default_factory=list)
    wait: planning.Verdict | None = None  # waiting for the BackupRun or for the target: retry with backoff
    acquire: targets.Holder | None = None  # take the target (unless already ours) before the Job is created
    release_target: str | None = None  # the restore ended: let go of this target, if it still holds it
    delete_job: bool = False  # the Job's pod cannot start: delete the Job (after the status is written)
    cancel_job: bool = False  # the restore is being deleted: delete its Job, letting the pod end gracefully
    requeue_after: float | None = None  # the pod has not started: look again after this many seconds
    # Ask the API server whether the requester may restore into the target, then decide again with
    # the answer in Observation.authorization. Nothing else of this decision is to be carried out.
    review: access.Review | None = None
    # Likewise, on the same pass: may the requester still restore the BackupRun? (Observation.still_authorized)
    recheck: access.Review | None = None
    # And may the approval's decider still approve it? (Observation.approver_authorized)
    approver: access.Review | None = None
    # Mark the approval used by this restore, before the target is taken and the Job created:
    # (approval name, conditional status patch). A conflict means another restore was quicker.
    claim_approval: tuple[str, dict] | None = None


def fmt_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_deadline(restore: dict, now: datetime) -> datetime:
    """When waiting without a Job ends: creationTimestamp + spec.waitTimeoutSeconds, so it is fixed at
    creation and the same after a restart; the recorded one (or now + the timeout) without a timestamp."""
    seconds = models.BackupRestoreSpec.model_validate(restore.get("spec") or {}).wait_timeout_seconds
    created = access.parse_time((restore.get("metadata") or {}).get("creationTimestamp"))
    if created is not None:
        return created + timedelta(seconds=seconds)
    recorded = access.parse_time((restore.get("status") or {}).get("waitDeadlineTime"))
    return recorded or now.replace(microsecond=0) + timedelta(seconds=seconds)


def is_final(status: dict | None) -> bool:
    return bool((status or {}).get("completionTime"))


def deleting(restore: dict) -> bool:
    return bool((restore.get("metadata") or {}).get("deletionTimestamp"))


def cancel_requested(restore: dict) -> bool:
    return CANCEL_REQUESTED in ((restore.get("metadata") or {}).get("annotations") or {})


def cancelling(restore: dict) -> bool:
    """Deleted, or asked to be cancelled: either way its Job is stopped and it ends Cancelled."""
    return deleting(restore) or cancel_requested(restore)


def cancel_cause(restore: dict) -> str:
    """Why the restore is cancelled, for its messages: deletion wins over a request."""
    if deleting(restore):
        return "the BackupRestore was deleted"
    who = ((restore.get("metadata") or {}).get("annotations") or {}).get(CANCEL_REQUESTED_BY)
    return f"cancellation was requested by {who or 'an unknown user'}"


def has_finalizer(restore: dict) -> bool:
    return FINALIZER in ((restore.get("metadata") or {}).get("finalizers") or [])


def needs_finalizer(restore: dict, status: dict) -> bool:
    """A real restore that is not over holds the finalizer before its Job can exist, so that deleting
    it cancels the Job instead of erasing the record while the runner writes. A dry run never has one."""
    spec = restore.get("spec") or {}
    return not spec.get("dryRun") and not is_final(status) and not deleting(restore) and not has_finalizer(restore)


def pod_active(pod: dict) -> bool:
    """The pod may still run the runner: not Succeeded or Failed, and its runner has not terminated."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not ((pods_.runner_status(pod).get("state") or {}).get("terminated"))


def job_over(job: dict | None, pods: list[dict] | None) -> bool:
    """The Job can no longer write into the target: gone, ended, or none of its pods may still run."""
    if job is None or job_ended(job):
        return True
    return pods is not None and not any(pod_active(p) for p in pods)


def final_record(restore: dict, status: dict) -> dict[str, Any]:
    """The record of a restore that reached its end, as one flat object with a stable schema: logged
    as one JSON line, so a log pipeline keeps it after the object is deleted."""
    meta = restore.get("metadata") or {}
    spec = restore.get("spec") or {}
    result = status.get("result") or {}
    plan = status.get("plan") or {}
    ready = get_condition(status, READY) or {}
    succeeded = get_condition(status, SUCCEEDED) or {}
    reason = succeeded.get("reason") or ready.get("reason")
    message = succeeded.get("message") or ready.get("message")
    return {
        "record": "daoflow.backuprestore/v1", "kind": "BackupRestore", "namespace": meta.get("namespace"),
        "name": meta.get("name"), "uid": meta.get("uid"),
        "backupRun": (spec.get("backupRunRef") or {}).get("name"), "dryRun": bool(spec.get("dryRun")),
        "phase": status.get("phase"), "reason": reason, "message": message,
        "requestedBy": status.get("requestedBy"), "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime"), "deleted": deleting(restore),
        "cancelRequestedBy": ((meta.get("annotations") or {}).get(CANCEL_REQUESTED_BY)
                              if cancel_requested(restore) else None),
        "verified": result.get("verified"), "bytes": result.get("bytes"), "files": result.get("files"),
        "sha256": result.get("sha256") or (plan.get("artifact") or {}).get("sha256"),
        "planHash": plan.get("planHash"), "target": plan.get("target"),
        "job": (status.get("jobRef") or {}).get("name"),
    }


def get_condition(status: dict, ctype: str) -> dict | None:
    return next((c for c in status.get("conditions", []) if c.get("type") == ctype), None)


def set_condition(status: dict, ctype: str, value: str, reason: str, message: str,
                  generation: int | None, now: datetime) -> bool:
    """Sets a condition in place (cert-manager semantics). Returns True when its status flipped."""
    conditions = status.setdefault("conditions", [])
    old = get_condition(status, ctype)
    new = {"type": ctype, "status": value, "reason": reason, "message": message[:32768],
           "lastTransitionTime": fmt_time(now), "observedGeneration": generation}
    if old is None:
        conditions.append(new)
        return True
    flipped = old.get("status") != value
    if not flipped:
        new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
    old.clear()
    old.update(new)
    return flipped


def derive_phase(status: dict) -> str:
    """The one-word phase shown to humans; derived from conditions, never branched on."""
    def cond(t: str) -> dict:
        return get_condition(status, t) or {}

    succeeded, validated, started = cond(SUCCEEDED), cond(VALIDATED), cond(STARTED)
    if succeeded.get("status") == "True":
        return "Succeeded"
    if succeeded.get("status") == "False" and succeeded.get("reason") == CANCELLED:
        return "Cancelled"
    if succeeded.get("status") == "False":
        return "Failed"
    if validated.get("status") == "False" and status.get("completionTime"):
        return "Rejected"
    if cond(READY).get("reason") == "Planned":
        return "Planned"
    if cond(READY).get("reason") in (approvals.AWAITING_APPROVAL, approvals.APPROVAL_NOT_FOUND):
        return "AwaitingApproval"
    if started.get("status") == "True":
        return "Running" if started.get("reason") == JOB_RUNNING else "Queued"
    if cond(READY).get("reason") == TARGET_BUSY:
        return "Queued"  # behind the restore that holds the target
    return "Pending"


def audit(status: dict, now: datetime, step: str, outcome: str, message: str) -> None:
    trail = status.setdefault("auditTrail", [])
    trail.append({"time": fmt_time(now), "step": step, "outcome": outcome, "message": message[:1024]})
    if len(trail) > AUDIT_LIMIT:
        # Keep the first entries (how it began) and the latest ones (how it ended).
        del trail[8:len(trail) - AUDIT_LIMIT + 8]


def changed(old: dict | None, new: dict) -> bool:
    return bool(status_patch(old, new))


def status_patch(old: dict | None, new: dict) -> dict:
    """A JSON merge patch from old to new status; top-level keys only, None deletes."""
    old = old or {}
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def parse_report(text: str | None) -> dict | None:
    """The runner's JSON report from a termination message; None when absent or not JSON."""
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    try:
        return models.RestoreResult.model_validate(report).dump()
    except ValueError:
        return None


def _job_condition(job: dict, ctype: str) -> dict | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("type") == ctype and c.get("status") == "True"), None)


def job_ended(job: dict) -> str | None:
    """'complete' or 'failed' once the Job has ended, from its conditions; else None."""
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return "complete"
    if _job_condition(job, "Failed") or _job_condition(job, "FailureTarget"):
        return "failed"
    return None


def job_outcome(job: dict, pods: list[dict] | None = None) -> str:
    """'complete', 'failed', 'running' or 'queued'.

    Running means the runner really runs: the Job counts a ready pod, or a pod's runner container
    is (or was) running. An active Job whose pod is still Pending is only queued.
    """
    ended = job_ended(job)
    if ended:
        return ended
    # The Job's ready count includes pods it adopted; once its pods were read and judged, only its own count.
    if (pods is None and (job.get("status") or {}).get("ready")) or any(pods_.has_started(p) for p in pods or []):
        return "running"
    return "queued"


def job_to_delete(status: dict | None) -> str | None:
    """The Job of a final restore that failed because its pod could not start, which must not linger.

    The shell deletes such a Job right after writing the final status; if it crashed in between,
    a later pass over the final restore (any event of its Job, or a restart) deletes it then.
    """
    status = status or {}
    if not is_final(status) or not status.get("jobRef"):
        return None
    if (get_condition(status, SUCCEEDED) or {}).get("reason") not in pods_.START_FAILURES:
        return None
    return status["jobRef"]["name"]


UNTRUSTED_NOTED = 8  # pods named in the audit trail at the most: a flood of forged pods cannot fill it
UNTRUSTED_MARK = " carries the labels of Job "


def note_untrusted(status: dict, untrusted: list[pods_.Untrusted], job: str, now: datetime,
                   events: list[Event]) -> bool:
    """Names each untrusted pod once (an audit entry and a Warning event); True when any is on record."""
    noted = [a.get("message", "") for a in status.get("auditTrail", []) if UNTRUSTED_MARK in a.get("message", "")]
    for pod in untrusted:
        if len(noted) >= UNTRUSTED_NOTED or any(f"(uid {pod.uid})" in m for m in noted):
            continue
        message = f"pod {pod.name} (uid {pod.uid}){UNTRUSTED_MARK}{job} but is not its own: {pod.why}; it is ignored"
        audit(status, now, "execute", "rejected", message)
        events.append(Event("Warning", pods_.UNTRUSTED_POD, message))
        noted.append(message)
    return bool(noted or untrusted)


FOLLOW_UP = {
    "volume": "Restart the workloads that mount PersistentVolumeClaim {claim} so that they read the restored data.",
    "postgres": "Check that the application's schema migrations match the restored database, then restart it.",
}


def follow_progress(status: dict, sample: progress_.Sample | None, now: datetime, generation: int | None,
                    events: list[Event], interval: float, stall_after: float) -> float:
    """Progress of a running restore into status (at most one write per `interval`), and the Progressing
    condition: False/Stalled after `stall_after` seconds without progress, True again when it resumes.
    Returns how soon to look again."""
    since = (get_condition(status, STARTED) or {}).get("lastTransitionTime")
    total = ((status.get("plan") or {}).get("artifact") or {}).get("sizeBytes")
    progress_.advance(status, sample, total, since, now, interval, fmt_time)
    idle = progress_.idle_seconds(status, since, now) or 0.0
    old = dict(get_condition(status, PROGRESSING) or {})  # set_condition changes it in place
    if idle >= stall_after:
        last = (status.get("progress") or {}).get("lastProgressTime") or since
        message = (f"no progress since {last} ({stall_after:g} s or more); the restore goes on and fails only "
                   "at its deadline")
        if set_condition(status, PROGRESSING, "False", progress_.STALLED, message, generation, now):
            audit(status, now, "execute", "waiting", message)
            events.append(Event("Warning", progress_.STALLED, message))
    elif old.get("status") != "True":
        set_condition(status, PROGRESSING, "True", progress_.ADVANCING, "the runner reports progress",
                      generation, now)
        if old.get("reason") == progress_.STALLED:
            message = f"progress resumed: {(status.get('progress') or {}).get('bytesDone', 0)} bytes restored"
            audit(status, now, "execute", "ok", message)
            events.append(Event("Normal", progress_.RESUMED, message))
    age = progress_.idle_seconds(status, None, now)
    next_write = interval - age if age is not None and age < interval else interval
    return max(1.0, min(next_write, stall_after - idle if idle < stall_after else interval))


def decide(restore: dict, observed: Observation, now: datetime, *, unschedulable_timeout: float = 300.0,
           poll_interval: float = 5.0, progress_interval: float = 10.0, stall_after: float = 300.0) -> Decision:
    """The next status of a BackupRestore, given what was observed. Pure.

    `unschedulable_timeout`: how long a pod may stay unschedulable before the restore fails;
    `poll_interval`: how soon to look again at a Job whose pod has not started; `progress_interval`:
    the least time between two progress writes; `stall_after`: seconds without progress before the
    restore is marked Stalled.
    """
    old = restore.get("status") or {}
    if is_final(old):
        return Decision(status=old)
    status = copy.deepcopy(old)
    generation = (restore.get("metadata") or {}).get("generation")
    namespace = (restore.get("metadata") or {}).get("namespace", "")
    spec = models.BackupRestoreSpec.model_validate(restore.get("spec") or {})
    events: list[Event] = []
    decision = Decision(status=status, events=events)

    def finish() -> None:
        status["completionTime"] = fmt_time(now)
        if get_condition(status, PROGRESSING):
            set_condition(status, PROGRESSING, "False", progress_.ENDED, "the restore has ended", generation, now)
        # A real restore holds its target from just before its Job is created: let go of it.
        held = old.get("jobRef") or (observed.target is not None and observed.target.state == "ours")
        if not spec.dry_run and held:
            decision.release_target = targets.key((status.get("plan") or {}).get("target"))

    requester = access.requester(restore)
    if requester and not status.get("requestedBy"):
        status["requestedBy"] = requester.user
    by = f" requested by {status['requestedBy']}" if status.get("requestedBy") else ""
    cancel = cancelling(restore)
    cause = cancel_cause(restore) if cancel else ""

    if cancel and not status.get("jobRef") and observed.job is not None:
        # Its Job was created by a pass that died before recording it: followed (and cancelled) below.
        status["jobRef"] = {"name": observed.job["metadata"]["name"]}
    if cancel and not status.get("jobRef"):
        # Deleted before its Job was created: released, final; no Job is ever created for it.
        message = f"{cause} before its Job was created; nothing was written to the target"
        for ctype in (SUCCEEDED, READY):
            set_condition(status, ctype, "False", CANCELLED, message, generation, now)
        audit(status, now, "record", "failed", message)
        events.append(Event("Warning", CANCELLED, message))
        status["completionTime"] = fmt_time(now)
        if not spec.dry_run:
            # It may have taken its target's Lease in a pass that ended before the Job was created.
            decision.release_target = targets.key((status.get("plan") or {}).get("target"))
        status["observedGeneration"] = generation
        status["phase"] = derive_phase(status)
        return decision

    def reject(reason: str, message: str, step: str) -> Decision:
        for ctype in (VALIDATED, STARTED, READY):
            set_condition(status, ctype, "False", reason, message, generation, now)
        audit(status, now, step, "rejected", message)
        events.append(Event("Warning", reason, message))
        finish()
        status["observedGeneration"] = generation
        status["phase"] = derive_phase(status)
        return decision

    if not status.get("jobRef"):
        # Waiting ends at a deadline fixed at creation: a restore never runs long after it was asked for.
        deadline = wait_deadline(restore, now)
        status["waitDeadlineTime"] = fmt_time(deadline)
        left = (deadline - now).total_seconds()

        def expired(waited_for: str, step: str) -> Decision:
            return reject(WAIT_DEADLINE_EXCEEDED, f"no Job was created by the wait deadline {fmt_time(deadline)} "
                          f"({spec.wait_timeout_seconds} s after creation, spec.waitTimeoutSeconds); it waited for: "
                          f"{waited_for}", step)

        # May the requester restore into the target? Asked once, when nothing else stands in the way;
        # until then the check says so, unchanged, and without a recorded requester it fails.
        question = access.review(namespace, planning.planned_target(spec, observed.run).dump(), requester)
        authorization = observed.authorization
        if authorization is None and question is not None:
            authorization = access.not_asked(question) if requester else access.unknown_requester(question)
        ask = observed.authorization is None and question is not None and requester is not None
        # And, for a real restore, may the requester still restore the BackupRun? Admission checked it
        # at creation; it is asked again on the same pass, as the Job is dispatched.
        again = access.recheck(namespace, spec.backup_run_ref.name, requester) \
            if requester is not None and not spec.dry_run else None
        ask_again = again is not None and observed.still_authorized is None
        result = planning.plan(namespace, spec, observed.run, observed.destination, observed.target_claim,
                               authorization)
        verdict = result.verdict
        status["plan"] = result.plan.dump()
        if not spec.dry_run and observed.still_authorized is not None and observed.still_authorized.status == "fail":
            # Before the target's answer: a requester who lost the scope may restore nothing at all.
            return reject(REQUESTER_NO_LONGER_AUTHORIZED, observed.still_authorized.detail, "queue")
        if verdict.outcome == "wait" and left <= 0:
            return expired(verdict.message, "validate")
        if verdict.outcome == "wait":
            decision.requeue_after = max(left, 1.0)  # the deadline sends no event: look again then at the latest
            if set_condition(status, VALIDATED, "False", verdict.reason, verdict.message, generation, now) \
                    or (get_condition(old, VALIDATED) or {}).get("reason") != verdict.reason:
                audit(status, now, "validate", "waiting", verdict.message)
                events.append(Event("Warning", verdict.reason, verdict.message + "; retrying with backoff"))
            set_condition(status, READY, "False", verdict.reason, verdict.message, generation, now)
            decision.wait = verdict
        elif verdict.outcome == "reject" and not (spec.dry_run and verdict.reason == planning.TARGET_NOT_AUTHORIZED):
            drifted = verdict.reason == planning.PLAN_DRIFTED
            set_condition(status, VALIDATED, "True" if drifted else "False", verdict.reason, verdict.message,
                          generation, now)
            if drifted:
                set_condition(status, SUCCEEDED, "False", verdict.reason, verdict.message, generation, now)
            set_condition(status, READY, "False", verdict.reason, verdict.message, generation, now)
            audit(status, now, "validate", "rejected" if not drifted else "failed", verdict.message)
            events.append(Event("Warning", verdict.reason, verdict.message))
            finish()
        elif spec.dry_run:
            if ask:
                return Decision(status=old, review=question)
            # A preview is for the user who asked: one who may not restore into the target still gets
            # the plan, Planned, with the failed check and isReady false (TargetNotAuthorized is for real restores).
            digest = result.plan.plan_hash[:12]
            refused = f"; a real restore would be refused: {verdict.message}" if verdict.outcome == "reject" else ""
            validated = planning.ready_message(spec.backup_run_ref.name)
            set_condition(status, VALIDATED, "True", "Validated", validated, generation, now)
            set_condition(status, READY, "True", "Planned",
                          f"plan {digest} {'computed' if refused else 'is ready'}; no Job was created (dry run)"
                          + refused, generation, now)
            audit(status, now, "validate", "ok", validated)
            audit(status, now, "preview", "ok", f"plan {digest} computed{by}; dry run, nothing queued{refused}")
            events.append(Event("Normal", "Planned", f"dry run: plan {digest} written to status"
                                + (f"; a real restore would be refused ({verdict.reason})" if refused else "")))
            finish()
        else:
            from .jobs import job_name  # the Job's fixed name is part of the record

            target = observed.target
            if target is None:
                raise ValueError("a real restore needs its target's holder observed before its Job is created")
            if left <= 0:
                waited = target.message if target.state == "busy" else \
                    f"{(get_condition(old, READY) or {}).get('message') or verdict.message} (ready only after the deadline)"
                return expired(waited, "queue")
            if (get_condition(old, VALIDATED) or {}).get("status") != "True":
                audit(status, now, "validate", "ok", verdict.message)
                events.append(Event("Normal", "Validated", verdict.message))
            set_condition(status, VALIDATED, "True", "Validated", verdict.message, generation, now)
            gate = None
            if spec.approval_ref is not None:
                gate = approvals.judge(observed.approval, spec.approval_ref.name, spec.backup_run_ref.name,
                                       result.plan.plan_hash, requester, restore["metadata"].get("uid", ""), now)
                if gate.state == "reject":
                    set_condition(status, APPROVED, "False", gate.reason, gate.message, generation, now)
                    return reject(gate.reason, gate.message, "queue")
                if gate.state == "await":
                    # Woken by the approval's events (handlers.restores_by_approval); the deadline and
                    # the expiry send none, so look again then.
                    if (get_condition(old, APPROVED) or {}).get("reason") != gate.reason:
                        audit(status, now, "queue", "waiting", f"restore request{by} recorded; {gate.message}")
                        events.append(Event("Normal" if gate.reason == approvals.AWAITING_APPROVAL else "Warning",
                                            gate.reason, gate.message))
                    set_condition(status, APPROVED, "Unknown", gate.reason, gate.message, generation, now)
                    set_condition(status, READY, "False", gate.reason, gate.message, generation, now)
                    until_expiry = (gate.expires - now).total_seconds() if gate.expires else left
                    decision.requeue_after = max(min(left, until_expiry), 1.0)
                    status["observedGeneration"] = generation
                    status["phase"] = derive_phase(status)
                    return decision
                # Approved as far as can be told without asking; the decider's right and the claim follow.
                set_condition(status, APPROVED, "True", approvals.APPROVED, gate.message, generation, now)
            if target.state == "busy":
                # Queued behind the restore that holds the target. An event and an audit entry when
                # it starts waiting, or waits for another holder; nothing when nothing changed.
                waited = get_condition(old, STARTED) or {}
                if waited.get("reason") != TARGET_BUSY or waited.get("message") != target.message:
                    audit(status, now, "queue", "waiting", f"restore request{by} recorded; {target.message}")
                    events.append(Event("Normal", TARGET_BUSY, target.message))
                set_condition(status, STARTED, "False", TARGET_BUSY, target.message, generation, now)
                set_condition(status, READY, "False", TARGET_BUSY, target.message, generation, now)
                decision.requeue_after = max(left, 1.0)
                if target.pod_running:
                    # A pod going away sends no event we watch.
                    decision.requeue_after = min(poll_interval, decision.requeue_after)
                else:
                    # The end of the holder wakes this restore (handlers.restores_by_target); the
                    # backoff is only a safety net.
                    decision.wait = planning.Verdict("wait", TARGET_BUSY, target.message)
                status["observedGeneration"] = generation
                status["phase"] = derive_phase(status)
                return decision
            approver = access.approver_recheck(namespace, spec.approval_ref.name, gate.decider) \
                if gate is not None else None
            ask_approver = approver is not None and observed.approver_authorized is None
            if ask or ask_again or ask_approver:
                # Right before the Job: then decide again with the answers.
                return Decision(status=old, review=question if ask else None, recheck=again if ask_again else None,
                                approver=approver if ask_approver else None)
            if observed.still_authorized is None or observed.still_authorized.status != "ok":
                # Unreachable while the target's check decides for an unknown requester; kept so that
                # no Job is ever created without a yes.
                return reject(REQUESTER_NO_LONGER_AUTHORIZED, (observed.still_authorized.detail if
                              observed.still_authorized else "the requester is unknown"), "queue")
            if gate is not None and observed.approver_authorized.status != "ok":
                reason = approvals.APPROVER_NO_LONGER_AUTHORIZED
                set_condition(status, APPROVED, "False", reason, observed.approver_authorized.detail, generation, now)
                return reject(reason, observed.approver_authorized.detail, "queue")
            if observed.job_refused is not None:
                # The Job can never be created as it is: Rejected, final, not a retry loop. The target
                # was taken for it in this pass: let go of it.
                reason, message = observed.job_refused
                for ctype in (VALIDATED, STARTED, READY):
                    set_condition(status, ctype, "False", reason, message, generation, now)
                audit(status, now, "queue", "rejected", message)
                events.append(Event("Warning", reason, message))
                finish()
                decision.release_target = target.key
                status["observedGeneration"] = generation
                status["phase"] = derive_phase(status)
                return decision
            if gate is not None:
                status["approvedBy"] = gate.decider.user
                audit(status, now, "queue", "ok", f"{gate.message}, decided at {gate.decided_time or 'an unrecorded time'}"
                                                  f"; {observed.approver_authorized.detail}; the approval is used by "
                                                  "this restore")
                if not gate.used_by_us:
                    decision.claim_approval = (spec.approval_ref.name,
                                               approvals.claim_patch(restore, gate.resource_version, now))
            name = job_name(restore["metadata"]["name"])
            set_condition(status, STARTED, "True", JOB_CREATED, f"Job {name} created", generation, now)
            set_condition(status, READY, "False", "Queued", f"Job {name} created; waiting for its pod to start",
                          generation, now)
            status["jobRef"] = {"name": name}
            status["startTime"] = fmt_time(now)
            audit(status, now, "queue", "ok", f"restore request{by} recorded; {observed.still_authorized.detail}; "
                                              f"{authorization.detail}; {targets.describe(target.key)} taken; "
                                              f"Job {name} created")
            events.append(Event("Normal", "Queued", f"created Job {name} for plan {result.plan.plan_hash[:12]}"))
            decision.acquire = target
            decision.create_job = True
        status["observedGeneration"] = generation
        status["phase"] = derive_phase(status)
        return decision

    # -- the Job exists (or existed): follow it to its end --------------------------------
    job_name_ = status["jobRef"]["name"]
    job = observed.job
    if observed.job_missing:
        outcome = "deleted"
    elif job is None:
        return decision  # not observed this time; nothing to conclude
    else:
        outcome = job_outcome(job, observed.pods)
    untrusted = note_untrusted(status, observed.untrusted_pods, job_name_, now, events)
    # A Job that ended with no report from its own pods, and counted a pod that is not its own, or
    # completed with none of its own pods succeeded (pods read and judged), proves nothing.
    unproven = outcome == "complete" and observed.pods is not None \
        and not any((p.get("status") or {}).get("phase") == "Succeeded" for p in observed.pods)
    if outcome in ("complete", "failed") and observed.report is None and (untrusted or unproven):
        outcome = "untrusted"
    if cancel and outcome not in ("complete", "failed", "deleted", "untrusted"):
        # Being deleted: the runner's report, read once its pod has ended, tells whether it rolled back
        # or had already committed; until then the Job is stopped and the record waits for it.
        report = parse_report(observed.report)
        outcome = "cancelling" if report is None else "failed" if report.get("reason") else "complete"
    running = (get_condition(status, STARTED) or {}).get("reason") == JOB_RUNNING
    start = None
    if outcome == "queued" and not running and observed.pods is not None:
        start = pods_.start(observed.pods, observed.pod_events, status.get("plan") or {}, now,
                            unschedulable_timeout)
        if start.state == "failed":
            outcome = "cannot-start"

    if outcome == "deleted":
        reason = JOB_DELETED
        message = f"Job {job_name_} was deleted before it finished; the restore is not retried"
        if cancel:
            reason = CANCELLED
            message = (f"{cause} and Job {job_name_} has ended, but the runner's report "
                       "could not be read: whether it rolled the target back or had committed is not known; "
                       "check the target" + ("" if running else "; its runner was not seen running"))
        set_condition(status, SUCCEEDED, "False", reason, message, generation, now)
        set_condition(status, READY, "False", reason, message, generation, now)
        audit(status, now, "execute", "failed", message)
        events.append(Event("Warning", reason, message))
        finish()
    elif outcome == "cancelling":
        if (get_condition(status, READY) or {}).get("reason") != CANCELLING:
            lead = "the BackupRestore is being deleted" if deleting(restore) else cause
            message = (f"{lead}: Job {job_name_} is deleted and its runner stopped; "
                       "it rolls back what it has not committed, and the record stays until its pod has ended")
            set_condition(status, READY, "False", CANCELLING, message, generation, now)
            audit(status, now, "execute", "waiting", message)
            events.append(Event("Warning", CANCELLING, message))
        decision.cancel_job = not (job.get("metadata") or {}).get("deletionTimestamp")
        decision.requeue_after = poll_interval  # the end of its pod may send no event of the Job
    elif outcome == "cannot-start":
        reason = start.reason
        message = f"Job {job_name_} cannot run: {start.message}"
        set_condition(status, SUCCEEDED, "False", reason, message, generation, now)
        set_condition(status, READY, "False", reason, message, generation, now)
        audit(status, now, "execute", "failed", message)
        audit(status, now, "record", "failed", f"the restore failed and is not retried; Job {job_name_} is "
                                               "deleted; the BackupRun was not changed")
        events.append(Event("Warning", reason, message))
        finish()
        decision.delete_job = True
    elif outcome == "untrusted":
        why = "it counted a pod that is not its own (see the audit trail)" if untrusted \
            else "none of them succeeded"
        message = (f"Job {job_name_} ended, but none of its own pods reported: {why}; nothing is known to have "
                   "been restored")
        set_condition(status, SUCCEEDED, "False", pods_.UNTRUSTED_REPORT, message, generation, now)
        set_condition(status, READY, "False", pods_.UNTRUSTED_REPORT, message, generation, now)
        audit(status, now, "record", "failed", message)
        events.append(Event("Warning", pods_.UNTRUSTED_REPORT, message))
        finish()
    elif outcome == "queued" and not running:
        # Honest: the Job exists, but its runner does not run yet. Say why, and look again soon,
        # since a pod that waits (or an unschedulable timeout that runs out) sends no Job event.
        waiting = start.message if start else "waiting for its pod to start"
        set_condition(status, READY, "False", "Queued", f"Job {job_name_} created; {waiting}", generation, now)
        delays = [poll_interval] + ([start.recheck_after] if start and start.recheck_after else [])
        decision.requeue_after = min(delays)
    elif outcome == "running" and not running:
        set_condition(status, STARTED, "True", JOB_RUNNING, f"Job {job_name_} is running", generation, now)
        set_condition(status, READY, "False", "Running", "fetching, verifying and restoring the artifact; "
                      f"progress: kubectl logs -n {namespace} job/{job_name_}", generation, now)
        audit(status, now, "fetch", "ok", f"Job {job_name_} started fetching the artifact")
        events.append(Event("Normal", "Fetching", f"Job {job_name_} started fetching the artifact"))
    elif outcome == "complete":
        report = parse_report(observed.report)
        if report:
            status["result"] = report
        plan = status.get("plan") or {}
        sha = (plan.get("artifact") or {}).get("sha256")
        verified = bool(report and report.get("verified") and report.get("sha256") == sha)
        if not any(e.get("step") == "fetch" for e in status.get("auditTrail", [])):
            audit(status, now, "fetch", "ok", f"Job {job_name_} fetched the artifact")
            events.append(Event("Normal", "Fetched", f"Job {job_name_} fetched the artifact"))
        if verified:
            set_condition(status, ARTIFACT_VERIFIED, "True", "ChecksumMatched", f"sha256 {sha} matched", generation, now)
            restored = f"Job {job_name_} restored {report.get('bytes')} bytes, {report.get('files')} files"
            audit(status, now, "execute", "ok", restored)
            events.append(Event("Normal", "Restored", restored))
            audit(status, now, "verify", "ok", f"sha256 {sha} matched before the data became visible")
            events.append(Event("Normal", "ChecksumVerified", f"sha256 {sha} matched before the data became visible"))
        else:
            detail = "the runner's report is missing or does not confirm the checksum"
            set_condition(status, ARTIFACT_VERIFIED, "Unknown", REPORT_MISSING, detail, generation, now)
            audit(status, now, "verify", "failed", detail)
            events.append(Event("Warning", REPORT_MISSING, f"Job {job_name_} completed, but {detail}"))
        message = f"restored from BackupRun {spec.backup_run_ref.name} by Job {job_name_}"
        if cancel:
            message += (f"; {cause} while it ran, but the runner had already committed: "
                        "the target holds the restored data")
        set_condition(status, SUCCEEDED, "True", RESTORE_SUCCEEDED, message, generation, now)
        set_condition(status, READY, "True", RESTORE_SUCCEEDED, message, generation, now)
        if "progress" in status or running:
            progress_.completed(status, (plan.get("artifact") or {}).get("sizeBytes"),
                                (report or {}).get("files"), fmt_time, now)
        target = plan.get("target") or {}
        claim = (target.get("persistentVolumeClaim") or {}).get("claimName", "")
        if target.get("type") in FOLLOW_UP:
            status["followUp"] = FOLLOW_UP[target["type"]].format(claim=claim)
        audit(status, now, "record", "ok", message + "; the BackupRun and the artifact were not changed")
        events.append(Event("Normal", "Succeeded", message))
        finish()
    elif outcome == "failed":
        report = parse_report(observed.report)
        if report:
            status["result"] = report
        cond = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget") or {}
        reason = (report or {}).get("reason") or cond.get("reason") or JOB_FAILED
        message = (report or {}).get("message") or cond.get("message") or f"Job {job_name_} failed"
        message = f"Job {job_name_} failed: {message}"
        if cancel and reason == INTERRUPTED:
            reason = CANCELLED
            message = (f"Job {job_name_} was cancelled: {cause}, and the runner stopped "
                       f"and rolled the target back ({(report or {}).get('message')})")
        # A content mismatch fails verification as a checksum mismatch does: the artifact is
        # not the one recorded, even though its bytes are.
        verify_failed = reason in ("ChecksumMismatch", "ContentMismatch")
        if verify_failed:
            set_condition(status, ARTIFACT_VERIFIED, "False", reason, message, generation, now)
        set_condition(status, SUCCEEDED, "False", reason, message, generation, now)
        set_condition(status, READY, "False", reason, message, generation, now)
        audit(status, now, "verify" if verify_failed else "execute", "failed", message)
        audit(status, now, "record", "failed", "the restore failed and is not retried; the BackupRun was not changed")
        events.append(Event("Warning", reason, message))
        finish()
    if outcome == "running" and not is_final(status):
        decision.requeue_after = follow_progress(status, observed.progress, now, generation, events,
                                                 progress_interval, stall_after)
    status["observedGeneration"] = generation
    status["phase"] = derive_phase(status)
    return decision
