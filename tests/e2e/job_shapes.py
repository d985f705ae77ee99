"""Jobs exactly as the operator builds them (jobs.build_job), and the API server's admission
verdict on one sent with a given identity: a server-side dry run, which runs admission in full."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cluster_helpers import Cluster, wait_until
from daoflow_operator import dev, jobs
from daoflow_operator.config import Config

OWNER_UID = "7d0f5a2e-3c1b-4e8a-9f6d-2b4c8e1a0f37"


def operator_job(namespace: str, image: str, destination: str = "volume", target: str = "volume",
                 **config) -> dict:
    """The Job of a restore from a `volume` or `s3` destination (`s3-ca-secret`, `s3-irsa-ca-configmap`:
    with a CA bundle, and credentials from the environment) into a `volume` or `postgres` target."""
    restore = {"metadata": {"name": "shape", "namespace": namespace, "uid": OWNER_UID},
               "spec": {"backupRunRef": {"name": "nightly"}}}
    if target == "postgres":
        plan_target = {"type": "postgres", "database": {"secretRef": {"name": "orders-db"}}}
        fmt = "postgres-custom"
    else:
        plan_target = {"type": "volume", "persistentVolumeClaim": {"claimName": "app-data", "subPath": "current"},
                       "existingData": "Replace"}
        fmt = "tar+zstd"
    plan = {"planHash": "0" * 64, "target": plan_target,
            "artifact": {"path": "app/2026-11-27", "format": fmt, "sizeBytes": 4096, "sha256": "0" * 64}}
    if destination.startswith("s3"):
        dest = {"spec": {"s3": {"endpoint": "https://s3.example.com", "bucket": "backups",
                                "credentialsSecretRef": {"name": "s3-creds"}}}}
        s3 = dest["spec"]["s3"]
        if destination == "s3-irsa-ca-configmap":
            # Credentials from the environment under a ServiceAccount, and a CA bundle from a ConfigMap.
            del s3["credentialsSecretRef"]
            s3["credentialsFromEnvironment"] = {"serviceAccountName": "restore-irsa"}
            s3["caBundle"] = {"configMapKeyRef": {"name": "corp-ca", "key": "ca-bundle.pem"}}
        elif destination == "s3-ca-secret":
            s3["caBundle"] = {"secretKeyRef": {"name": "corp-ca", "key": "ca.crt"}}
    else:
        dest = {"spec": {"persistentVolumeClaim": {"claimName": "backups", "subPath": "nightly"}}}
    return jobs.build_job(restore, plan, dest, Config(runner_image=image, **config))


def dry_run_create(cluster: Cluster, kubeconfig: Path | None, job: dict) -> subprocess.CompletedProcess:
    """Creates `job` as `kubeconfig`'s user in a server-side dry run: nothing is stored."""
    return cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(job),
                           kubeconfig=kubeconfig, check=False)


def set_runner_image(cluster: Cluster, operator_kubeconfig: Path, namespace: str, image: str) -> None:
    """Applies the Job-shape policy for `image`, and waits until the API server enforces it."""
    cluster.kubectl("apply", "-f", "-", input=dev.operator_limits(image))
    wait_until(lambda: dry_run_create(cluster, operator_kubeconfig, operator_job(namespace, image)).returncode == 0,
               timeout=60, what=f"the Job-shape policy to admit the image {image}")
