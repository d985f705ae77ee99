"""The API that the operator's tests need from kmock: the kinds it touches, and a backup to restore."""

from __future__ import annotations

from datetime import datetime, timezone

import kmock as kmock_lib
import kubernetes

from daoflow_operator import access, handlers, status as status_
from daoflow_operator.config import Config
from daoflow_operator.kube import Kube

RESTORES = "backup.daoflow.dev/v1alpha1/backuprestores"
RUNS = "backup.daoflow.dev/v1alpha1/backupruns"
DESTINATIONS = "backup.daoflow.dev/v1alpha1/backupdestinations"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
EVENTS = "v1/events"
CLAIMS = "v1/persistentvolumeclaims"
LEASES = "coordination.k8s.io/v1/leases"
SHA = "c" * 64


SARS = "authorization.k8s.io/v1/subjectaccessreviews"
POLICY_CREATED = "2026-11-01T00:00:00Z"
# What a pass that is about to create a Job asks: are the requester's annotations the API server's
# word, may the requester still restore the BackupRun, and may they restore into the target?
# (A dry run's pass asks only the last.)
REVIEW = [("GET", f"/apis/admissionregistration.k8s.io/v1/{resource}/{name}") for resource, name in
          access.RECORDING_POLICIES] + [("POST", f"/apis/{SARS}")] * 2


def declare(kmock, refused: tuple[str, ...] = (), refused_on: tuple[str, ...] = ()) -> None:
    """The kinds, with the verbs the operator uses, and a Succeeded BackupRun with its destination.

    The requester policies are installed, and SubjectAccessReviews allow every user but the `refused`
    (on the resources `refused_on` only, when given)."""
    for res, kind in ((RESTORES, "BackupRestore"), (RUNS, "BackupRun"), (DESTINATIONS, "BackupDestination")):
        kmock.resources[res] = {"kind": kind, "namespaced": True, "verbs": ["get", "list", "watch", "patch", "create"],
                                "subresources": ["status"]}
    kmock.resources[JOBS] = {"kind": "Job", "namespaced": True, "verbs": ["get", "list", "watch", "create", "delete"]}
    kmock.resources[EVENTS] = {"kind": "Event", "namespaced": True, "verbs": ["create", "list"]}
    kmock.resources[PODS] = {"kind": "Pod", "namespaced": True, "verbs": ["get", "list"]}
    kmock.resources[CLAIMS] = {"kind": "PersistentVolumeClaim", "namespaced": True, "verbs": ["get"]}
    kmock.resources[LEASES] = {"kind": "Lease", "namespaced": True, "verbs": ["get", "create", "update", "delete"]}
    for resource, name in access.RECORDING_POLICIES:
        kmock.resources[f"admissionregistration.k8s.io/v1/{resource}"] = {
            "kind": resource, "namespaced": False, "verbs": ["get"]}
        kmock.objects[f"admissionregistration.k8s.io/v1/{resource}", None, name] = {
            "metadata": {"name": name, "creationTimestamp": POLICY_CREATED}}
    kmock.resources[SARS] = {"kind": "SubjectAccessReview", "namespaced": False, "verbs": ["create"]}

    def answer(request):
        del kmock.objects[SARS, None, None]  # not stored, as on a real API server
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": request.data["spec"],
                "status": {"allowed": request.data["spec"].get("user") not in refused or bool(refused_on) and
                           request.data["spec"]["resourceAttributes"]["resource"] not in refused_on}}

    (kmock ** -1)["post", kmock.resource(SARS)] << 201 << answer  # below the faults a test may add
    kmock.objects[CLAIMS, "ns", "data"] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "ns", "uid": "uid-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"},
    }
    kmock.objects[RUNS, "ns", "nightly"] = {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRun",
        "metadata": {"name": "nightly", "namespace": "ns", "uid": "uid-run", "resourceVersion": "3"},
        "spec": {"destinationRef": {"name": "shared"},
                 "source": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
        "status": {"phase": "Succeeded", "completionTime": "2026-11-27T02:00:00Z",
                   "artifact": {"path": "a.tar.zst", "format": "tar+zstd", "sizeBytes": 10, "sha256": SHA}},
    }
    kmock.objects[DESTINATIONS, "ns", "shared"] = {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupDestination",
        "metadata": {"name": "shared", "namespace": "ns", "uid": "uid-dest"},
        "spec": {"persistentVolumeClaim": {"claimName": "backups"}},
    }


def failure(code: int, message: str, reason: str | None = None) -> dict:
    """The Status body of an API error, for injected faults."""
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "message": message}
    if reason:
        body["reason"] = reason
    return body


def status_patches(k8s, name: str = "r1") -> list:
    """The requests that patched the status of restore `name`."""
    return [r for r in k8s["patch", kmock_lib.resource(RESTORES)] if r.url.path.endswith(f"/{name}/status")]


def restore(name: str = "r1") -> dict:
    return {
        "apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, "resourceVersion": "5",
                     # Now: a restore's wait deadline counts from its creation.
                     "creationTimestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "finalizers": [status_.FINALIZER],
                     "annotations": {access.REQUESTED_BY: "alice", access.REQUESTED_BY_GROUPS: '["system:authenticated"]'}},
        "spec": {"backupRunRef": {"name": "nightly"}},
    }


def operator_for(kmock) -> handlers.Operator:
    """The operator's shell with a plain API client for kmock; retries do not sleep."""
    cfg = kubernetes.client.Configuration()
    cfg.host = str(kmock.url).rstrip("/")
    return handlers.Operator(Kube(kubernetes.client.ApiClient(cfg), sleep=lambda s: None), Config())
