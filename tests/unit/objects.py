"""Small builders of API objects for the unit tests."""

from __future__ import annotations

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
            "spec": {"s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "backups", "region": "us-east-1",
                            "prefix": "prod/", "forcePathStyle": True,
                            "credentialsSecretRef": {"name": "s3-creds"}}}}


def pvc_destination(name="vol") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "dest-uid"},
            "spec": {"persistentVolumeClaim": {"claimName": "backups", "subPath": "nightly"}}}


def restore(name="r1", dry_run=False, **spec) -> dict:
    return {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
        "metadata": {"name": name, "namespace": "ns", "uid": "restore-uid", "generation": 1, "resourceVersion": "7"},
        "spec": {"backupRunRef": {"name": "db-nightly"}, "dryRun": dry_run, **spec},
    }
