"""Queue: the restore Job, as a pure function of the restore, its pinned plan and the config.

The Job has a fixed name derived from the BackupRestore, so a retry or a restart that
tries to create it again meets AlreadyExists and adopts it instead of making a twin.
The runner gets the pinned plan through a downward-API file of a pod annotation: the
plan travels with the Job itself, and no second child object has to be kept in step.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import targets
from .api import models
from .config import Config

MANAGED_BY = "daoflow-operator"
APP_NAME = "daoflow-restore"
LABEL_RESTORE = "backup.daoflow.dev/restore"
LABEL_RESTORE_UID = "backup.daoflow.dev/restore-uid"
ANNOTATION_PLAN = "backup.daoflow.dev/runner-plan"
ANNOTATION_SHA256 = "backup.daoflow.dev/artifact-sha256"
ANNOTATION_SIZE = "backup.daoflow.dev/artifact-size-bytes"

# Paths inside the runner's pod: the contract with the runner (docs/runner.md).
PLAN_DIR = "/etc/daoflow/plan"
PLAN_FILE = f"{PLAN_DIR}/plan.json"
TARGET_DIR = "/var/run/daoflow/target"
DESTINATION_DIR = "/var/run/daoflow/destination"
S3_CREDENTIALS_DIR = "/var/run/daoflow/s3-credentials"
S3_CA_DIR = "/var/run/daoflow/s3-ca"
S3_CA_FILE = f"{S3_CA_DIR}/ca.crt"
DATABASE_DIR = "/var/run/daoflow/database"
RUNNER_UID = 65532

SUFFIX = "-restore"


def job_name(restore_name: str) -> str:
    """`<restore>-restore`, shortened with a stable hash when it would pass 63 characters."""
    name = restore_name + SUFFIX
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(restore_name.encode()).hexdigest()[:8]
    return f"{restore_name[:63 - len(SUFFIX) - 9].rstrip('-.')}-{digest}{SUFFIX}"


def _label_value(value: str) -> str:
    return value if len(value) <= 63 else value[:54].rstrip("-.") + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def runner_plan(restore: dict, plan: dict, destination: dict, config: Config) -> dict[str, Any]:
    """The runner's instructions: only what it needs, with paths inside its own pod."""
    meta = restore["metadata"]
    artifact = plan["artifact"]
    dest_spec = destination["spec"]
    if dest_spec.get("s3"):
        s3 = dest_spec["s3"]
        source = {"type": "s3", "endpoint": s3["endpoint"], "bucket": s3["bucket"],
                  "region": s3.get("region") or "us-east-1", "prefix": s3.get("prefix") or "",
                  "forcePathStyle": bool(s3.get("forcePathStyle")),
                  "allowInsecureHTTP": bool(s3.get("allowInsecureHTTP"))}
        # Without a credentials folder the runner uses the default chain of the pod's environment.
        if s3.get("credentialsSecretRef"):
            source["credentialsDir"] = S3_CREDENTIALS_DIR
        if s3.get("caBundle"):
            source["caBundleFile"] = S3_CA_FILE
        if config.s3_endpoint_allowlist:
            source["endpointAllowlist"] = list(config.s3_endpoint_allowlist)
    else:
        # The destination claim's subPath is applied by the volume mount itself.
        source = {"type": "volume", "mountPath": DESTINATION_DIR}
    target = plan["target"]
    if target["type"] == "postgres":
        runner_target = {"type": "postgres", "credentialsDir": DATABASE_DIR}
    else:
        runner_target = {"type": "volume", "mountPath": TARGET_DIR}
    return {
        "restore": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta.get("uid", "")},
        "artifact": {"path": artifact["path"], "format": artifact["format"],
                     "sizeBytes": artifact.get("sizeBytes"), "sha256": artifact["sha256"],
                     **{key: artifact[key] for key in ("files", "uncompressedBytes") if artifact.get(key) is not None}},
        "source": source,
        "target": runner_target,
        "existingData": target.get("existingData", "FailIfNotEmpty"),
        "limits": {"maxMembers": config.runner_max_members, "maxBytes": config.runner_max_bytes},
    }


def scratch_volume(plan: dict) -> dict:
    """/tmp: small for a volume restore (it stages on the target itself); for a database, the
    whole dump is verified there before pg_restore reads it, so it must hold the artifact."""
    size = plan["artifact"].get("sizeBytes")
    if plan["target"]["type"] != "postgres":
        return {"sizeLimit": "1Gi"}
    if size is None:
        return {}
    return {"sizeLimit": str(max(1 << 30, size + size // 10 + (64 << 20)))}


def ca_bundle_volumes(ca_bundle: dict | None) -> list[dict]:
    """The CA bundle's one key, as the file ca.crt (certificates are public: world-readable)."""
    if not ca_bundle:
        return []
    if ca_bundle.get("configMapKeyRef"):
        ref = ca_bundle["configMapKeyRef"]
        return [{"name": "s3-ca-bundle", "configMap": {
            "name": ref["name"], "items": [{"key": ref["key"], "path": "ca.crt"}], "defaultMode": 0o444}}]
    ref = ca_bundle["secretKeyRef"]
    return [{"name": "s3-ca-bundle", "secret": {
        "secretName": ref["name"], "items": [{"key": ref["key"], "path": "ca.crt"}], "defaultMode": 0o444}}]


def build_job(restore: dict, plan: dict, destination: dict, config: Config) -> dict[str, Any]:
    """The restore Job manifest. Pure: same inputs, same Job."""
    meta = restore["metadata"]
    spec = models.BackupRestoreSpec.model_validate(restore.get("spec") or {})
    name = job_name(meta["name"])
    labels = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "restore",
        LABEL_RESTORE: _label_value(meta["name"]),
        LABEL_RESTORE_UID: meta["uid"],
    }
    if (target_key := targets.key(plan["target"])) is not None:
        # Pods that still write into the target are found by this label (targets.judge).
        labels[targets.LABEL_TARGET] = targets.target_hash(target_key)
    instructions = runner_plan(restore, plan, destination, config)
    annotations = {
        **config.job_pod_annotations,
        ANNOTATION_PLAN: json.dumps(instructions, sort_keys=True),
        ANNOTATION_SHA256: plan["artifact"]["sha256"],
        ANNOTATION_SIZE: str(plan["artifact"].get("sizeBytes") or 0),
    }
    volumes: list[dict] = [
        {"name": "plan", "downwardAPI": {"items": [{
            "path": "plan.json", "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_PLAN}']"}}]}},
        {"name": "tmp", "emptyDir": scratch_volume(plan)},
    ]
    mounts: list[dict] = [
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    dest_spec = destination["spec"]
    service_account = None
    if dest_spec.get("s3"):
        s3 = dest_spec["s3"]
        if s3.get("credentialsSecretRef"):
            volumes.append({"name": "s3-credentials", "secret": {
                "secretName": s3["credentialsSecretRef"]["name"], "defaultMode": 0o400}})
            mounts.append({"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True})
        else:
            service_account = (s3.get("credentialsFromEnvironment") or {}).get("serviceAccountName")
        volumes.extend(ca_bundle_volumes(s3.get("caBundle")))
        if s3.get("caBundle"):
            mounts.append({"name": "s3-ca-bundle", "mountPath": S3_CA_DIR, "readOnly": True})
    else:
        pvc = dest_spec["persistentVolumeClaim"]
        # Read-only: a restore never changes the artifact.
        volumes.append({"name": "destination", "persistentVolumeClaim": {"claimName": pvc["claimName"], "readOnly": True}})
        mount = {"name": "destination", "mountPath": DESTINATION_DIR, "readOnly": True}
        if pvc.get("subPath"):
            mount["subPath"] = pvc["subPath"]
        mounts.append(mount)
    target = plan["target"]
    if target["type"] == "postgres":
        volumes.append({"name": "database", "secret": {
            "secretName": target["database"]["secretRef"]["name"], "defaultMode": 0o400}})
        mounts.append({"name": "database", "mountPath": DATABASE_DIR, "readOnly": True})
    else:
        claim = target["persistentVolumeClaim"]
        volumes.append({"name": "target", "persistentVolumeClaim": {"claimName": claim["claimName"]}})
        mount = {"name": "target", "mountPath": TARGET_DIR}
        if claim.get("subPath"):
            mount["subPath"] = claim["subPath"]
        mounts.append(mount)

    container = {
        "name": "runner",
        "image": config.runner_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "daoflow_operator.runner"],
        "args": ["--plan", PLAN_FILE],
        "env": [{"name": "DAOFLOW_TERMINATION_LOG", "value": "/dev/termination-log"}],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": {
            "requests": {"cpu": config.runner_cpu_request, "memory": config.runner_memory_request},
            "limits": {"memory": config.runner_memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM to SIGKILL: room for the runner's rollback (config.runner_termination_grace_seconds).
        "terminationGracePeriodSeconds": config.runner_termination_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": RUNNER_UID, "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if service_account:
        # For IRSA or Pod Identity: the pod runs under this ServiceAccount. Its API token is still
        # not mounted (above); the EKS webhook projects its own audience-bound token instead.
        pod_spec["serviceAccountName"] = service_account
    # Placement, only when configured: without it the Job is exactly what it always was.
    if config.job_node_selector:
        pod_spec["nodeSelector"] = dict(config.job_node_selector)
    if config.job_pod_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.job_pod_tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {"backup.daoflow.dev/plan-hash": plan["planHash"]},
            "ownerReferences": [{
                "apiVersion": models.API_VERSION, "kind": "BackupRestore", "name": meta["name"],
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            # A failed restore is never retried automatically: a human reads why first.
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }
