"""`daoflow` (also `kubectl daoflow`): the product's CLI, on Kubernetes.

    daoflow backup list
    daoflow backup restore --backup-run-id NAME --dry-run [--json]
    daoflow backup restore --backup-run-id NAME --yes [--wait] [--approval NAME]
    daoflow approval request --backup-run-id NAME [--reason TEXT] [--ttl 7h] [--json]
    daoflow approval list | show NAME [--json]
    daoflow approval approve|reject NAME [--comment TEXT]
    daoflow backup restore cancel NAME [--wait]
    daoflow backup restore status NAME [--json] [--wait]
    daoflow backup restore logs NAME

`--wait` follows a restore to its end: a live progress bar on a terminal, plain lines otherwise.

A dry run reads the BackupRun, its destination and the target claim, asks whether you may restore
into the target (a SelfSubjectAccessReview), and prints the plan computed by the same function the
operator uses; it writes nothing. A real restore creates a
BackupRestore, and the operator does the rest. An approval request creates a RestoreApproval from the
dry-run plan's template; someone else decides it (its status subresource), and the API server
refuses what it must (docs/api.md, "RestoreApproval").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from . import access, planning
from .api import models
from .escaping import escape

EXIT_OK = 0
EXIT_RESTORE_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NO_CLUSTER = 4
EXIT_FORBIDDEN = 5
EXIT_API_ERROR = 6
EXIT_APPROVAL_REJECTED = 7  # --wait: the restore's approval was rejected
EXIT_APPROVAL_EXPIRED = 8  # --wait: it expired before the restore ran
EXIT_REFUSED = 9  # the API server refused the request as it is (e.g. cancelling a restore that has ended)


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _client(args):
    import kubernetes
    import urllib3

    try:
        client = kubernetes.config.new_client_from_config(config_file=args.kubeconfig, context=args.context)
    except (kubernetes.config.ConfigException, FileNotFoundError, TypeError) as exc:
        raise CliError(f"no cluster configured: {exc}; set KUBECONFIG or pass --kubeconfig", EXIT_NO_CLUSTER)
    # One quick attempt: a CLI should fail fast when the cluster cannot be reached.
    client.configuration.retries = urllib3.Retry(total=1, connect=1, read=0, status=0)
    return client


def _namespace(args) -> str:
    if args.namespace:
        return args.namespace
    import kubernetes

    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=args.kubeconfig)
        if args.context:
            active = next((c for c in contexts if c["name"] == args.context), active)
        return (active.get("context") or {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kubeconfig: _client() reports it
        return "default"


def _api_call(call, what: str):
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(f"{what}: not found", EXIT_NOT_FOUND)
        reason = ""
        try:
            reason = json.loads(exc.body).get("message", "")
        except (TypeError, ValueError, AttributeError):
            pass
        if exc.status in (401, 403):
            raise CliError(f"{what}: forbidden: {reason or exc.reason}", EXIT_FORBIDDEN)
        if exc.status == 422:  # an admission policy or the schema said why
            raise CliError(f"{what}: refused: {reason or exc.reason}", EXIT_REFUSED)
        raise CliError(f"{what}: the API server answered {exc.status} {exc.reason}" + (f": {reason}" if reason else ""),
                       EXIT_API_ERROR)
    except (HTTPError, OSError) as exc:
        raise CliError(f"cannot reach the Kubernetes API server: {exc.__class__.__name__}", EXIT_NO_CLUSTER)


def _custom(client, namespace: str, plural: str, name: str, kind: str) -> dict:
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(client)
    try:
        return _api_call(lambda: api.get_namespaced_custom_object(models.GROUP, models.VERSION, namespace, plural, name),
                         f"{kind} {name!r} in namespace {namespace!r}")
    except CliError as exc:
        if exc.code == EXIT_NOT_FOUND:
            raise CliError(f"{kind} {name!r} not found in namespace {namespace!r}", EXIT_NOT_FOUND)
        raise


def _claim(client, namespace: str, name: str) -> dict | planning.Unreadable | None:
    """The target PersistentVolumeClaim's metadata and status; None if it does not exist.

    Without access to it (403) the check says `unknown` instead of failing the preview.
    """
    import kubernetes

    api = kubernetes.client.CoreV1Api(client)
    try:
        claim = _api_call(lambda: api.read_namespaced_persistent_volume_claim(name, namespace),
                          f"PersistentVolumeClaim {name!r} in namespace {namespace!r}")
    except CliError as exc:
        if exc.code == EXIT_NOT_FOUND:
            return None
        if exc.code == EXIT_FORBIDDEN:
            return planning.Unreadable("not checked: your credentials cannot read it ("
                                       + str(exc).split(": ", 1)[-1] + ")")
        raise
    claim = client.sanitize_for_serialization(claim)
    return {"metadata": claim.get("metadata") or {}, "status": claim.get("status") or {}}


def _create_review(client, group: str, plural: str, body: dict) -> dict:
    """POSTs a review (SelfSubjectReview, SelfSubjectAccessReview) and returns the API server's answer."""
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(client)
    response = _api_call(lambda: api.create_cluster_custom_object(group, "v1", plural, body, _preload_content=False),
                         f"creating a {body['kind']}")
    try:
        return json.loads(response.data)
    except ValueError:
        raise CliError(f"creating a {body['kind']}: the API server's answer is not JSON", EXIT_API_ERROR)


def _authorization(client, question: access.Review) -> planning.Authorization:
    """Whether you may restore into the target: the same check as the operator's, for your own user.

    Needs no rights: every authenticated user may ask about themselves. When the question fails,
    the check says `unknown` and the preview goes on.
    """
    try:
        me = _create_review(client, "authentication.k8s.io", "selfsubjectreviews",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        question = dataclasses.replace(
            question, caller=((me.get("status") or {}).get("userInfo") or {}).get("username") or "")
    except CliError:
        pass  # the check then names "you"
    try:
        answer = _create_review(client, "authorization.k8s.io", "selfsubjectaccessreviews", access.sar_body(question))
    except CliError as exc:
        return access.could_not_ask(question, str(exc))
    parsed = access.parse_answer(answer)
    if parsed is None:
        return access.could_not_ask(question, "the API server gave no answer")
    return access.judge(question, parsed)


def restore_spec(args) -> models.BackupRestoreSpec:
    target = None
    if args.target_pvc:
        target = {"persistentVolumeClaim": {"claimName": args.target_pvc}}
    elif args.target_database_secret:
        target = {"database": {"secretRef": {"name": args.target_database_secret}}}
    return models.BackupRestoreSpec.model_validate({
        "backupRunRef": {"name": args.backup_run_id},
        "dryRun": bool(args.dry_run),
        "target": target,
        "existingData": args.existing_data,
        "expectedPlanHash": args.expected_plan_hash,
        "approvalRef": {"name": args.approval} if getattr(args, "approval", None) else None,
    })


def compute_plan(client, namespace: str, spec: models.BackupRestoreSpec) -> planning.PlanResult:
    run = _custom(client, namespace, "backupruns", spec.backup_run_ref.name, "BackupRun")
    dest_name = (run.get("spec") or {}).get("destinationRef", {}).get("name")
    destination = None
    if dest_name:
        try:
            destination = _custom(client, namespace, "backupdestinations", dest_name, "BackupDestination")
        except CliError as exc:
            if exc.code != EXIT_NOT_FOUND:
                raise
    claim_name = planning.target_claim_name(spec, run)
    target_claim = _claim(client, namespace, claim_name) if claim_name else planning.NOT_READ
    question = access.review(namespace, planning.planned_target(spec, run).dump())
    authorization = _authorization(client, question) if question is not None else None
    return planning.plan(namespace, spec, run, destination, target_claim, authorization)


def print_plan(result: planning.PlanResult, out) -> None:
    p = result.plan
    art = p.artifact
    print(f"BackupRun:   {p.backup_run.name} (completed {p.backup_run.completion_time or '-'})", file=out)
    if art:
        print(f"Artifact:    {art.location or art.path} [{art.format}, {art.size_bytes} bytes]", file=out)
        print(f"sha256:      {art.sha256}", file=out)
    if p.target and p.target.type:
        where = (p.target.persistent_volume_claim.claim_name if p.target.persistent_volume_claim
                 else p.target.database.secret_ref.name if p.target.database else "-")
        print(f"Target:      {p.target.type} {where} ({p.target.existing_data})", file=out)
    print(f"Plan hash:   {p.plan_hash}", file=out)
    print(f"Ready:       {'yes' if p.is_ready else 'no'} ({escape(result.verdict.reason)}: {escape(result.verdict.message)})", file=out)
    print("Preflight checks:", file=out)
    for check in p.preflight_checks:
        print(f"  [{check.status:4}] {check.name}: {escape(check.detail)}", file=out)
    if p.steps:
        print("Steps:", file=out)
        for i, step in enumerate(p.steps, 1):
            print(f"  {i}. {step.step}: {step.description}", file=out)
    print(f"To restore:  {p.execute_command}", file=out)


def cmd_restore(args) -> int:
    if not args.backup_run_id:
        raise CliError("--backup-run-id is required", EXIT_USAGE)
    if args.dry_run and args.yes:
        raise CliError("--dry-run and --yes exclude each other", EXIT_USAGE)
    if not args.dry_run and not args.yes and not sys.stdin.isatty():
        raise CliError("refusing to restore without confirmation: pass --yes to restore, "
                       "or --dry-run to preview the plan", EXIT_USAGE)
    namespace = _namespace(args)
    spec = restore_spec(args)
    client = _client(args)
    if args.dry_run:
        result = compute_plan(client, namespace, spec)
        if args.json:
            json.dump(result.plan.dump(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print_plan(result, sys.stdout)
        # As the operator's dry run: Rejected (1) when the plan is bad; Planned (0), with the failed
        # check and isReady false, when only you may not restore into the target.
        refused = result.verdict.outcome == "reject" and result.verdict.reason != planning.TARGET_NOT_AUTHORIZED
        return EXIT_RESTORE_FAILED if refused else EXIT_OK
    if not args.yes:
        result = compute_plan(client, namespace, spec)
        print_plan(result, sys.stderr)
        answer = input(f"Restore BackupRun {spec.backup_run_ref.name} now? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not restored", file=sys.stderr)
            return EXIT_USAGE
    else:
        _custom(client, namespace, "backupruns", spec.backup_run_ref.name, "BackupRun")
    restore = create_restore(client, namespace, spec, args.name)
    name = restore["metadata"]["name"]
    print(f"backuprestore.{models.GROUP}/{name} created")
    if not args.wait:
        print(f"follow it with: kubectl get backuprestore {name} -n {namespace} -w")
        return EXIT_OK
    return wait_for(client, namespace, name, args.timeout)


def create_restore(client, namespace: str, spec: models.BackupRestoreSpec, name: str | None) -> dict:
    import kubernetes

    body: dict[str, Any] = {
        "apiVersion": models.API_VERSION, "kind": "BackupRestore",
        "metadata": {"namespace": namespace, "labels": {"backup.daoflow.dev/backup-run": spec.backup_run_ref.name[:63]}},
        "spec": spec.dump(),
    }
    if name:
        body["metadata"]["name"] = name
    else:
        body["metadata"]["generateName"] = spec.backup_run_ref.name[:200] + "-restore-"
    api = kubernetes.client.CustomObjectsApi(client)
    return _api_call(lambda: api.create_namespaced_custom_object(models.GROUP, models.VERSION, namespace,
                                                                 "backuprestores", body),
                     "creating the BackupRestore")


APPROVAL_EXITS = {"ApprovalRejected": EXIT_APPROVAL_REJECTED, "ApprovalExpired": EXIT_APPROVAL_EXPIRED}


def describe_progress(progress: dict) -> str:
    """One line for status.progress: bytes, percent, files, throughput, ETA."""
    done, total = progress.get("bytesDone", 0), progress.get("bytesTotal")
    text = f"{done}/{total} bytes" if total else f"{done} bytes"
    if progress.get("percent") is not None:
        text += f" ({progress['percent']}%)"
    text += f", {progress.get('filesDone', 0)} files"
    if progress.get("throughputBytesPerSecond") is not None:
        text += f", {progress['throughputBytesPerSecond']} B/s"
    if progress.get("etaSeconds") is not None:
        text += f", ETA {progress['etaSeconds']} s"
    return text


class ProgressBar:
    """status.progress as a live bar (tqdm) on a terminal. tqdm writes to the raw stream: its carriage
    returns are its own; what comes from the cluster is escaped before it reaches the bar."""

    def __init__(self) -> None:
        from tqdm import tqdm

        stream = sys.stderr._stream if isinstance(sys.stderr, SafeOutput) else sys.stderr
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=stream, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                   "{rate_fmt}]")

    def update(self, phase: str | None, progress: dict) -> None:
        self.bar.set_description_str(escape(str(phase or "Pending")), refresh=False)
        if progress.get("bytesTotal"):
            self.bar.total = progress["bytesTotal"]
        # Never the full bar before the end: the operator's percentage is at most 99 until then.
        done = progress.get("bytesDone", 0)
        if progress.get("percent") is not None and progress.get("bytesTotal"):
            done = min(done, progress["bytesTotal"] * progress["percent"] // 100)
        self.bar.n = done
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(escape(line), file=sys.stdout._stream if isinstance(sys.stdout, SafeOutput) else sys.stdout)

    def close(self) -> None:
        self.bar.close()


def wait_for(client, namespace: str, name: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    bar = ProgressBar() if sys.stderr.isatty() else None
    try:
        return _follow(client, namespace, name, deadline, timeout, bar)
    finally:
        if bar is not None:
            bar.close()


def _follow(client, namespace: str, name: str, deadline: float, timeout: float, bar) -> int:
    seen_phase, seen_audit, seen_progress = None, 0, None
    say = print if bar is None else bar.write  # lines above the bar, not through it
    while time.monotonic() < deadline:
        obj = _custom(client, namespace, "backuprestores", name, "BackupRestore")
        status = obj.get("status") or {}
        trail = status.get("auditTrail") or []
        for entry in trail[seen_audit:]:
            say(f"  {entry['time']}  {entry['step']:<8} {entry['outcome']:<8} {escape(str(entry['message']))}")
        seen_audit = len(trail)
        phase = status.get("phase")
        if phase != seen_phase and phase:
            say(f"phase: {phase}")
            if phase == "AwaitingApproval":
                waiting = next((c for c in status.get("conditions", []) if c["type"] == "Approved"), {})
                say(f"waiting for approval: {escape(str(waiting.get('message')))}")
            seen_phase = phase
        progress = status.get("progress")
        if progress and progress != seen_progress:
            if bar is not None:
                bar.update(phase, progress)
            else:
                print(f"progress: {escape(describe_progress(progress))}")
            seen_progress = progress
        if status.get("completionTime"):
            ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            if ready.get("status") == "True":
                return EXIT_OK
            print(f"error: restore {name} ended {phase}: {escape(str(ready.get('reason')))}: {escape(str(ready.get('message')))}", file=sys.stderr)
            return APPROVAL_EXITS.get(ready.get("reason"), EXIT_RESTORE_FAILED)
        time.sleep(1)
    print(f"error: timed out after {timeout:.0f}s; the restore goes on: kubectl describe backuprestore {name} "
          f"-n {namespace}", file=sys.stderr)
    return EXIT_RESTORE_FAILED


def cmd_cancel(args) -> int:
    """Asks the operator to cancel a running restore: one annotation, which admission guards (the scope
    backup:restore; not once it has ended) and next to which the API server records who asked."""
    import kubernetes

    from .status import CANCEL_REQUESTED, CANCEL_REQUESTED_BY

    namespace = _namespace(args)
    client = _client(args)
    obj = _custom(client, namespace, "backuprestores", args.name, "BackupRestore")
    status = obj.get("status") or {}
    annotations = obj["metadata"].get("annotations") or {}
    if status.get("completionTime"):
        raise CliError(f"BackupRestore {args.name} has already ended ({status.get('phase')}): there is nothing "
                       "to cancel", EXIT_REFUSED)
    if CANCEL_REQUESTED in annotations:
        print(f"cancellation of backuprestore.{models.GROUP}/{args.name} was already requested by "
              f"{escape(str(annotations.get(CANCEL_REQUESTED_BY)))}")
    else:
        api = kubernetes.client.CustomObjectsApi(client)
        body = {"metadata": {"annotations": {CANCEL_REQUESTED: "true"}}}
        try:
            written = _api_call(lambda: api.patch_namespaced_custom_object(
                models.GROUP, models.VERSION, namespace, "backuprestores", args.name, body,
                _content_type="application/merge-patch+json"), f"cancelling BackupRestore {args.name!r}")
        except CliError as exc:
            if exc.code == EXIT_FORBIDDEN and "backup:restore" not in str(exc):
                raise CliError(f"{exc}; cancelling a restore needs the scope backup:restore", EXIT_FORBIDDEN)
            raise
        by = (written["metadata"].get("annotations") or {}).get(CANCEL_REQUESTED_BY)
        print(f"backuprestore.{models.GROUP}/{args.name} cancellation requested by {escape(str(by))}; "
              "its runner stops and rolls back what it has not committed")
    if not args.wait:
        return EXIT_OK
    code = wait_for(client, namespace, args.name, args.timeout)
    final = (_custom(client, namespace, "backuprestores", args.name, "BackupRestore").get("status") or {})
    return EXIT_OK if final.get("phase") == "Cancelled" else code


def cmd_status(args) -> int:
    """A restore's state: its phase, progress, conditions and latest audit entries; --json the object."""
    namespace = _namespace(args)
    client = _client(args)
    obj = _custom(client, namespace, "backuprestores", args.name, "BackupRestore")
    if args.wait:
        return wait_for(client, namespace, args.name, args.timeout)
    if args.json:
        obj.get("metadata", {}).pop("managedFields", None)
        json.dump(obj, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    rows = [("Name", args.name), ("Namespace", namespace), ("Phase", status.get("phase") or "Pending"),
            ("BackupRun", (spec.get("backupRunRef") or {}).get("name")), ("Dry run", bool(spec.get("dryRun"))),
            ("Requested by", status.get("requestedBy")), ("Job", (status.get("jobRef") or {}).get("name")),
            ("Started", status.get("startTime")), ("Completed", status.get("completionTime"))]
    if status.get("progress"):
        rows.append(("Progress", describe_progress(status["progress"])))
        rows.append(("Last progress", status["progress"].get("lastProgressTime")))
    for label, value in rows:
        if value not in (None, ""):
            print(f"{label + ':':<15}{escape(str(value))}")
    conditions = status.get("conditions") or []
    if conditions:
        print("Conditions:")
        for c in conditions:
            print(f"  {escape(str(c.get('type'))):<18}{escape(str(c.get('status'))):<8}"
                  f"{escape(str(c.get('reason'))):<22}{escape(str(c.get('message')))}")
    trail = (status.get("auditTrail") or [])[-8:]
    if trail:
        print("Audit (latest):")
        for e in trail:
            print(f"  {e['time']}  {e['step']:<8} {e['outcome']:<8} {escape(str(e['message']))}")
    return EXIT_OK


def cmd_logs(args) -> int:
    """The runner's output: the log of the newest pod of the restore's Job (needs get on pods and pods/log)."""
    import kubernetes

    namespace = _namespace(args)
    client = _client(args)
    obj = _custom(client, namespace, "backuprestores", args.name, "BackupRestore")
    job = ((obj.get("status") or {}).get("jobRef") or {}).get("name")
    if not job:
        raise CliError(f"BackupRestore {args.name} has no Job (yet): there is no runner output", EXIT_NOT_FOUND)
    core = kubernetes.client.CoreV1Api(client)
    pods = _api_call(lambda: core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}"),
                     f"listing the pods of Job {job!r} (needs list on pods)").items
    # Only the Job's own pods: one that merely carries its labels is not its runner (pods.judge).
    pods = [p for p in pods if any(r.controller and r.kind == "Job" and r.name == job
                                   for r in p.metadata.owner_references or [])]
    if not pods:
        raise CliError(f"Job {job} of BackupRestore {args.name} has no pod (any more): its runner output is gone; "
                       "the runner's report is in the restore's status.result", EXIT_NOT_FOUND)
    pod = max(pods, key=lambda p: p.metadata.creation_timestamp)
    text = _api_call(lambda: core.read_namespaced_pod_log(pod.metadata.name, namespace, container="runner"),
                     f"reading the log of pod {pod.metadata.name!r} (needs get on pods/log)")
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_OK


def cmd_list(args) -> int:
    import kubernetes

    namespace = _namespace(args)
    client = _client(args)
    api = kubernetes.client.CustomObjectsApi(client)
    items = _api_call(lambda: api.list_namespaced_custom_object(models.GROUP, models.VERSION, namespace, "backupruns"),
                      f"listing BackupRuns in namespace {namespace!r}")["items"]
    if args.json:
        json.dump([{"name": i["metadata"]["name"], **(i.get("status") or {})} for i in items], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    rows = [("NAME", "PHASE", "SOURCE", "FORMAT", "SIZE", "COMPLETED")]
    for item in items:
        st = item.get("status") or {}
        art = st.get("artifact") or {}
        rows.append((item["metadata"]["name"], st.get("phase") or "-", (item.get("spec") or {}).get("source", {}).get("type", "-"),
                     art.get("format") or "-", str(art.get("sizeBytes", "-")), st.get("completionTime") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


def parse_ttl(text: str) -> int:
    """Seconds from 7h, 30m, 90s, 1d or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise CliError(f"--ttl {text!r}: use a duration such as 7h, 30m or 600", EXIT_USAGE)


def cmd_approval_request(args) -> int:
    namespace = _namespace(args)
    spec = restore_spec(argparse.Namespace(**{**vars(args), "dry_run": True, "expected_plan_hash": None,
                                              "approval": None}))
    client = _client(args)
    result = compute_plan(client, namespace, spec)
    # Whether you yourself may restore into the target is not part of the plan: whoever runs it is checked then.
    if result.verdict.outcome != "ready" and result.verdict.reason != planning.TARGET_NOT_AUTHORIZED:
        raise CliError(f"the plan is not ready, so there is nothing to approve: {result.verdict.reason}: "
                       f"{result.verdict.message}", EXIT_RESTORE_FAILED)
    template = result.plan.approval_request
    approval_spec = models.RestoreApprovalSpec(backup_run_ref=template.backup_run_ref, plan_hash=template.plan_hash,
                                               reason=args.reason or "", ttl_seconds=parse_ttl(args.ttl))
    import kubernetes

    body = {"apiVersion": models.API_VERSION, "kind": "RestoreApproval",
            "metadata": {"namespace": namespace, **({"name": args.name} if args.name else
                                                    {"generateName": spec.backup_run_ref.name[:200] + "-approval-"})},
            "spec": approval_spec.dump()}
    api = kubernetes.client.CustomObjectsApi(client)
    created = _api_call(lambda: api.create_namespaced_custom_object(models.GROUP, models.VERSION, namespace,
                                                                    "restoreapprovals", body),
                        "creating the RestoreApproval")
    name = created["metadata"]["name"]
    if args.json:
        json.dump({"name": name, "namespace": namespace, "planHash": template.plan_hash,
                   "backupRunRef": template.backup_run_ref.dump(), "requiredScope": template.required_scope,
                   "ttlSeconds": approval_spec.ttl_seconds}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"restoreapproval.{models.GROUP}/{name} created")
    print(f"plan hash: {template.plan_hash}")
    print(f"ask someone with the scope {template.required_scope} to run: daoflow approval approve {name} "
          f"-n {namespace}")
    return EXIT_OK


def _approval_row(item: dict) -> dict:
    st = item.get("status") or {}
    return {"name": item["metadata"]["name"], "decision": st.get("decision") or "-",
            "backupRun": (item.get("spec") or {}).get("backupRunRef", {}).get("name", "-"),
            "planHash": (item.get("spec") or {}).get("planHash", "-"),
            "requestedBy": ((item["metadata"].get("annotations") or {}).get(access.REQUESTED_BY) or "-"),
            "decidedBy": st.get("decidedBy") or "-", "expiresAt": st.get("expiresAt") or "-",
            "phase": st.get("phase") or "-"}


def cmd_approval_list(args) -> int:
    import kubernetes

    namespace = _namespace(args)
    api = kubernetes.client.CustomObjectsApi(_client(args))
    items = _api_call(lambda: api.list_namespaced_custom_object(models.GROUP, models.VERSION, namespace,
                                                                "restoreapprovals"),
                      f"listing RestoreApprovals in namespace {namespace!r}")["items"]
    rows = [_approval_row(i) for i in items]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    table = [("NAME", "DECISION", "BACKUPRUN", "PLAN", "REQUESTED-BY", "DECIDED-BY", "EXPIRES", "PHASE")]
    table += [(r["name"], r["decision"], r["backupRun"], r["planHash"][:12], r["requestedBy"], r["decidedBy"],
               r["expiresAt"], r["phase"]) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_approval_show(args) -> int:
    namespace = _namespace(args)
    item = _custom(_client(args), namespace, "restoreapprovals", args.approval_name, "RestoreApproval")
    if args.json:
        json.dump(item, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    row = _approval_row(item)
    st, spec = item.get("status") or {}, item.get("spec") or {}
    for label, value in (("Name", row["name"]), ("BackupRun", row["backupRun"]), ("Plan hash", row["planHash"]),
                         ("Reason", spec.get("reason") or "-"), ("Requested by", row["requestedBy"]),
                         ("Decision", row["decision"]), ("Comment", st.get("comment") or "-"),
                         ("Decided by", row["decidedBy"]), ("Expires", row["expiresAt"]), ("Phase", row["phase"]),
                         ("Used by", (st.get("usedBy") or {}).get("name") or "-")):
        print(f"{label + ':':<14}{escape(str(value))}")
    return EXIT_OK


def cmd_approval_decide(args) -> int:
    """Writes the decision through the status subresource; the API server records who decided, and
    refuses self-approval, a missing verb approve, or a second decision (one line, EXIT_FORBIDDEN)."""
    import kubernetes

    namespace = _namespace(args)
    api = kubernetes.client.CustomObjectsApi(_client(args))
    decision = "Approved" if args.command == "approve" else "Rejected"
    body = {"status": {"decision": decision, **({"comment": args.comment} if args.comment else {})}}
    decided = _api_call(lambda: api.patch_namespaced_custom_object_status(
        models.GROUP, models.VERSION, namespace, "restoreapprovals", args.approval_name, body,
        _content_type="application/merge-patch+json"), f"deciding RestoreApproval {args.approval_name!r}")
    st = decided.get("status") or {}
    print(f"restoreapproval.{models.GROUP}/{args.approval_name} {st.get('decision', decision).lower()} by "
          f"{escape(str(st.get('decidedBy')))}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    # Cluster options are accepted before or after the subcommand, as kubectl does.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="path of the kubeconfig (default: $KUBECONFIG)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context to use")
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the namespace (default: the context's)")
    p = argparse.ArgumentParser(prog="daoflow", description="Restore data from backups on Kubernetes.",
                                parents=[common])
    sub = p.add_subparsers(dest="group", required=True)
    backup = sub.add_parser("backup", help="backups and restores").add_subparsers(dest="command", required=True)

    lst = backup.add_parser("list", help="list BackupRuns", parents=[common])
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    restore = backup.add_parser("restore", help="preview or queue a restore of a BackupRun", parents=[common])
    restore.add_argument("--backup-run-id", metavar="NAME", help="the BackupRun to restore (required)")
    restore.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    restore.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    restore.add_argument("--yes", action="store_true", help="restore without asking")
    restore.add_argument("--wait", action="store_true", help="follow the restore to its end")
    restore.add_argument("--timeout", type=float, default=3600, help="with --wait: seconds to wait")
    restore.add_argument("--name", help="name of the BackupRestore (default: generated)")
    restore.add_argument("--existing-data", choices=["FailIfNotEmpty", "Replace", "Merge"], default="FailIfNotEmpty")
    restore.add_argument("--target-pvc", metavar="CLAIM", help="restore into this PersistentVolumeClaim")
    restore.add_argument("--target-database-secret", metavar="SECRET", help="restore into the database of this Secret")
    restore.add_argument("--expected-plan-hash", metavar="SHA256", help="fail with PlanDrifted if the plan changed")
    restore.add_argument("--approval", metavar="NAME", help="the RestoreApproval of this plan (spec.approvalRef); "
                         "the restore waits until it is decided")
    restore.set_defaults(func=cmd_restore)

    approval = sub.add_parser("approval", help="approval gates").add_subparsers(dest="command", required=True)
    request = approval.add_parser("request", help="ask for an approval of a restore plan", parents=[common])
    request.add_argument("--backup-run-id", required=True, metavar="NAME", help="the BackupRun to restore")
    request.add_argument("--reason", help="why the restore is needed")
    request.add_argument("--ttl", default="7h", help="how long the approval may be used: 7h, 30m, 600 (default 7h)")
    request.add_argument("--name", help="name of the RestoreApproval (default: generated)")
    request.add_argument("--existing-data", choices=["FailIfNotEmpty", "Replace", "Merge"], default="FailIfNotEmpty")
    request.add_argument("--target-pvc", metavar="CLAIM", help="the restore's target PersistentVolumeClaim")
    request.add_argument("--target-database-secret", metavar="SECRET", help="the restore's target database's Secret")
    request.add_argument("--json", action="store_true")
    request.set_defaults(func=cmd_approval_request)
    lst = approval.add_parser("list", help="list RestoreApprovals", parents=[common])
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_approval_list)
    show = approval.add_parser("show", help="show one RestoreApproval", parents=[common])
    show.add_argument("approval_name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_approval_show)
    for verb in ("approve", "reject"):
        decide = approval.add_parser(verb, help=f"{verb} a RestoreApproval (scope approvals:decide)", parents=[common])
        decide.add_argument("approval_name", metavar="NAME")
        decide.add_argument("--comment", help="why")
        decide.set_defaults(func=cmd_approval_decide)
    # Verbs on one BackupRestore: `daoflow backup restore cancel|status|logs NAME`.
    verbs = restore.add_subparsers(dest="verb", metavar="{cancel,status,logs}")
    cancel = verbs.add_parser("cancel", help="cancel a running restore", parents=[common])
    cancel.add_argument("name", metavar="NAME", help="the BackupRestore")
    cancel.add_argument("--wait", action="store_true", help="follow it until it has ended")
    cancel.add_argument("--timeout", type=float, default=600, help="with --wait: seconds to wait")
    cancel.set_defaults(func=cmd_cancel)
    show = verbs.add_parser("status", help="show a restore: phase, progress, conditions", parents=[common])
    show.add_argument("name", metavar="NAME", help="the BackupRestore")
    show.add_argument("--json", action="store_true", help="the BackupRestore object as JSON")
    show.add_argument("--wait", action="store_true", help="follow it until it has ended")
    show.add_argument("--timeout", type=float, default=3600, help="with --wait: seconds to wait")
    show.set_defaults(func=cmd_status)
    runner_logs = verbs.add_parser("logs", help="print the runner's output", parents=[common])
    runner_logs.add_argument("name", metavar="NAME", help="the BackupRestore")
    runner_logs.set_defaults(func=cmd_logs)
    return p


class SafeOutput:
    """A text stream that escapes every character that is not printable (C0 and C1 controls, DEL,
    bidi controls, line separators) except the newlines the CLI writes itself: much of what the CLI
    prints comes from the cluster (a BackupRun's error, a status message), and must not drive the
    terminal. Free-text values are escaped where they are printed too, newlines included."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\n".join(escape(line) for line in text.split("\n")))

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    if not isinstance(sys.stdout, SafeOutput):
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = SafeOutput(sys.stdout), SafeOutput(sys.stderr)
        try:
            return main(argv)
        finally:
            sys.stdout, sys.stderr = saved
    args = parser().parse_args(argv)
    for option, default in (("kubeconfig", os.environ.get("KUBECONFIG") or None), ("context", None), ("namespace", None)):
        if not hasattr(args, option):
            setattr(args, option, default)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # invalid flag values, caught by the API model
        print(f"error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
