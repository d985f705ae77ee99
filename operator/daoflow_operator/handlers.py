"""The kopf shell: events in, pure decisions, API writes out.

kopf watches BackupRestores, their Jobs, BackupRuns and RestoreApprovals, and each event only
puts the affected restore's key on a work queue (an approval's key also on a queue of its own, whose
pass shows the approval's expiry and phase). One reconcile per key at a time then reads
the world, asks `status.decide()` what follows, and writes it:

    event -> queue -> reconcile: read restore, BackupRun, destination, target claim and who
                                 holds the target (its Lease), or the Job and (until its runner
                                 runs, or once it ended) its pods
                                 -> planning.plan / status.decide (pure)
                                 -> once, before the Job: may the requester still restore the
                                    BackupRun, and restore into the target? May the approval's
                                    decider still approve it? (SubjectAccessReviews), then
                                    status.decide again
                                 -> claim the approval (a conditional write; Conflict = read again)
                                 -> take the target's Lease (AlreadyExists = read again)
                                 -> create the Job (AlreadyExists = adopt)
                                 -> patch status, only if it changed
                                 -> post the events of the transition
                                 -> delete the Job whose pod cannot start
                                 -> let go of the target of a restore that ended
                                 -> log the final record as one JSON line (its event is the outcome's)
                                 -> remove the finalizer once the restore ended and its Job cannot write

A real restore holds the operator's finalizer (status.FINALIZER) from its first pass until it
has ended and its Job can no longer write: deleting it cancels it (the Job is deleted in the
foreground, its runner gets SIGTERM and rolls back), and the record stays until the pod ended.

Handlers are event handlers, not kopf's create/update handlers, so kopf itself writes
nothing to the objects: no progress annotations, no last-handled state. All state
lives in the restore's status, and everything can be rebuilt from the world.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable

import kopf

from . import access, approvals, election, jobs, logs, planning, pods, progress, status as status_, targets
from .api import models
from .config import Config
from .kube import Conflict, JobRefused, Kube, api_client_from_env
from .metrics import METRICS

log = logging.getLogger("daoflow_operator")
# The final record of each restore, one JSON object a line, bare (see startup), for log pipelines.
record_log = logging.getLogger("daoflow_operator.record")

Key = tuple[str, str]  # (namespace, name) of a BackupRestore


@logs.own_context
def reconcile(kube: Kube, config: Config, namespace: str, name: str,
              now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
              reports: dict | None = None) -> status_.Decision | None:
    """One level-based pass over one restore. Returns the decision, or None when there was nothing to do.

    On Conflict (the restore changed since it was read) the caller runs it again. `reports`: the
    runner's reports seen on pod events, {(namespace, name): (restore uid, termination message)}:
    the pod of a cancelled Job may be gone before a pass reads it.
    """
    restore = kube.get_restore(namespace, name)
    if restore is None:
        return None
    logs.bind(logs.about(restore))  # this thread's log lines name the restore
    deleting = status_.cancelling(restore)  # deleted, or asked to be cancelled: the same path
    if status_.is_final(restore.get("status")):
        # A Job whose pod could not start is deleted right after the final status is written;
        # should the operator have died in between, this pass (an event of that Job, or a
        # restart) finishes it. Any other final restore costs no request at all.
        if (lingering := status_.job_to_delete(restore.get("status"))) is not None:
            job = kube.get_job(namespace, lingering)
            if job is not None and _owned(job, restore):
                kube.delete_job(namespace, lingering, job["metadata"]["uid"])
        if status_.has_finalizer(restore) and not let_go(kube, restore, restore["status"]):
            return status_.Decision(status=restore["status"], requeue_after=config.pod_start_poll_seconds)
        return None
    current = restore.get("status") or {}
    observed = status_.Observation()
    destination = None
    if deleting and not current.get("jobRef"):
        # Deleted before its Job was recorded: released, whatever else the world holds. Only a pass
        # that died between creating the Job and recording it may have left one: then it is cancelled.
        if not (restore.get("spec") or {}).get("dryRun"):
            job = kube.get_job(namespace, jobs.job_name(name))
            if job is not None and _owned(job, restore):
                observed.job, observed.pods = job, kube.job_pods(namespace, job)
                observed.report = pods.termination_message(observed.pods)
    elif not current.get("jobRef"):
        spec = models.BackupRestoreSpec.model_validate(restore.get("spec") or {})
        observed.run = kube.get_run(namespace, spec.backup_run_ref.name)
        dest_name = ((observed.run or {}).get("spec") or {}).get("destinationRef", {}).get("name")
        if dest_name:
            destination = observed.destination = kube.get_destination(namespace, dest_name)
        claim = planning.target_claim_name(spec, observed.run)
        if claim and observed.run is not None:
            observed.target_claim = kube.get_claim(namespace, claim)
        succeeded = ((observed.run or {}).get("status") or {}).get("phase") == "Succeeded"
        target_key = targets.key(planning.planned_target(spec, observed.run).dump())
        if not spec.dry_run and succeeded and target_key:
            observed.target = observe_target(kube, restore, target_key)
        if not spec.dry_run and spec.approval_ref is not None:
            observed.approval = kube.get_approval(namespace, spec.approval_ref.name)
    else:
        job = kube.get_job(namespace, current["jobRef"]["name"])
        owned = job is not None and _owned(job, restore)
        ended = owned and status_.job_ended(job) is not None
        if not owned or (job["metadata"].get("deletionTimestamp") and not ended and not deleting):
            observed.job_missing = True
        else:
            observed.job = job
            running = (status_.get_condition(current, status_.STARTED) or {}).get("reason") == status_.JOB_RUNNING
            # The pods are read until the runner is seen running (to tell Queued from Running and
            # to catch a pod that cannot start) and once the Job ended or is cancelled (for the
            # runner's report); not while it runs. A ready Job does not spare the read: its ready count
            # includes pods it adopted. Only its own pods count; others that carry its labels are
            # named (pods.judge).
            if ended or deleting or not running:
                observed.pods, observed.untrusted_pods = pods.judge(kube.job_pods(namespace, job), job)
                if ended or deleting:
                    observed.report = pods.termination_message(observed.pods)
                elif (pod_uid := pods.events_needed(observed.pods, job)) is not None:
                    observed.pod_events = kube.pod_events(namespace, pod_uid)
            elif progress.due(current, now(), config.progress_interval_seconds):
                # While it runs, the tail of its runner's log, once per interval (progress.py).
                observed.progress = read_progress(kube, namespace, job)
        seen = (reports or {}).get((namespace, name))
        if deleting and observed.report is None and seen and seen[0] == restore["metadata"]["uid"]:
            observed.report = seen[1]

    at = now()
    decision = status_.decide(restore, observed, at, unschedulable_timeout=config.unschedulable_timeout_seconds,
                              poll_interval=config.pod_start_poll_seconds, **progress_settings(config))
    if decision.review is not None or decision.recheck is not None or decision.approver is not None:
        # Once, right before the Job would be created (or a dry run's plan is done): may the
        # requester (still) restore the BackupRun, and into the target? May the approval's decider still
        # approve it? Then decide again, with the answers.
        observed.still_authorized, observed.authorization = authorize(kube, restore, decision.recheck,
                                                                      decision.review)
        if decision.approver is not None:
            observed.approver_authorized = authorize_approver(kube, observed.approval, decision.approver)
        decision = status_.decide(restore, observed, at, unschedulable_timeout=config.unschedulable_timeout_seconds,
                                  poll_interval=config.pod_start_poll_seconds, **progress_settings(config))
    if status_.needs_finalizer(restore, decision.status):
        # Before the Lease and the Job: a Job never exists without it.
        written = kube.set_finalizer(restore, status_.FINALIZER, True)
        if written is None:
            return None
        restore["metadata"] = written["metadata"]
    if decision.claim_approval is not None:
        # Before the target and the Job: of two restores racing for one approval, the conditional write
        # lets one through; the other gets Conflict, reads again and finds the approval used.
        kube.claim_approval(namespace, *decision.claim_approval)
    if decision.acquire is not None and decision.acquire.state != "ours":
        # Before the Job: a Job exists only while its restore holds the target. A crash right after
        # this leaves the Lease with this restore, and the next pass finds it "ours".
        kube.take_lease(targets.build_lease(restore, decision.acquire, now()))
    if decision.create_job:
        try:
            kube.create_job(jobs.build_job(restore, decision.status["plan"], destination, config))
        except JobRefused as refused:
            # For good (a 4xx, a quota, a name taken): decide again with the refusal, a final status.
            observed.job_refused = (refused.reason, refused.message)
            decision = status_.decide(restore, observed, at, unschedulable_timeout=config.unschedulable_timeout_seconds,
                                      poll_interval=config.pod_start_poll_seconds, **progress_settings(config))
    logs.bind(logs.about(restore, decision.status))
    if status_.changed(current, decision.status):
        written = kube.patch_status(namespace, name, status_.status_patch(current, decision.status),
                                    restore["metadata"]["resourceVersion"])
        restore["metadata"]["resourceVersion"] = (written or {}).get("metadata", {}).get(
            "resourceVersion", restore["metadata"]["resourceVersion"])
        if current.get("phase") != decision.status.get("phase"):
            ready = status_.get_condition(decision.status, status_.READY) or {}
            log.info("%s/%s: %s -> %s (%s: %s)", namespace, name, current.get("phase") or "new",
                     decision.status.get("phase"), ready.get("reason"), ready.get("message"))
    ended_now = status_.is_final(decision.status) and not status_.is_final(current)
    if ended_now:
        # Once, on the transition to the end, next to the transition's own event that tells the outcome:
        # the record outlives the object in the logs.
        record_log.info(json.dumps(status_.final_record(restore, decision.status), separators=(",", ":")))
        METRICS.finished(restore, decision.status)
    for event in decision.events:
        kube.post_event(restore, event.type, event.reason, event.message)
    if decision.cancel_job:
        # Foreground: the Job stays until its pod has ended its grace period (the rollback).
        kube.delete_job(namespace, observed.job["metadata"]["name"], observed.job["metadata"]["uid"],
                        propagation="Foreground")
    if decision.delete_job:
        # After the status: a crash before this line leaves a final record, and the pass above deletes.
        kube.delete_job(namespace, observed.job["metadata"]["name"], observed.job["metadata"]["uid"])
    if decision.release_target:
        # After the final status: should the operator die before this, the restores that wait take
        # the Lease over from the ended holder.
        kube.release_lease(namespace, targets.lease_name(decision.release_target), restore["metadata"]["uid"])
    if ended_now and status_.has_finalizer(restore) and not let_go(kube, restore, decision.status, observed):
        decision.requeue_after = config.pod_start_poll_seconds
    return decision


def progress_settings(config: Config) -> dict:
    return {"progress_interval": config.progress_interval_seconds, "stall_after": config.stall_timeout_seconds}


def read_progress(kube: Kube, namespace: str, job: dict) -> progress.Sample | None:
    """The last progress line of the runner of the Job's own running pod (pods.judge), or None."""
    own, _ = pods.judge(kube.job_pods(namespace, job), job)
    running = [p for p in own if status_.pod_active(p) and pods.has_started(p)]
    if not running:
        return None
    pod = max(running, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return progress.last_sample(kube.runner_log(namespace, pod["metadata"]["name"], tail_lines=progress.TAIL_LINES,
                                                limit_bytes=progress.MAX_LOG_BYTES))


def let_go(kube: Kube, restore: dict, status: dict, observed: status_.Observation | None = None) -> bool:
    """Removes the finalizer of a restore that ended, once its Job can no longer write into the
    target (gone, ended, or its pod ended). False while it still may: a Job event wakes it again.

    `observed`: what this pass read of the Job and its pods, which spares reading them again.
    """
    namespace = restore["metadata"]["namespace"]
    if (ref := status.get("jobRef")) and not status_.job_to_delete(status):  # whose pod never started
        if observed is not None and observed.job_missing:
            job, job_pods = None, None
        elif observed is not None and observed.job is not None and (
                status_.job_ended(observed.job) or observed.pods is not None):
            job, job_pods = observed.job, observed.pods
        else:
            job = kube.get_job(namespace, ref["name"])
            if job is not None and not _owned(job, restore):
                job = None
            job_pods = kube.job_pods(namespace, job) if job is not None and not status_.job_ended(job) else None
        if not status_.job_over(job, job_pods):
            return False
    kube.set_finalizer(restore, status_.FINALIZER, False)
    return True
def reconcile_approval(kube: Kube, namespace: str, name: str,
                       now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> float | None:
    """Shows an approval's expiry, when its decision was seen and its phase (Expired once it expired
    unused). Returns when to look again: at its expiry."""
    approval = kube.get_approval(namespace, name)
    if approval is None:
        return None
    patch, again = approvals.status_patch(approval, now())
    if patch:
        kube.patch_approval_status(namespace, name, {"metadata": {"resourceVersion":
                                                                  approval["metadata"]["resourceVersion"]},
                                                     "status": patch})
    return again


def authorize(kube: Kube, restore: dict, recheck: access.Review | None, question: access.Review | None
              ) -> tuple[planning.Authorization | None, planning.Authorization | None]:
    """The requester's rights on the BackupRun (asked again at dispatch) and on the target: a
    SubjectAccessReview each, if the requester is the API server's word."""
    problem = access.untrusted(restore, kube.requester_policies())
    if problem is not None:
        # Nobody to check: the target's check refuses it (TargetNotAuthorized), the re-check stays open.
        return (recheck and planning.Authorization("unknown", f"not asked: {problem}"),
                question and access.nobody(question, problem))
    return (recheck and access.judge_recheck(recheck, kube.review_access(recheck)),
            question and access.judge(question, kube.review_access(question)))


def authorize_approver(kube: Kube, approval: dict, question: access.Review) -> planning.Authorization:
    """The decider's `approve`, asked again (a SubjectAccessReview), if the decider is the API server's word."""
    problem = access.untrusted(approval, kube.policies(access.DECISION_POLICIES), access.DECISION_POLICIES,
                               "status.decidedBy", "manifests/approvals.yaml")
    if problem is not None:
        return planning.Authorization("fail", f"the decider of RestoreApproval {question.name} is unknown: {problem}")
    return access.judge_approver(question, kube.review_access(question))


def observe_target(kube: Kube, restore: dict, target_key: str) -> targets.Holder:
    """Who holds the target: its Lease, the restore named in it, and (when no live restore holds
    it) the pods still labelled with it."""
    namespace = restore["metadata"]["namespace"]
    lease = kube.get_lease(namespace, targets.lease_name(target_key))
    holder_name = targets.holder_to_read(lease, restore)
    holder = kube.get_restore(namespace, holder_name) if holder_name else None
    judged = targets.judge(target_key, restore, lease, holder)
    if judged.state in ("free", "stale"):
        pods_on_target = kube.target_pods(namespace, targets.target_hash(target_key))
        judged = targets.judge(target_key, restore, lease, holder, pods_on_target)
        if judged.pod_running and _version(kube.get_lease(namespace, targets.lease_name(target_key))) != _version(lease):
            # The pod is that of a restore which took the target between the two reads (another
            # worker, or another replica): not one that ended. Read everything again.
            raise Conflict(f"the target {target_key} was taken while it was read")
    return judged


def _version(obj: dict | None) -> str | None:
    return (obj or {}).get("metadata", {}).get("resourceVersion")


def _owned(job: dict, restore: dict) -> bool:
    return any(ref.get("uid") == restore["metadata"]["uid"] for ref in job["metadata"].get("ownerReferences") or [])


@dataclass
class WorkQueue:
    """A keyed work queue: a key is never processed twice at once, and re-adds are coalesced.

    `process(key)` returns a delay after which to look again, or None. A pass that fails (an API
    error that `kube.py`'s own retries did not get past, no answer) is tried again after a delay
    that doubles per key, from `backoff_min` to `backoff_max`, and starts over once a pass of that
    key succeeds; the traceback is logged on the first failure only.
    """

    process: Callable[[Key], Awaitable[float | None]]
    workers: int = 4
    # When set (leader election), a pass starts only while the event is set: keys wait in the queue.
    gate: asyncio.Event | None = None
    backoff_min: float = 5.0
    backoff_max: float = 300.0
    _failures: dict = field(default_factory=dict)
    _pending: set = field(default_factory=set)
    _active: set = field(default_factory=set)
    _dirty: set = field(default_factory=set)
    _timers: dict = field(default_factory=dict)
    _queue: asyncio.Queue | None = None
    _added: dict = field(default_factory=dict)  # when each pending key was put on the queue (metrics)

    def add(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            old = self._timers.pop(key, None)
            if old:
                old.cancel()
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self.add, key)
            return
        if key in self._active:
            self._dirty.add(key)  # processed again right after the current pass
        elif key not in self._pending:
            self._pending.add(key)
            self._added[key] = time.monotonic()
            METRICS.queue_depth.set(len(self._pending))
            self._ensure_queue().put_nowait(key)

    def _ensure_queue(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        queue = self._ensure_queue()
        while True:
            key = await queue.get()
            if self.gate is not None and not self.gate.is_set():
                await self.gate.wait()  # the key stays pending, so re-adds still coalesce
            self._pending.discard(key)
            METRICS.queue_depth.set(len(self._pending))
            METRICS.queue_latency.observe(time.monotonic() - self._added.pop(key, time.monotonic()))
            self._active.add(key)
            began = time.monotonic()
            try:
                delay = await self.process(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad object must not stop the operator
                delay = self.failure_delay(key)
                METRICS.queue_retries.inc()
                if self._failures[key] == 1:
                    log.exception("reconciling %s/%s failed; retrying in %.0fs", *key, delay)
                else:
                    log.warning("reconciling %s/%s failed again (%s: %s); retrying in %.0fs", *key,
                                exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "", delay)
            finally:
                self._active.discard(key)
                METRICS.queue_work.observe(time.monotonic() - began)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay:
                self.add(key, delay)

    def failure_delay(self, key: Key) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return min(self.backoff_min * (2 ** failures), self.backoff_max)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()

    async def drain(self, timeout: float) -> bool:
        """Waits until no pass is running (new ones are held by a cleared gate); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._active and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self._active


class Operator:
    """What the handlers share: the API client, the config, the queue and the wait backoffs."""

    def __init__(self, kube: Kube, config: Config):
        self.kube = kube
        self.config = config
        self.queue = WorkQueue(self.process)
        self.approvals = WorkQueue(self.process_approval, workers=1)
        self.waits: dict[Key, int] = {}
        # The runner's report of a cancelled restore, as a pod event showed it: (restore uid, message).
        self.reports: dict[Key, tuple[str, str]] = {}

    def wait_delay(self, key: Key) -> float:
        attempt = self.waits.get(key, 0)
        self.waits[key] = attempt + 1
        return min(self.config.wait_backoff_min * (2 ** attempt), self.config.wait_backoff_max)

    async def process_approval(self, key: Key) -> float | None:
        try:
            return await asyncio.to_thread(reconcile_approval, self.kube, *key)
        except Conflict:
            return 1.0  # changed since it was read: look again

    async def process(self, key: Key) -> float | None:
        logs.bind({"namespace": key[0], "name": key[1]})  # until a reconcile knows more
        for _ in range(5):
            try:
                decision = await asyncio.to_thread(reconcile, self.kube, self.config, *key, reports=self.reports)
            except Conflict:
                log.info("%s/%s changed while it was reconciled; reading it again", *key)
                continue
            if decision is None or status_.is_final(decision.status):
                self.reports.pop(key, None)
            METRICS.observe(key, decision.status if decision is not None else None)
            if decision is not None and decision.wait is not None:
                # The backoff, but never past the wait deadline (requeue_after), which sends no event.
                return min(self.wait_delay(key), decision.requeue_after or float("inf"))
            self.waits.pop(key, None)
            return decision.requeue_after if decision is not None else None
        return 1.0


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    settings.peering.standalone = True
    # Events are posted by the operator itself, one per transition, with specific reasons.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Only the operator's own Jobs are streamed, filtered by the API server.
    settings.watching.label_selectors["batch", "jobs"] = f"app.kubernetes.io/managed-by={jobs.MANAGED_BY}"
    # And only their pods (for the report of a cancelled restore, see pod_event).
    settings.watching.label_selectors["pods"] = f"app.kubernetes.io/managed-by={jobs.MANAGED_BY}"
    # The CRDs are installed before the operator starts, so it need not watch CRDs or
    # namespaces appear: least privilege, no RBAC for either.
    settings.scanning.disabled = True
    # One line per transition comes from this module; kopf's per-event lines are noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if not record_log.handlers:
        # Bare JSON on stdout, without the log format's prefix, so that a pipeline can parse the line.
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        record_log.addHandler(handler)
        record_log.setLevel(logging.INFO)
        record_log.propagate = False
    if getattr(memo, "operator", None) is None:  # tests may bring their own API client
        memo.operator = Operator(Kube(api_client_from_env()), Config.from_env())
    config = memo.operator.config
    if config.leader_election_lease:
        # Only the Lease's holder reconciles; a standby's queue fills from its watches and waits.
        logging.getLogger("leaderelection").setLevel(logging.WARNING)  # a line per retry otherwise
        memo.elector = election.Elector(
            memo.operator.kube.client, config.leader_election_namespace, config.leader_election_lease,
            election.Timing(config.lease_duration_seconds, config.renew_deadline_seconds, config.retry_period_seconds),
            on_lost=lambda: os.kill(os.getpid(), signal.SIGTERM))
        memo.operator.queue.gate = memo.operator.approvals.gate = memo.elector.leading
        memo.elector.start()
    memo.worker = asyncio.create_task(memo.operator.queue.run())
    memo.approval_worker = asyncio.create_task(memo.operator.approvals.run())
    if memo.operator.config.metrics_port and not getattr(METRICS, "served", False):
        METRICS.serve(memo.operator.config.metrics_port)
        METRICS.served = True
        logger.info("metrics on port %d (/metrics)", memo.operator.config.metrics_port)
    logger.info("daoflow-operator started; runner image %s", memo.operator.config.runner_image)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    if not getattr(memo, "worker", None):
        return
    queues = (memo.operator.queue, memo.operator.approvals)
    for queue in queues:
        queue.stop()
    elector = getattr(memo, "elector", None)
    if elector is not None:
        # Start no new pass, let the ones in flight finish, then hand the Lease over at once.
        elector.leading.clear()
        for queue in queues:
            if not await queue.drain(memo.operator.config.shutdown_grace_seconds):
                log.warning("a pass is still running after %.0fs; releasing the Lease anyway",
                            memo.operator.config.shutdown_grace_seconds)
    memo.worker.cancel()
    memo.approval_worker.cancel()
    if elector is not None:
        await asyncio.to_thread(elector.release)


@kopf.index(models.GROUP, models.VERSION, "backuprestores")
def restores_by_run(namespace, name, spec, status, **_):
    """Unfinished restores by the BackupRun they wait for, so a BackupRun event wakes them."""
    if status_.is_final(status):
        return None
    return {(namespace, (spec.get("backupRunRef") or {}).get("name")): name}


@kopf.index(models.GROUP, models.VERSION, "backuprestores")
def restores_by_target(namespace, name, status, **_):
    """Restores queued behind a busy target, by target, so the end of the one that holds it wakes them."""
    if status_.is_final(status) or (status_.get_condition(status or {}, status_.READY) or {}).get("reason") \
            != status_.TARGET_BUSY:
        return None
    target_key = targets.key(((status or {}).get("plan") or {}).get("target"))
    return {(namespace, target_key): name} if target_key else None


@kopf.index(models.GROUP, models.VERSION, "backuprestores")
def restores_being_deleted(namespace, name, uid, meta, status, **_):
    """Restores being deleted or cancelled, by uid (their pods' label), so their pods' events reach them."""
    cancelled = status_.CANCEL_REQUESTED in (meta.get("annotations") or {}) and not status_.is_final(status)
    return {(namespace, uid): name} if meta.get("deletionTimestamp") or cancelled else None


@kopf.index(models.GROUP, models.VERSION, "backuprestores")
def restores_by_approval(namespace, name, spec, status, **_):
    """Unfinished restores by the RestoreApproval they name, so a decision wakes them."""
    approval = (spec.get("approvalRef") or {}).get("name")
    if status_.is_final(status) or not approval:
        return None
    return {(namespace, approval): name}


@kopf.on.event(models.GROUP, models.VERSION, "restoreapprovals")
async def approval_event(event, namespace, name, restores_by_approval: kopf.Index, memo: kopf.Memo, **_) -> None:
    for restore in restores_by_approval.get((namespace, name), []):
        memo.operator.queue.add((namespace, restore))
    if event.get("type") != "DELETED":
        memo.operator.approvals.add((namespace, name))


@kopf.on.event(models.GROUP, models.VERSION, "backuprestores")
async def restore_event(event, namespace, name, status, restores_by_target: kopf.Index, memo: kopf.Memo,
                        meta=None, **_) -> None:
    if event.get("type") == "DELETED" or status_.is_final(status):
        # A restore that ended, or was deleted, frees its target: wake the restores queued behind it.
        target_key = targets.key(((status or {}).get("plan") or {}).get("target"))
        for waiting in restores_by_target.get((namespace, target_key), []) if target_key else []:
            memo.operator.queue.add((namespace, waiting))
        if event.get("type") != "DELETED" and status_.FINALIZER in ((meta or {}).get("finalizers") or []):
            # Ended, but its finalizer was not removed yet (a restart in between): let go of it.
            memo.operator.queue.add((namespace, name))
        return
    memo.operator.queue.add((namespace, name))


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": jobs.MANAGED_BY})
async def job_event(namespace, meta, memo: kopf.Memo, **_) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "BackupRestore" and ref.get("apiVersion", "").startswith(models.GROUP + "/"):
            memo.operator.queue.add((namespace, ref["name"]))


@kopf.on.event(models.GROUP, models.VERSION, "backupruns")
async def run_event(namespace, name, restores_by_run: kopf.Index, memo: kopf.Memo, **_) -> None:
    for restore in restores_by_run.get((namespace, name), []):
        memo.operator.queue.add((namespace, restore))


async def _own_pod(kube: Kube, namespace: str, pod: dict) -> bool:
    owner = next((r for r in (pod.get("metadata") or {}).get("ownerReferences") or []
                  if r.get("controller") and r.get("kind") == "Job"), None)
    if owner is None:
        return False
    job = await asyncio.to_thread(kube.get_job, namespace, owner["name"])
    return job is not None and bool(pods.judge([pod], job)[0])


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": jobs.MANAGED_BY})
async def pod_event(namespace, labels, body, restores_being_deleted: kopf.Index, memo: kopf.Memo, **_) -> None:
    """The pod of a cancelled restore: its runner's report is kept the moment the pod shows it,
    since the pod is removed right after it ended."""
    uid = labels.get(jobs.LABEL_RESTORE_UID)
    for name in restores_being_deleted.get((namespace, uid), []):
        report = pods.termination_message([dict(body)])
        if report is not None and not await _own_pod(memo.operator.kube, namespace, dict(body)):
            # Labels are anyone's to set: only the Job's own pod may report (pods.judge). Its Job
            # still exists here, since the Job is deleted in the foreground, after its pods.
            report = None
        if report is not None and memo.operator.reports.get((namespace, name)) != (uid, report):
            memo.operator.reports[(namespace, name)] = (uid, report)
            log.info("%s/%s: the runner's report kept from the event of pod %s", namespace, name,
                     (body.get("metadata") or {}).get("name"))
        memo.operator.queue.add((namespace, name))
