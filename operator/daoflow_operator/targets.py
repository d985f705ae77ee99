"""Queue: one restore per target at a time, as pure functions of what the shell read.

The runner's staging folder and the old data it keeps aside assume that nothing else writes
into the target while it works (Velero runs restores one at a time for the same reason). So a
real restore holds its target's lock from just before its Job is created until it ends.

The lock lives in the API server, so that it survives a restart of the operator and holds
between two replicas: a `coordination.k8s.io/v1` Lease named `daoflow-target-<hash>` after the
target, in the restore's namespace. Its holderIdentity is `<restore name>/<restore uid>`, and an
ownerReference to the holding BackupRestore lets garbage collection remove it with its restore.
It has no leaseDurationSeconds: it is not a timed lease that a slow restore could lose.

- free: no Lease. The shell creates it (AlreadyExists: another restore was quicker; read again).
- ours: this restore holds it (a previous pass took it, then the operator stopped).
- stale: the holder ended, or is gone. The shell takes the Lease over with an update that is
  conditional on the resourceVersion it read, so of two restores that try, one wins.
- busy: a live restore holds it, or a pod of a restore that ended still runs on the target
  (a deleted Job's pod in its grace period): wait.

The target is the plan's (`plan.target`). A volume target is locked as a whole claim, whatever its
subPath: subPaths nest (the claim's root holds every subPath), so two of them may overlap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .api import models

LEASE_PREFIX = "daoflow-target-"
# On the Lease, the restore Job and its pod: the target's hash, so the shell can list the pods
# that write into a target.
LABEL_TARGET = "backup.daoflow.dev/target"
# On the Lease: the target itself, for humans (`kubectl get lease -o yaml`).
ANNOTATION_TARGET = "backup.daoflow.dev/target"

TARGET_BUSY = "TargetBusy"


@dataclass(frozen=True)
class Holder:
    """Who holds a target, as judged from its Lease, the restore named in it and the target's pods."""

    state: Literal["free", "ours", "stale", "busy"]
    key: str
    lease: dict | None = None  # as read: a stale Lease is taken over conditionally on its resourceVersion
    restore: str = ""  # the restore that holds the target (busy) or held it (stale)
    message: str = ""  # busy: why this restore waits, naming the restore that holds the target
    pod_running: bool = False  # busy because a pod of an ended restore still runs on the target


def key(target: dict | None) -> str | None:
    """The target of a plan (`plan.target`) as a lock key: `pvc/<claim>` or `postgres/<secret>`."""
    target = target or {}
    if target.get("type") == "volume":
        claim = (target.get("persistentVolumeClaim") or {}).get("claimName")
        return f"pvc/{claim}" if claim else None
    if target.get("type") == "postgres":
        secret = ((target.get("database") or {}).get("secretRef") or {}).get("name")
        return f"postgres/{secret}" if secret else None
    return None


def describe(target_key: str) -> str:
    kind, _, name = target_key.partition("/")
    return f"PersistentVolumeClaim {name}" if kind == "pvc" else f"the database of Secret {name}"


def target_hash(target_key: str) -> str:
    return hashlib.sha256(target_key.encode()).hexdigest()[:20]


def lease_name(target_key: str) -> str:
    return LEASE_PREFIX + target_hash(target_key)


def holder_identity(lease: dict | None) -> tuple[str, str] | None:
    """(name, uid) of the restore named in a Lease; None when there is no Lease or no holder."""
    identity = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
    name, _, uid = identity.rpartition("/")
    return (name, uid) if name and uid else None


def holder_to_read(lease: dict | None, restore: dict) -> str | None:
    """The restore the shell must read to judge the Lease: its holder, unless that is this restore."""
    identity = holder_identity(lease)
    if identity is None or identity[1] == restore["metadata"]["uid"]:
        return None
    return identity[0]


def _live(holder: dict | None, uid: str) -> bool:
    if holder is None or (holder.get("metadata") or {}).get("uid") != uid:
        return False  # gone, or a namesake
    return not (holder.get("status") or {}).get("completionTime")


def _running(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def judge(target_key: str, restore: dict, lease: dict | None, holder: dict | None = None,
          pods: list[dict] | None = None) -> Holder:
    """Who holds the target. Pure.

    `lease`: the target's Lease as read (None: there is none); `holder`: the restore named in it
    (None: gone, or not read because it is this restore); `pods`: the pods labelled with the
    target (None: not read; the shell reads them only when the judgement is free or stale).
    """
    from .jobs import LABEL_RESTORE, LABEL_RESTORE_UID  # the restore's labels on its pods

    uid = restore["metadata"]["uid"]
    identity = holder_identity(lease)
    if lease is not None and identity and identity[1] == uid:
        return Holder("ours", target_key, lease, restore=identity[0])
    what = describe(target_key)
    if lease is not None and identity and _live(holder, identity[1]):
        return Holder("busy", target_key, lease, restore=identity[0],
                      message=f"{what} is being restored by BackupRestore {identity[0]}; "
                              "this restore starts when that one ends")
    # Nobody live holds it. A pod of a restore that ended may still write into it, e.g. the pod
    # of a deleted Job in its grace period, or one whose Job has FailureTarget but not Failed.
    for pod in pods or []:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_RESTORE_UID) != uid and _running(pod):
            owner = labels.get(LABEL_RESTORE) or "another BackupRestore"
            return Holder("busy", target_key, lease, restore=owner, pod_running=True,
                          message=f"{what} is still written by pod {pod['metadata']['name']} of BackupRestore "
                                  f"{owner}, which has ended; this restore starts when that pod is gone")
    return Holder("free" if lease is None else "stale", target_key, lease,
                  restore=identity[0] if identity else "")


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(restore: dict, holder: Holder, now: datetime) -> dict:
    """The Lease that gives `restore` its target: new when free, or the stale one taken over. Pure."""
    from .jobs import MANAGED_BY  # the operator's own label value

    meta = restore["metadata"]
    old = holder.lease or {}
    metadata = {
        "name": lease_name(holder.key),
        "namespace": meta["namespace"],
        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "target-lock",
                   LABEL_TARGET: target_hash(holder.key)},
        "annotations": {ANNOTATION_TARGET: holder.key},
        "ownerReferences": [{"apiVersion": models.API_VERSION, "kind": "BackupRestore", "name": meta["name"],
                             "uid": meta["uid"]}],
    }
    if holder.state == "stale":
        metadata["resourceVersion"] = old["metadata"]["resourceVersion"]
    transitions = ((old.get("spec") or {}).get("leaseTransitions") or 0) + (1 if holder.state == "stale" else 0)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": f"{meta['name']}/{meta['uid']}", "acquireTime": _micro_time(now),
                 "renewTime": _micro_time(now), "leaseTransitions": transitions},
    }
