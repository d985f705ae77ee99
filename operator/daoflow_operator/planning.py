"""Preview and Validate, as one pure function: objects in, a plan and a verdict out.

The operator calls `plan()` for dry runs and real runs alike, and the CLI's
`--dry-run --json` calls the very same function, so a preview and the restore it
leads to can never disagree about what will happen.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Any, Literal

from .api import models
from .paths import relative_path_problem

# Reasons, as they appear in conditions and events.
BACKUP_RUN_NOT_FOUND = "BackupRunNotFound"
BACKUP_RUN_NOT_SUCCEEDED = "BackupRunNotSucceeded"
BACKUP_RUN_FAILED = "BackupRunFailed"
ARTIFACT_PATH_MISSING = "ArtifactPathMissing"
ARTIFACT_PATH_INVALID = "ArtifactPathInvalid"
ARTIFACT_CHECKSUM_MISSING = "ArtifactChecksumMissing"
ARTIFACT_SIZE_MISSING = "ArtifactSizeMissing"
DESTINATION_NOT_FOUND = "DestinationNotFound"
DESTINATION_INVALID = "DestinationInvalid"
TARGET_INVALID = "TargetInvalid"
TARGET_NOT_FOUND = "TargetNotFound"
TARGET_NOT_AUTHORIZED = "TargetNotAuthorized"
PLAN_DRIFTED = "PlanDrifted"

PVC_LOCATION = "pvc://"


@dataclass(frozen=True)
class Unreadable:
    """An object that could not be read (e.g. 403 for a user without access): neither found nor missing."""

    detail: str


# What a caller passes for the target claim when it did not read it.
NOT_READ = Unreadable("the PersistentVolumeClaim was not read")


@dataclass(frozen=True)
class Authorization:
    """Whether the user who asked may `restore` into the target, as the API server answered (see access.py).

    `ok`, `fail` (refused, or nobody to ask) or `unknown` (not asked yet, or the question failed).
    """

    status: Literal["ok", "fail", "unknown"]
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What validation concluded: go ahead, wait for the BackupRun, or reject for good."""

    outcome: Literal["ready", "wait", "reject"]
    reason: str
    message: str


@dataclass(frozen=True)
class PlanResult:
    verdict: Verdict
    plan: models.RestorePlan


def _get(obj: dict | None, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def _check(name: str, status: str, detail: str) -> models.PreflightCheck:
    return models.PreflightCheck(name=name, status=status, detail=detail)


def _destination_location(destination: dict, path: str) -> tuple[str | None, str, list[str]]:
    """(type, human-readable location, problems) of an artifact in a destination."""
    s3 = _get(destination, "spec", "s3")
    pvc = _get(destination, "spec", "persistentVolumeClaim")
    if bool(s3) == bool(pvc):
        return None, "", ["must set exactly one of s3 or persistentVolumeClaim"]
    if s3:
        problems = [f"s3.{k} is not set" for k in ("endpoint", "bucket") if not s3.get(k)]
        if bool(_get(s3, "credentialsSecretRef", "name")) == ("credentialsFromEnvironment" in s3):
            problems.append("s3 must set exactly one of credentialsSecretRef or credentialsFromEnvironment")
        # The CRD refuses these; a destination stored before that rule, or under an older CRD, is not.
        if not str(s3.get("endpoint") or "").startswith("https://") and not s3.get("allowInsecureHTTP"):
            problems.append("s3.endpoint must use https:// unless allowInsecureHTTP is true (the credentials "
                            "and the data would travel in clear text)")
        key = (s3.get("prefix") or "") + path
        return "s3", f"s3://{s3.get('bucket', '')}/{key}", problems
    if not pvc.get("claimName"):
        return "persistentVolumeClaim", "", ["persistentVolumeClaim.claimName is not set"]
    sub = pvc.get("subPath") or ""
    problem = relative_path_problem(sub) if sub else None
    location = f"{PVC_LOCATION}{pvc['claimName']}/" + (sub.rstrip("/") + "/" if sub else "") + path
    return "persistentVolumeClaim", location, [f"persistentVolumeClaim.subPath {problem}"] if problem else []


def _target(spec: models.BackupRestoreSpec, run: dict) -> models.PlannedTarget:
    source = _get(run, "spec", "source", default={})
    if spec.target is not None:
        t = spec.target
        return models.PlannedTarget(
            type="volume" if t.persistent_volume_claim else "postgres",
            persistent_volume_claim=t.persistent_volume_claim, database=t.database,
            in_place=False, existing_data=spec.existing_data,
        )
    return models.PlannedTarget(
        type=source.get("type"),
        persistent_volume_claim=source.get("persistentVolumeClaim"),
        database=source.get("database"),
        in_place=True, existing_data=spec.existing_data,
    )


def planned_target(spec: models.BackupRestoreSpec, run: dict | None) -> models.PlannedTarget:
    """The plan's target (`plan.target`), so the shell knows whose lock to read before it decides."""
    return _target(spec, run or {})


def target_claim_name(spec: models.BackupRestoreSpec, run: dict | None) -> str | None:
    """The PersistentVolumeClaim a volume restore writes into, so the caller knows which one to read."""
    target = _target(spec, run or {})
    if target.type == "volume" and target.persistent_volume_claim:
        return target.persistent_volume_claim.claim_name or None
    return None


def destination_claim_name(plan: dict) -> str | None:
    """The destination's PersistentVolumeClaim, from a plan's artifact location (`pvc://<claim>/...`)."""
    location = (plan.get("artifact") or {}).get("location") or ""
    if not location.startswith(PVC_LOCATION):
        return None
    return location[len(PVC_LOCATION):].split("/", 1)[0] or None


def _claim_check(name: str, claim: dict | Unreadable | None) -> tuple[str, str]:
    """(status, detail) of the target-claim check: what the claim's metadata and status say."""
    if isinstance(claim, Unreadable):
        return "unknown", f"PersistentVolumeClaim {name}: {claim.detail}"
    if claim is None:
        return "fail", f"PersistentVolumeClaim {name} does not exist"
    if _get(claim, "metadata", "deletionTimestamp"):
        return "fail", f"PersistentVolumeClaim {name} is being deleted"
    phase = _get(claim, "status", "phase", default="")
    if phase == "Bound":
        return "ok", f"PersistentVolumeClaim {name} is Bound"
    if phase == "Lost":
        return "fail", f"PersistentVolumeClaim {name} is Lost: its PersistentVolume is gone"
    return "warn", (f"PersistentVolumeClaim {name} is {phase or 'not bound'}; it must be bound when the "
                    "restore pod is scheduled")


def _content_counts_check(artifact: dict) -> models.PreflightCheck:
    """Whether the restore can verify the archive's contents, not only the artifact's bytes."""
    files, size = artifact.get("files"), artifact.get("uncompressedBytes")
    if artifact.get("format") == "postgres-custom":
        return _check("contentCounts", "warn", "the content counts are checked for tar archives only; "
                                               "only the artifact's checksum is verified")
    if files is None or size is None:
        return _check("contentCounts", "warn", "the BackupRun does not record both files and uncompressedBytes for its "
                                               "artifact; only the artifact's checksum is verified")
    return _check("contentCounts", "ok", f"{files} members and {size} bytes of files must be restored")


def plan_hash(pinned: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pinned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def execute_command(namespace: str, run_name: str, spec: models.BackupRestoreSpec, digest: str) -> str:
    args = ["daoflow", "backup", "restore", "--backup-run-id", run_name, "--namespace", namespace]
    if spec.existing_data != "FailIfNotEmpty":
        args += ["--existing-data", spec.existing_data]
    if spec.target and spec.target.persistent_volume_claim:
        args += ["--target-pvc", spec.target.persistent_volume_claim.claim_name]
    if spec.target and spec.target.database:
        args += ["--target-database-secret", spec.target.database.secret_ref.name]
    args += ["--expected-plan-hash", digest, "--yes"]
    return shlex.join(args)


def ready_message(run_name: str) -> str:
    return f"BackupRun {run_name} and its artifact are ready to restore"


def plan(namespace: str, spec: models.BackupRestoreSpec, run: dict | None,
         destination: dict | None, target_claim: dict | Unreadable | None = NOT_READ,
         authorization: Authorization | None = None) -> PlanResult:
    """Validate the restore's inputs and compute its plan. Pure: no I/O, no clock.

    `target_claim` is the target PersistentVolumeClaim as read (None: it does not exist;
    `Unreadable`: it could not be read, and the check says `unknown` without blocking).
    `authorization` is whether the user who asked may restore into the target (the check
    `targetAuthorized`; None leaves it out). `fail` makes the verdict TargetNotAuthorized once
    nothing else fails or waits; `unknown` does not block.
    """
    run_name = spec.backup_run_ref.name
    pinned_run = models.PinnedBackupRun(
        name=run_name,
        uid=_get(run, "metadata", "uid", default=""),
        resource_version=_get(run, "metadata", "resourceVersion", default=""),
        completion_time=_get(run, "status", "completionTime"),
    )
    checks: list[models.PreflightCheck] = []
    waits: list[Verdict] = []
    rejects: list[Verdict] = []

    def fail(name: str, reason: str, detail: str) -> None:
        checks.append(_check(name, "fail", detail))
        rejects.append(Verdict("reject", reason, detail))

    # -- the BackupRun ------------------------------------------------------------------
    phase = _get(run, "status", "phase")
    if run is None:
        detail = f"BackupRun {run_name} does not exist (yet) in namespace {namespace}"
        checks.append(_check("backupRunSucceeded", "fail", detail))
        waits.append(Verdict("wait", BACKUP_RUN_NOT_FOUND, detail))
    elif phase == "Failed":
        error = _get(run, "status", "error", default="no error recorded")
        fail("backupRunSucceeded", BACKUP_RUN_FAILED, f"BackupRun {run_name} failed: {error}")
    elif phase != "Succeeded":
        detail = f"BackupRun {run_name} is {phase or 'not started'}; a restore needs a Succeeded backup"
        checks.append(_check("backupRunSucceeded", "fail", detail))
        waits.append(Verdict("wait", BACKUP_RUN_NOT_SUCCEEDED, detail))
    else:
        checks.append(_check("backupRunSucceeded", "ok",
                             f"BackupRun {run_name} succeeded at {pinned_run.completion_time or 'an unrecorded time'}"))

    artifact_raw = _get(run, "status", "artifact", default={})
    path = artifact_raw.get("path") or ""
    succeeded = run is not None and phase == "Succeeded"
    if succeeded:
        problem = relative_path_problem(path)
        if not path:
            fail("artifactPath", ARTIFACT_PATH_MISSING, f"BackupRun {run_name} has no artifact path")
        elif problem:
            fail("artifactPath", ARTIFACT_PATH_INVALID, f"artifact path {path!r} {problem}")
        else:
            checks.append(_check("artifactPath", "ok", f"artifact path {path}"))
        if not artifact_raw.get("sha256"):
            fail("artifactChecksum", ARTIFACT_CHECKSUM_MISSING,
                 f"BackupRun {run_name} records no sha256 for its artifact, so it cannot be verified")
        else:
            checks.append(_check("artifactChecksum", "ok", f"sha256 {artifact_raw['sha256']}"))
        if artifact_raw.get("sizeBytes") is None:
            # The runner stops a fetch that goes past the pinned size, so it needs one.
            fail("artifactSize", ARTIFACT_SIZE_MISSING,
                 f"BackupRun {run_name} records no size for its artifact, so the fetch cannot be bounded")
        else:
            checks.append(_check("artifactSize", "ok", f"{artifact_raw['sizeBytes']} bytes"))

    # -- the destination ----------------------------------------------------------------
    dest_name = _get(run, "spec", "destinationRef", "name", default="")
    dest_type, location = None, ""
    if run is not None and succeeded:
        if not dest_name:
            fail("destination", DESTINATION_INVALID, f"BackupRun {run_name} names no destination")
        elif destination is None:
            fail("destination", DESTINATION_NOT_FOUND, f"BackupDestination {dest_name} does not exist")
        else:
            dest_type, location, problems = _destination_location(destination, path)
            if problems:
                fail("destination", DESTINATION_INVALID, f"BackupDestination {dest_name} " + "; ".join(problems))
            else:
                checks.append(_check("destination", "ok", f"artifact at {location}"))

    # -- the target ---------------------------------------------------------------------
    target = _target(spec, run or {})
    fmt = artifact_raw.get("format")
    if succeeded:
        if target.type == "volume" and not target.persistent_volume_claim:
            fail("target", TARGET_INVALID, "the target volume names no PersistentVolumeClaim")
        elif target.type == "postgres" and not target.database:
            fail("target", TARGET_INVALID, "the target database names no Secret")
        elif target.type is None:
            fail("target", TARGET_INVALID, f"BackupRun {run_name} has no source to restore into; set spec.target")
        elif fmt and (fmt == "postgres-custom") != (target.type == "postgres"):
            fail("target", TARGET_INVALID, f"an artifact of format {fmt} cannot be restored into a {target.type} target")
        elif not fmt:
            fail("target", TARGET_INVALID, f"BackupRun {run_name} records no artifact format")
        else:
            where = (f"PersistentVolumeClaim {target.persistent_volume_claim.claim_name}"
                     if target.type == "volume" else f"the database of Secret {target.database.secret_ref.name}")
            checks.append(_check("target", "ok", f"{'in place into' if target.in_place else 'into'} {where}"))
            if target.type == "volume":
                # Checked here so a missing claim is refused before any Job exists, not found
                # later by the scheduler. Not part of the hash: it is a fact of today, not of the plan.
                claim_status, detail = _claim_check(target.persistent_volume_claim.claim_name, target_claim)
                if claim_status == "fail":
                    fail("targetClaim", TARGET_NOT_FOUND, detail)
                else:
                    checks.append(_check("targetClaim", claim_status, detail))
            if authorization is not None:
                # Not part of the hash either: who asks is not what the restore would do.
                checks.append(_check("targetAuthorized", authorization.status, authorization.detail))
        checks.append({
            "FailIfNotEmpty": _check("existingData", "ok", "the restore fails if the target already holds data"),
            "Replace": _check("existingData", "warn",
                              "existing data is replaced; it is kept aside until the restore succeeds and put back on failure"),
            "Merge": _check("existingData", "warn", "files in the archive overwrite existing files; others are kept"),
        }[spec.existing_data])
        checks.append(_content_counts_check(artifact_raw))

    artifact = None
    if run is not None:
        artifact = models.PlannedArtifact(
            destination=dest_name, destination_type=dest_type, location=location, path=path, format=fmt,
            size_bytes=artifact_raw.get("sizeBytes"), sha256=artifact_raw.get("sha256"),
            files=artifact_raw.get("files"), uncompressed_bytes=artifact_raw.get("uncompressedBytes"),
        )

    # The hash pins what the restore would do, not bookkeeping: a relabelled BackupRun keeps its hash.
    digest = plan_hash({
        "backupRun": {"name": run_name, "uid": pinned_run.uid, "completionTime": pinned_run.completion_time},
        "artifact": artifact.dump() if artifact else None,
        "destination": _get(destination, "spec"),
        "target": target.dump(),
    })
    complete = not waits and not rejects
    denied = complete and succeeded and authorization is not None and authorization.status == "fail"
    is_ready = complete and not denied
    # The steps are what the restore would do, shown even to a user who may not run it.
    steps = _steps(run_name, artifact, target, location) if complete else []
    restore_plan = models.RestorePlan(
        is_ready=is_ready, plan_hash=digest, backup_run=pinned_run, artifact=artifact, target=target,
        preflight_checks=checks, steps=steps,
        execute_command=execute_command(namespace, run_name, spec, digest),
        approval_request=models.ApprovalRequestTemplate(
            backup_run_ref=models.LocalObjectReference(name=run_name), plan_hash=digest),
    )
    if rejects:
        verdict = rejects[0]
    elif waits:
        verdict = waits[0]
    elif denied:
        verdict = Verdict("reject", TARGET_NOT_AUTHORIZED, authorization.detail)
    elif spec.expected_plan_hash and spec.expected_plan_hash != digest:
        verdict = Verdict("reject", PLAN_DRIFTED,
                          f"today's plan {digest[:12]} differs from the previewed plan {spec.expected_plan_hash[:12]}")
    else:
        verdict = Verdict("ready", "Validated", ready_message(run_name))
    return PlanResult(verdict=verdict, plan=restore_plan)


def _steps(run_name: str, artifact: models.PlannedArtifact, target: models.PlannedTarget,
           location: str) -> list[models.PlanStep]:
    size = f"{artifact.size_bytes} bytes" if artifact.size_bytes is not None else "size unknown"
    if target.type == "postgres":
        into = f"pg_restore into the database of Secret {target.database.secret_ref.name}"
        if target.existing_data == "Replace":
            into += " with --clean --if-exists in a single transaction"
    else:
        into = (f"unpack {artifact.format} into a staging folder on PersistentVolumeClaim "
                f"{target.persistent_volume_claim.claim_name} ({target.existing_data})")
    return [
        models.PlanStep(step="validate", description=f"BackupRun {run_name} succeeded and its artifact is pinned"),
        models.PlanStep(step="queue", description="record the restore request, with its audit entry; wait while another "
                       "restore holds the target, then take it and create one Job"),
        models.PlanStep(step="fetch", description=f"stream {location} ({size})"),
        models.PlanStep(step="execute", description=into),
        models.PlanStep(step="verify", description=f"sha256 must equal {artifact.sha256} before the data becomes visible"),
        models.PlanStep(step="record", description="write the result into status; the BackupRun and the artifact stay unchanged"),
    ]
