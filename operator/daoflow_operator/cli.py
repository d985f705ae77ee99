"""`daoflow` (also `kubectl daoflow`): the product's CLI, on Kubernetes.

    daoflow backup list
    daoflow backup restore --backup-run-id NAME --dry-run [--json]
    daoflow backup restore --backup-run-id NAME --yes [--wait]
    daoflow backup restore cancel NAME [--wait]

A dry run reads the BackupRun, its destination and the target claim, asks whether you may restore
into the target (a SelfSubjectAccessReview), and prints the plan computed by the same function the
operator uses; it writes nothing. A real restore creates a
BackupRestore, and the operator does the rest.
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
EXIT_REFUSED = 7  # the API server refused the request as it is (e.g. cancelling a restore that has ended)


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
        if exc.status in (401, 403):
            reason = ""
            try:
                reason = json.loads(exc.body).get("message", "")
            except (TypeError, ValueError):
                pass
            raise CliError(f"{what}: forbidden: {reason or exc.reason}", EXIT_FORBIDDEN)
        if exc.status == 422:  # an admission policy or the schema said why
            try:
                reason = json.loads(exc.body).get("message", "")
            except (TypeError, ValueError):
                reason = ""
            raise CliError(f"{what}: refused: {reason or exc.reason}", EXIT_REFUSED)
        raise CliError(f"{what}: the API server answered {exc.status} {exc.reason}", EXIT_API_ERROR)
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


def wait_for(client, namespace: str, name: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen_phase, seen_audit = None, 0
    while time.monotonic() < deadline:
        obj = _custom(client, namespace, "backuprestores", name, "BackupRestore")
        status = obj.get("status") or {}
        trail = status.get("auditTrail") or []
        for entry in trail[seen_audit:]:
            print(f"  {entry['time']}  {entry['step']:<8} {entry['outcome']:<8} {escape(str(entry['message']))}")
        seen_audit = len(trail)
        phase = status.get("phase")
        if phase != seen_phase and phase:
            print(f"phase: {phase}")
            seen_phase = phase
        if status.get("completionTime"):
            ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            if ready.get("status") == "True":
                return EXIT_OK
            print(f"error: restore {name} ended {phase}: {escape(str(ready.get('reason')))}: {escape(str(ready.get('message')))}", file=sys.stderr)
            return EXIT_RESTORE_FAILED
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
    restore.set_defaults(func=cmd_restore)
    # Verbs on one BackupRestore: `daoflow backup restore cancel NAME`.
    verbs = restore.add_subparsers(dest="verb", metavar="{cancel}")
    cancel = verbs.add_parser("cancel", help="cancel a running restore", parents=[common])
    cancel.add_argument("name", metavar="NAME", help="the BackupRestore")
    cancel.add_argument("--wait", action="store_true", help="follow it until it has ended")
    cancel.add_argument("--timeout", type=float, default=600, help="with --wait: seconds to wait")
    cancel.set_defaults(func=cmd_cancel)
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
