"""The few API calls the operator makes, in one place, with their retry rules.

- 429 and 5xx are retried here, after Retry-After when the server sends one, else
  with a short doubling backoff, a bounded number of times.
- 409 is not retried here: a conflict means the object changed under us, so the
  caller reads it again and decides anew (see handlers.reconcile).
- A Job that can never be created (400, 403, 404, 422, an exceeded quota, or its name held by a
  foreign Job) raises JobRefused with a final reason (`job_refusal`), never a retry.
- Secrets are never read: the runner mounts them; the operator only names them.
- Of a PersistentVolumeClaim, only its metadata and status are kept.
- A SubjectAccessReview asks whether a restore's requester may restore into its target, after the
  admission policies that record the requester are read (by name; a 404 is an answer: not installed).
- A target's Lease is created, taken over (a merge patch conditional on its resourceVersion) and deleted
  (conditional on its uid and resourceVersion): a 409 on a take means another restore was
  quicker, and the caller reads again.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import access, planning, pods, targets
from .api import models
from .metrics import METRICS

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIABLE = {429, 500, 502, 503, 504}


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class JobRefused(Exception):
    """The Job can never be created as it is: the API server refused it for good (400, 403, 404,
    422), or its fixed name is taken by a Job that is not this restore's. A final reason, not a retry."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


JOB_REJECTED = "JobRejected"
JOB_NAME_TAKEN = "JobNameTaken"
QUOTA_EXCEEDED = "QuotaExceeded"
PERMANENT = {400, 403, 404, 422}


def job_refusal(code: int | None, body: str | None, job: str) -> tuple[str, str] | None:
    """What a failed create of the Job means. Pure.

    (reason, message) for a refusal that no retry can change: 400, 403, 404 (its namespace is
    going away) and 422, with the server's own message; an exceeded ResourceQuota (403
    "exceeded quota") is `QuotaExceeded`, final too, since nothing tells when the quota would
    have room (a new restore can be created once it has). None for a transient error (429, 5xx,
    401, no answer): the pass fails and the work queue retries it with its backoff.
    """
    if code not in PERMANENT:
        return None
    try:
        detail = json.loads(body or "").get("message") or ""
    except (ValueError, AttributeError):
        detail = ""
    detail = str(detail or body or "no message")[:2048]
    if code == 403 and "exceeded quota" in detail:
        return QUOTA_EXCEEDED, f"Job {job} cannot be created: a ResourceQuota is exceeded: {detail}"
    return JOB_REJECTED, f"the API server refused Job {job} (HTTP {code}): {detail}"


def _retry_after(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def with_retries(call: Callable[[], T], what: str, attempts: int = 6, base: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Runs an API call, retrying throttling and server errors; a 409 becomes Conflict."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except ApiException as exc:
            METRICS.api_errors.labels(str(exc.status)).inc()
            if exc.status == 409:
                raise Conflict(what) from exc
            if exc.status not in RETRIABLE or attempt == attempts:
                raise
            delay = _retry_after(exc)
            if delay is None:
                delay = base * (2 ** (attempt - 1)) * (1 + random.random() / 2)
            log.info("%s: HTTP %s, retrying in %.1fs (%d/%d)", what, exc.status, delay, attempt, attempts)
            sleep(min(delay, 30.0))
    raise AssertionError("unreachable")


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, sleep: Callable[[float], None] = time.sleep):
        self.client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.coordination = kubernetes.client.CoordinationV1Api(api_client)
        self.sleep = sleep

    def _retry(self, call: Callable[[], T], what: str) -> T:
        return with_retries(call, what, sleep=self.sleep)

    def _get_or_none(self, call: Callable[[], T], what: str) -> T | None:
        try:
            return self._retry(call, what)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _custom(self, plural: str, namespace: str, name: str) -> dict | None:
        return self._get_or_none(
            lambda: self.custom.get_namespaced_custom_object(models.GROUP, models.VERSION, namespace, plural, name),
            f"get {plural} {namespace}/{name}")

    def get_restore(self, namespace: str, name: str) -> dict | None:
        return self._custom("backuprestores", namespace, name)

    def get_run(self, namespace: str, name: str) -> dict | None:
        return self._custom("backupruns", namespace, name)

    def get_destination(self, namespace: str, name: str) -> dict | None:
        return self._custom("backupdestinations", namespace, name)

    def get_approval(self, namespace: str, name: str) -> dict | None:
        return self._custom("restoreapprovals", namespace, name)

    def patch_approval_status(self, namespace: str, name: str, body: dict) -> dict:
        """A merge patch of an approval's status; conditional when the body carries a resourceVersion."""
        return self._retry(
            lambda: self.custom.patch_namespaced_custom_object_status(
                models.GROUP, models.VERSION, namespace, "restoreapprovals", name, body,
                _content_type="application/merge-patch+json"),
            f"patch status of restoreapproval {namespace}/{name}")

    def claim_approval(self, namespace: str, name: str, body: dict) -> None:
        """Marks the approval used (status.usedBy), conditional on the resourceVersion that was read.

        Conflict when it changed since (another restore may have claimed it): the caller reads again.
        A refusal by the admission policy daoflow-approval-decision (already used, or not approved) is a
        Conflict too: the next read shows why.
        """
        try:
            self.patch_approval_status(namespace, name, body)
        except ApiException as exc:
            if exc.status in (403, 422) and "daoflow-approval-decision" in (exc.body or ""):
                raise Conflict(f"the claim of restoreapproval {namespace}/{name} was refused: HTTP {exc.status}") \
                    from exc
            raise
        log.info("RestoreApproval %s/%s used by BackupRestore %s", namespace, name, body["status"]["usedBy"]["name"])

    def get_job(self, namespace: str, name: str) -> dict | None:
        job = self._get_or_none(lambda: self.batch.read_namespaced_job(name, namespace), f"get job {namespace}/{name}")
        return self.client.sanitize_for_serialization(job) if job is not None else None

    def create_job(self, manifest: dict) -> dict:
        """Creates the Job, or adopts the one a previous attempt created (same fixed name)."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            job = self._retry(lambda: self.batch.create_namespaced_job(ns, manifest), f"create job {ns}/{name}")
            return self.client.sanitize_for_serialization(job)
        except ApiException as exc:
            refusal = job_refusal(exc.status, exc.body, f"{ns}/{name}")
            if refusal is None:
                raise
            raise JobRefused(*refusal) from exc
        except Conflict:
            existing = self.get_job(ns, name)
            if existing is None:
                raise
            owner = manifest["metadata"]["ownerReferences"][0]["uid"]
            owners = [ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []]
            if owner not in owners:
                raise JobRefused(JOB_NAME_TAKEN, f"Job {ns}/{name} already exists and is not this restore's "
                                                 "(another owner); it is not adopted: delete or rename it, "
                                                 "then create a new BackupRestore")
            log.info("Job %s/%s already exists and is ours: adopted", ns, name)
            return existing

    def get_lease(self, namespace: str, name: str) -> dict | None:
        lease = self._get_or_none(lambda: self.coordination.read_namespaced_lease(name, namespace),
                                  f"get lease {namespace}/{name}")
        return self.client.sanitize_for_serialization(lease) if lease is not None else None

    def take_lease(self, manifest: dict) -> None:
        """Creates the target's Lease or, when the manifest carries a resourceVersion, takes over the
        one that was read. Raises Conflict when another restore was quicker (AlreadyExists, or the
        Lease changed since it was read)."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        if manifest["metadata"].get("resourceVersion"):
            # A merge patch that carries the resourceVersion: conditional, like the status write.
            try:
                self._retry(lambda: self.coordination.patch_namespaced_lease(
                    name, ns, manifest, _content_type="application/merge-patch+json"),
                    f"take over lease {ns}/{name}")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                # Its holder let it go between the read and the take-over: read the world again.
                raise Conflict(f"lease {ns}/{name} was released meanwhile") from exc
        else:
            self._retry(lambda: self.coordination.create_namespaced_lease(ns, manifest), f"create lease {ns}/{name}")
        log.info("Lease %s/%s (%s) taken by %s", ns, name,
                 manifest["metadata"]["annotations"].get(targets.ANNOTATION_TARGET), manifest["spec"]["holderIdentity"])

    def release_lease(self, namespace: str, name: str, holder_uid: str) -> bool:
        """Deletes the target's Lease if this restore still holds it. Idempotent.

        The delete is conditional on the uid and resourceVersion that were read, so a Lease that
        another restore took over in between is left alone.
        """
        lease = self.get_lease(namespace, name)
        identity = targets.holder_identity(lease)
        if lease is None or identity is None or identity[1] != holder_uid:
            return False
        meta = lease["metadata"]
        body = kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(
            uid=meta["uid"], resource_version=meta["resourceVersion"]))
        if not self._delete_if_unchanged(lambda: self.coordination.delete_namespaced_lease(name, namespace, body=body),
                                         f"delete lease {namespace}/{name}"):
            return False
        log.info("Lease %s/%s released by %s", namespace, name, "/".join(identity))
        return True

    def _delete_if_unchanged(self, call, what: str) -> bool:
        """A delete with preconditions: False when the object is gone or is not the one observed."""
        try:
            self._retry(call, what)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        except Conflict:
            return False
        return True
        return True

    def requester_policies(self) -> dict[str, dict | None]:
        """The admission policies and bindings that record a restore's requester (access.RECORDING_POLICIES),
        by resource; None for one that does not exist."""
        return self.policies(access.RECORDING_POLICIES)

    def policies(self, names: tuple[tuple[str, str], ...]) -> dict[str, dict | None]:
        """Admission policies and bindings by (resource, name), keyed by resource; None for one that does not exist."""
        return {resource: self._get_or_none(
                    lambda: self.custom.get_cluster_custom_object("admissionregistration.k8s.io", "v1", resource, name),
                    f"get {resource} {name}")
                for resource, name in names}

    def review_access(self, question: access.Review) -> access.Answer:
        """The API server's answer to a SubjectAccessReview of the requester's rights on the target."""
        response = self._retry(
            lambda: self.custom.create_cluster_custom_object("authorization.k8s.io", "v1", "subjectaccessreviews",
                                                             access.sar_body(question), _preload_content=False),
            f"review access of {question.who} to {question.resource}/{question.name} in {question.namespace}")
        try:
            answer = access.parse_answer(json.loads(response.data))
        except ValueError:
            answer = None
        if answer is None:  # no answer is not a no: the pass fails and is retried
            raise RuntimeError(f"the SubjectAccessReview of {question.who} got no answer from the API server")
        return answer

    def target_pods(self, namespace: str, target_label: str) -> list[dict]:
        """The restore pods that write into one target (labelled with its hash)."""
        pods = self._retry(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=f"{targets.LABEL_TARGET}={target_label}"),
            f"list pods of target {namespace}/{target_label}")
        return [self.client.sanitize_for_serialization(p) for p in pods.items]

    def get_claim(self, namespace: str, name: str) -> dict | planning.Unreadable | None:
        """A PersistentVolumeClaim's metadata and status; None when it does not exist.

        A 403 (RBAC without `get` on persistentvolumeclaims) makes it Unreadable rather than an
        error: the preflight check then says `unknown`, and the pod itself will tell.
        """
        try:
            claim = self._get_or_none(lambda: self.core.read_namespaced_persistent_volume_claim(name, namespace),
                                      f"get persistentvolumeclaim {namespace}/{name}")
        except ApiException as exc:
            if exc.status == 403:
                return planning.Unreadable(f"cannot be read: forbidden ({exc.reason})")
            raise
        if claim is None:
            return None
        claim = self.client.sanitize_for_serialization(claim)
        return {"metadata": claim.get("metadata") or {}, "status": claim.get("status") or {}}

    def job_pods(self, namespace: str, job: dict) -> list[dict]:
        """The Job's pods, as dicts (their status tells whether the runner started, and its report)."""
        uid = job["metadata"]["uid"]
        pods = self._retry(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/controller-uid={uid}"),
            f"list pods of job {namespace}/{job['metadata']['name']}")
        return [self.client.sanitize_for_serialization(p) for p in pods.items]

    def runner_log(self, namespace: str, pod: str, tail_lines: int | None = None,
                   limit_bytes: int | None = None) -> str | None:
        """The runner container's log (its tail), or None when it cannot be read: progress is best effort,
        never a reason for a pass to fail."""
        kwargs = {k: v for k, v in (("tail_lines", tail_lines), ("limit_bytes", limit_bytes)) if v is not None}
        try:
            return self._retry(lambda: self.core.read_namespaced_pod_log(pod, namespace, container=pods.RUNNER,
                                                                          **kwargs),
                               f"read the log of pod {namespace}/{pod}")
        except ApiException as exc:
            log.info("the log of pod %s/%s cannot be read: HTTP %s", namespace, pod, exc.status)
            return None

    def pod_events(self, namespace: str, pod_uid: str) -> list[dict]:
        """The events about one pod (the kubelet reports mount failures only there)."""
        events = self._retry(
            lambda: self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={pod_uid}"),
            f"list events of pod {namespace}/{pod_uid}")
        return [self.client.sanitize_for_serialization(e) for e in events.items]

    def delete_job(self, namespace: str, name: str, uid: str, propagation: str = "Background") -> bool:
        """Deletes the Job and its pods (`propagation`). Idempotent: a Job already gone is fine.

        The uid precondition makes sure only the Job that was observed is deleted, never a namesake.
        A cancel deletes it in the foreground: the Job stays, marked for deletion, until its pod has
        ended its grace period, so the operator sees the pod end (and the runner's report) through it.
        """
        body = kubernetes.client.V1DeleteOptions(propagation_policy=propagation,
                                                 preconditions=kubernetes.client.V1Preconditions(uid=uid))
        if not self._delete_if_unchanged(lambda: self.batch.delete_namespaced_job(name, namespace, body=body),
                                         f"delete job {namespace}/{name}"):
            log.info("Job %s/%s is gone or is not the one observed (uid %s); not deleting it", namespace, name, uid)
            return False
        log.info("deleted Job %s/%s (%s)", namespace, name,
                 "its restore is cancelled" if propagation == "Foreground" else "its pod cannot start")
        return True

    def set_finalizer(self, restore: dict, finalizer: str, present: bool) -> dict | None:
        """Adds or removes the operator's finalizer on a restore; returns the restore as written.

        A merge patch of the whole list, conditional on the resourceVersion that was read (a 409 is
        Conflict: read again), so other finalizers are never lost. None when the restore is gone.
        """
        meta = restore["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != finalizer] + ([finalizer] if present else [])
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]}}
        written = self._get_or_none(lambda: self.custom.patch_namespaced_custom_object(
            models.GROUP, models.VERSION, meta["namespace"], "backuprestores", meta["name"], body,
            _content_type="application/merge-patch+json"),
            f"{'add' if present else 'remove'} finalizer of backuprestore {meta['namespace']}/{meta['name']}")
        log.info("%s/%s: finalizer %s %s", meta["namespace"], meta["name"], finalizer,
                 "added" if present else "removed")
        return written

    def patch_status(self, namespace: str, name: str, patch: dict, resource_version: str) -> dict:
        """A merge patch of the status, conditional on the resourceVersion that was read."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        return self._retry(
            lambda: self.custom.patch_namespaced_custom_object_status(
                models.GROUP, models.VERSION, namespace, "backuprestores", name, body,
                _content_type="application/merge-patch+json"),
            f"patch status of backuprestore {namespace}/{name}")

    def post_event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object, so `kubectl describe` tells the story. Best effort."""
        meta = obj["metadata"]
        now = datetime.now(timezone.utc)
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name'][:200]}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion", models.API_VERSION),
                               "kind": obj.get("kind", "BackupRestore"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "daoflow-operator"},
            "reportingComponent": "daoflow-operator", "reportingInstance": "daoflow-operator",
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }
        try:
            self._retry(lambda: self.core.create_namespaced_event(meta["namespace"], event),
                        f"post event {reason} on {meta['namespace']}/{meta['name']}")
        except (ApiException, Conflict) as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)


def api_client_from_env() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()
