"""Builders for the objects a restore needs, created on the real API server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

from cluster_helpers import Cluster, ThrottledRelay, wait_until

GROUP = "backup.daoflow.dev"
SHA = hashlib.sha256(b"daoflow").hexdigest()
RUNNER_UID = 65532
ARTIFACT_PATH = "app-data/2026-11-27.tar.zst"


def volume(cluster: Cluster, namespace: str, claim: str) -> Path:
    """A PersistentVolumeClaim bound to a pre-bound hostPath volume (the cluster has no provisioner).

    Returns the volume's folder on the host, owned by the runner's uid as a provisioned volume
    with fsGroup would be: hostPath volumes are not chowned by the kubelet."""
    pv = f"{namespace}-{claim}"
    path = cluster.volume_dir(pv)
    os.chown(path, RUNNER_UID, RUNNER_UID)
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "manual", "hostPath": {"path": str(path)},
                            "claimRef": {"namespace": namespace, "name": claim}}})
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claim, "namespace": namespace},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "volumeName": pv,
                            "resources": {"requests": {"storage": "1Gi"}}}})
    return path


def application_data(cluster: Cluster, namespace: str, claim: str = "app-data") -> Path:
    """A target claim that already holds an application's data, owned as the runner's uid."""
    volume(cluster, namespace, claim)
    target = cluster.volume_dir(f"{namespace}-{claim}")
    (target / "old").mkdir()
    (target / "old" / "data.bin").write_bytes(os.urandom(50_000))
    (target / "old-config.yaml").write_text("replicas: 1\n")
    for path in (target / "old", target / "old" / "data.bin", target / "old-config.yaml"):
        os.chown(path, RUNNER_UID, RUNNER_UID)
    return target


def sample_tree(root: Path) -> Path:
    """A small tree with the parts a restore must keep: unicode names, an empty folder, a
    symlink, a hard link, an empty file and distinct modes."""
    (root / "données" / "日本語").mkdir(parents=True)
    (root / "données" / "日本語" / "ファイル.txt").write_bytes(os.urandom(3000))
    (root / "config.yaml").write_text("replicas: 3\n")
    (root / "empty-dir").mkdir()
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "zero-length").write_bytes(b"")
    (root / "bin.dat").write_bytes(os.urandom(200_000))
    os.symlink("config.yaml", root / "link-to-config")
    os.link(root / "bin.dat", root / "hardlink-to-bin")
    os.chmod(root / "config.yaml", 0o640)
    os.chmod(root / "nested" / "deeper", 0o750)
    os.chmod(root / "bin.dat", 0o755)
    return root


def make_artifact(tree: Path, out: Path) -> dict:
    """A tar+zstd artifact of `tree` made by GNU tar and zstd, as a backup tool would; returns
    the BackupRun artifact fields (path excluded)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--zstd", "--format=posix", "-cf", str(out), "-C", str(tree), "."], check=True)
    return {"format": "tar+zstd", "sizeBytes": out.stat().st_size,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}


def snapshot(root: Path) -> dict:
    """{relative path: (kind, mode, content)} of a tree, for byte-for-byte comparisons."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def destination(cluster: Cluster, namespace: str, name: str = "shared") -> Path:
    """A volume BackupDestination on claim `backups`; returns the volume's folder on the host."""
    path = volume(cluster, namespace, "backups")
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupDestination",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"persistentVolumeClaim": {"claimName": "backups"}}})
    return path


def backup_run(cluster: Cluster, namespace: str, name: str = "nightly", destination_name: str = "shared",
               claim: str = "app-data", status: dict | None = None) -> dict:
    """A BackupRun of a volume, with the given status.

    By default it is Succeeded, with a real tar+zstd artifact of sample_tree() written into
    the `backups` volume (destination() must have made it): its real sha256 and size."""
    volume(cluster, namespace, claim)
    cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupRun",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"destinationRef": {"name": destination_name},
                            "source": {"type": "volume", "persistentVolumeClaim": {"claimName": claim}}}})
    if status is None:
        status = succeeded_with_artifact(cluster, namespace, name)
    if status:
        set_run_status(cluster, namespace, name, status)
    return cluster.get("backuprun", name, namespace)


def succeeded_with_artifact(cluster: Cluster, namespace: str, run: str = "nightly") -> dict:
    """A Succeeded status whose artifact is real: sample_tree() archived into the `backups` volume."""
    status = succeeded()
    tree = source_tree(cluster, namespace, run)
    if not tree.exists():
        sample_tree(tree)
    status["artifact"].update(make_artifact(tree, cluster.volume_dir(f"{namespace}-backups") / ARTIFACT_PATH))
    return status


def source_tree(cluster: Cluster, namespace: str, run: str = "nightly") -> Path:
    """The tree that backup_run() archived into its default artifact."""
    return cluster.volume_dir(f"{namespace}-source-{run}") / "tree"


def succeeded(path: str = ARTIFACT_PATH, sha: str = SHA) -> dict:
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


@contextlib.contextmanager
def throttled_s3_destination(cluster: Cluster, namespace: str, s3, rate: int, name: str = "slow-s3"):
    """A BackupDestination `name` on the real S3 server, reached by pods through a ThrottledRelay of
    `rate` bytes a second (yielded: it can be paused)."""
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}")
    with ThrottledRelay(s3.port, rate) as relay:
        cluster.apply({"apiVersion": f"{GROUP}/v1alpha1", "kind": "BackupDestination",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"s3": {"endpoint": f"http://{cluster.forward(relay.port)}", "allowInsecureHTTP": True,
                                       "bucket": s3.bucket, "prefix": f"{namespace}/", "forcePathStyle": True,
                                       "credentialsSecretRef": {"name": "s3-creds"}}}})
        yield relay


def large_run(cluster: Cluster, namespace: str, s3, tmp_path: Path, destination_name: str) -> tuple[Path, dict]:
    """A Succeeded BackupRun of sample_tree() plus 16 MiB of random bytes (incompressible), uploaded to
    the S3 server; returns the source tree and the artifact's fields."""
    tree = sample_tree(tmp_path / "tree")
    with open(tree / "large.bin", "wb") as f:
        for _ in range(4):
            f.write(os.urandom(4 << 20))
    artifact = make_artifact(tree, tmp_path / "artifact.tar.zst")
    s3.upload(f"{namespace}/{ARTIFACT_PATH}", tmp_path / "artifact.tar.zst")
    status = succeeded()
    status["artifact"].update(artifact)
    backup_run(cluster, namespace, destination_name=destination_name, status=status)
    return tree, artifact
