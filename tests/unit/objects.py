"""Small builders of API objects for the unit tests."""

from __future__ import annotations

from daoflow_operator import planning, targets

SHA = "a" * 64


def run(name="db-nightly", phase="Succeeded", path="runs/db-nightly.tar.zst", fmt="tar+zstd", sha=SHA,
        source_type="volume", destination="s3-main", size=1234, **status_extra) -> dict:
    source = ({"type": "volume", "persistentVolumeClaim": {"claimName": "data"}} if source_type == "volume"
              else {"type": "postgres", "database": {"secretRef": {"name": "db"}}})
    artifact = {"path": path, "format": fmt, "sizeBytes": size, "sha256": sha}
    return {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRun",
        "metadata": {"name": name, "namespace": "ns", "uid": "run-uid", "resourceVersion": "42"},
        "spec": {"destinationRef": {"name": destination}, "source": source},
        "status": {"phase": phase, "artifact": {k: v for k, v in artifact.items() if v is not None},
                   "completionTime": "2026-11-01T00:00:00Z", **status_extra},
    }


def s3_destination(name="s3-main") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "dest-uid"},
            "spec": {"s3": {"endpoint": "http://127.0.0.1:9000", "allowInsecureHTTP": True, "bucket": "backups",
                            "region": "us-east-1",
                            "prefix": "prod/", "forcePathStyle": True,
                            "credentialsSecretRef": {"name": "s3-creds"}}}}


def pvc_destination(name="vol") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "dest-uid"},
            "spec": {"persistentVolumeClaim": {"claimName": "backups", "subPath": "nightly"}}}


REQUESTER = {"backup.daoflow.dev/requested-by": "alice",
             "backup.daoflow.dev/requested-by-groups": '["devs","system:authenticated"]'}


def restore(name="r1", dry_run=False, **spec) -> dict:
    """A BackupRestore as admission left it: alice's, recorded by the requester policy."""
    return {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
        "metadata": {"name": name, "namespace": "ns", "uid": "restore-uid", "generation": 1, "resourceVersion": "7",
                     "creationTimestamp": "2026-11-27T11:59:00Z", "annotations": dict(REQUESTER)},
        "spec": {"backupRunRef": {"name": "db-nightly"}, "dryRun": dry_run, **spec},
    }


def claim(name="data", phase="Bound", deleting=False) -> dict:
    """A PersistentVolumeClaim as the operator keeps it: metadata and status only."""
    meta = {"name": name, "namespace": "ns", "uid": f"{name}-uid"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T11:00:00Z"
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def pod(name="r1-restore-x7k2p", phase="Pending", waiting=None, waiting_message="", running=False,
        terminated=None, scheduled=True, unschedulable="", since="2026-11-27T12:00:00Z",
        image="ghcr.io/daoflow-dev/daoflow-operator:test") -> dict:
    """A restore Job's pod. `waiting`: the runner's waiting reason; `terminated`: its terminated state;
    `scheduled`: True, or False with `unschedulable` as the scheduler's message since `since`."""
    state = {}
    if running:
        state = {"running": {"startedAt": since}}
    elif terminated is not None:
        state = {"terminated": terminated}
    elif waiting:
        state = {"waiting": {"reason": waiting, **({"message": waiting_message} if waiting_message else {})}}
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": since}] if scheduled else [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable,
         "lastTransitionTime": since}]
    status = {"phase": phase, "conditions": conditions}
    if scheduled:
        status["containerStatuses"] = [{"name": "runner", "image": image, "ready": running, "state": state}]
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "creationTimestamp": since},
            "spec": {"containers": [{"name": "runner", "image": image}]},
            "status": status}


def event(reason="FailedMount", message="", type_="Warning", pod_name="r1-restore-x7k2p") -> dict:
    return {"metadata": {"name": f"{pod_name}.1", "namespace": "ns"}, "type": type_, "reason": reason,
            "message": message, "involvedObject": {"kind": "Pod", "name": pod_name, "uid": f"{pod_name}-uid"},
            "lastTimestamp": "2026-11-27T12:00:05Z"}


def free(key="pvc/data") -> targets.Holder:
    """A target no other restore holds, as the shell judges it before the Job is created."""
    return targets.Holder("free", key)


def allowed(detail="alice may restore into PersistentVolumeClaim data") -> planning.Authorization:
    """The API server's yes to the requester's SubjectAccessReview of the target."""
    return planning.Authorization("ok", detail)


def still(detail="alice may still restore BackupRun db-nightly") -> planning.Authorization:
    """The API server's yes to the requester's SubjectAccessReview of the BackupRun, asked again at dispatch."""
    return planning.Authorization("ok", detail)
