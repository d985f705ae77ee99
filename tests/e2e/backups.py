"""Builders for the objects a restore needs, created on the real API server."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from cluster_helpers import Cluster, wait_until

GROUP = "backup.daoflow.dev"
SHA = hashlib.sha256(b"daoflow").hexdigest()


def volume(cluster: Cluster, namespace: str, claim: str) -> None:
    """A PersistentVolumeClaim bound to a pre-bound hostPath volume (the cluster has no provisioner)."""
    pv = f"{namespace}-{claim}"
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "manual", "hostPath": {"path": f"/var/tmp/{pv}"},
                            "claimRef": {"namespace": namespace, "name": claim}}})
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claim, "namespace": namespace},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "volumeName": pv,
                            "resources": {"requests": {"storage": "1Gi"}}}})


def destination(cluster: Cluster, namespace: str, name: str = "shared") -> None:
    volume(cluster, namespace, "backups")
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupDestination",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"persistentVolumeClaim": {"claimName": "backups"}}})


def backup_run(cluster: Cluster, namespace: str, name: str = "nightly", destination_name: str = "shared",
               claim: str = "app-data", status: dict | None = None) -> dict:
    """A BackupRun of a volume, with the given status (default: Succeeded with an artifact)."""
    volume(cluster, namespace, claim)
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRun",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"destinationRef": {"name": destination_name},
                            "source": {"type": "volume", "persistentVolumeClaim": {"claimName": claim}}}})
    if status is None:
        status = succeeded()
    if status:
        set_run_status(cluster, namespace, name, status)
    return cluster.get("backuprun", name, namespace)


def succeeded(path: str = "app-data/2026-11-27.tar.zst", sha: str = SHA) -> dict:
    artifact = {"format": "tar+zstd", "sizeBytes": 4096, "sha256": sha}
    if path:
        artifact["path"] = path
    return {"phase": "Succeeded", "startTime": "2026-11-27T02:00:00Z", "completionTime": "2026-11-27T02:03:00Z",
            "artifact": artifact}


def set_run_status(cluster: Cluster, namespace: str, name: str, status: dict) -> None:
    cluster.kubectl("patch", "backuprun", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


def restore(cluster: Cluster, namespace: str, run: str = "nightly", name: str | None = None, **spec) -> str:
    name = name or f"restore-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRestore",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"backupRunRef": {"name": run}, **spec}})
    return name


def restore_status(cluster: Cluster, namespace: str, name: str) -> dict:
    return cluster.get("backuprestore", name, namespace).get("status") or {}


def wait_phase(cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    def reached():
        status = restore_status(cluster, namespace, name)
        return status if status.get("phase") == phase else None
    try:
        return wait_until(reached, timeout=timeout, what=f"BackupRestore {name} to be {phase}")
    except AssertionError:
        raise AssertionError(f"BackupRestore {name} is {restore_status(cluster, namespace, name)}, not {phase}")


def condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def jobs(cluster: Cluster, namespace: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]


def events(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json",
                          f"--field-selector=involvedObject.name={name},involvedObject.kind=BackupRestore").stdout
    return sorted(json.loads(out)["items"], key=lambda e: e.get("firstTimestamp") or "")


def settle(seconds: float = 2.0) -> None:
    """Gives an operator time to do something it must not do, before the test checks it did not."""
    time.sleep(seconds)
