"""Fetch begins when the runner runs: what the restore pod says about its start. Pure.

A Job only counts its pods as active; a pod that can never start (its image cannot be
pulled, a claim or Secret it mounts does not exist, no node takes it) would sit Pending
until the Job's activeDeadlineSeconds. `start()` reads the newest pod of the Job and the
events about it, and tells whether the runner is running, is still starting, or never will:

    no pod yet / Pending for a passing reason     -> waiting  (the restore stays Queued)
    no pod: the Job cannot create it (its events):
      serviceaccount "X" not found               -> failed: ServiceAccountNotFound
      forbidden by admission (PodSecurity, ...)  -> failed: PodRejected
      anything else (a quota, a webhook down)    -> waiting, then failed: PodCreateFailed after the timeout
    the runner container is running or has run   -> running  (the restore is Running)
    ErrImagePull, ImagePullBackOff, ...          -> failed: ImagePullFailed
    CreateContainerConfigError, ...              -> failed: PodStartFailed
    persistentvolumeclaim "X" not found          -> failed: TargetNotFound / DestinationNotFound
    secret "X" not found (FailedMount)           -> failed: SecretNotFound
    Unschedulable for longer than the timeout    -> failed: Unschedulable

Only the Job's own pods say anything (`judge()`): a pod that merely carries the Job's labels is
named and never counted, whatever it reports.

It never reads a clock or the network: `now` and the timeout are passed in.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from . import planning

RUNNER = "runner"  # the container's name in jobs.build_job

# Reasons of a restore whose pod cannot start.
IMAGE_PULL_FAILED = "ImagePullFailed"
POD_START_FAILED = "PodStartFailed"
SECRET_NOT_FOUND = "SecretNotFound"
UNSCHEDULABLE = "Unschedulable"
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
POD_REJECTED = "PodRejected"
POD_CREATE_FAILED = "PodCreateFailed"
START_FAILURES = frozenset({IMAGE_PULL_FAILED, POD_START_FAILED, SECRET_NOT_FOUND, UNSCHEDULABLE,
                            planning.TARGET_NOT_FOUND, planning.DESTINATION_NOT_FOUND,
                            SERVICE_ACCOUNT_NOT_FOUND, POD_REJECTED, POD_CREATE_FAILED})

# The kubelet's waiting reasons of a container that will not start by waiting longer.
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
CREATE_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})

# The scheduler says `persistentvolumeclaim "x" not found`, the kubelet `persistentvolumeclaims "x" not found`.
CLAIM_MISSING = re.compile(r'persistentvolumeclaims? "([^"]+)" (not found|is being deleted)')
SECRET_MISSING = re.compile(r'secrets? "([^"]+)" not found')
SERVICE_ACCOUNT_MISSING = re.compile(r'serviceaccounts? "([^"]+)" not found')


@dataclass(frozen=True)
class PodStart:
    """What the Job's pod says about the runner's start."""

    state: Literal["waiting", "running", "failed"]
    reason: str = ""
    message: str = ""
    recheck_after: float | None = None  # waiting against a deadline: look again within this many seconds


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def newest(pods: list[dict]) -> dict | None:
    """The Job's latest pod (backoffLimit is 0, so there is normally just one)."""
    if not pods:
        return None
    return max(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")


def runner_status(pod: dict) -> dict:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((cs for cs in statuses if cs.get("name") == RUNNER), {})


def has_started(pod: dict) -> bool:
    """The runner container is running, or ran: the restore is really fetching."""
    state = runner_status(pod).get("state") or {}
    return bool(state.get("running") or (state.get("terminated") or {}).get("startedAt"))


def termination_message(pods: list[dict]) -> str | None:
    """The runner's report: the termination message of the newest pod that has one."""
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True):
        terminated = (runner_status(pod).get("state") or {}).get("terminated") or {}
        if terminated.get("message"):
            return terminated["message"]
    return None


def _condition(pod: dict, ctype: str) -> dict:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def events_needed(pods: list[dict], job: dict | None = None) -> str | None:
    """The uid of the object whose events may tell why the runner does not start, or None when they
    cannot add anything.

    Mount failures are reported by the kubelet only as events, and only once the pod is on a node;
    a pod the Job cannot create at all, only as the Job's FailedCreate events.
    """
    pod = newest(pods)
    if pod is None:
        return ((job or {}).get("metadata") or {}).get("uid")
    if has_started(pod) or (pod.get("status") or {}).get("phase") != "Pending":
        return None
    if _condition(pod, "PodScheduled").get("status") != "True":
        return None
    waiting = (runner_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS | CREATE_REASONS:
        return None
    return (pod.get("metadata") or {}).get("uid")


def _missing_claim(name: str, destination_claim: str | None) -> tuple[str, str]:
    if destination_claim and name == destination_claim:
        return planning.DESTINATION_NOT_FOUND, f"the destination's PersistentVolumeClaim {name} does not exist"
    return planning.TARGET_NOT_FOUND, f"the target PersistentVolumeClaim {name} does not exist"


def start(pods: list[dict], events: list[dict], plan: dict, now: datetime,
          unschedulable_timeout: float) -> PodStart:
    """Whether the runner of the Job's newest pod is running, still starting, or never will."""
    pod = newest(pods)
    if pod is None:
        return not_created(events, now, unschedulable_timeout)
    name = (pod.get("metadata") or {}).get("name", "")
    if has_started(pod):
        return PodStart("running", message=f"pod {name} is running")
    destination_claim = planning.destination_claim_name(plan)

    waiting = (runner_status(pod).get("state") or {}).get("waiting") or {}
    reason, detail = waiting.get("reason") or "", waiting.get("message") or ""
    if reason in IMAGE_PULL_REASONS:
        image = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
                      if c.get("name") == RUNNER), "") or runner_status(pod).get("image", "")
        return PodStart("failed", IMAGE_PULL_FAILED,
                        f"pod {name} cannot pull image {image}: {reason}" + (f": {detail}" if detail else ""))
    if reason in CREATE_REASONS:
        return PodStart("failed", POD_START_FAILED,
                        f"pod {name} cannot create its container: {reason}" + (f": {detail}" if detail else ""))

    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        text = scheduled.get("message") or ""
        missing = CLAIM_MISSING.search(text)
        if missing:
            why, what = _missing_claim(missing.group(1), destination_claim)
            return PodStart("failed", why, f"pod {name} cannot be scheduled: {what} ({text})")
        since = _parse_time(scheduled.get("lastTransitionTime")) \
            or _parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or now
        waited = (now - since).total_seconds()
        if waited >= unschedulable_timeout:
            return PodStart("failed", UNSCHEDULABLE,
                            f"pod {name} was not scheduled within {unschedulable_timeout:.0f}s: {text}")
        return PodStart("waiting", message=f"pod {name} is Pending: Unschedulable: {text}; the restore fails "
                                           f"if it is not scheduled within {unschedulable_timeout:.0f}s",
                        recheck_after=max(1.0, unschedulable_timeout - waited))

    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        if event.get("type") != "Warning":
            continue
        text = event.get("message") or ""
        secret = SECRET_MISSING.search(text)
        if secret and event.get("reason") == "FailedMount":
            return PodStart("failed", SECRET_NOT_FOUND,
                            f"pod {name} cannot mount Secret {secret.group(1)}: it does not exist ({text})")
        claim = CLAIM_MISSING.search(text)
        if claim:
            why, what = _missing_claim(claim.group(1), destination_claim)
            return PodStart("failed", why, f"pod {name} cannot start: {what} ({text})")

    phase = (pod.get("status") or {}).get("phase") or "Pending"
    if reason:
        return PodStart("waiting", message=f"pod {name} is {phase}: {reason}")
    if scheduled.get("status") == "False" and scheduled.get("reason"):
        return PodStart("waiting", message=f"pod {name} is {phase}: {scheduled['reason']}")
    return PodStart("waiting", message=f"pod {name} is {phase}")


def _event_time(event: dict) -> str:
    return event.get("firstTimestamp") or event.get("eventTime") or event.get("lastTimestamp") or ""


def not_created(job_events: list[dict], now: datetime, timeout: float) -> PodStart:
    """No pod yet: whether the Job's events say it cannot create one (the Job controller only retries)."""
    failures = sorted((e for e in job_events if e.get("type") == "Warning" and e.get("reason") == "FailedCreate"),
                      key=_event_time)
    if not failures:
        return PodStart("waiting", message="waiting for its pod to start")
    text = failures[-1].get("message") or ""
    account = SERVICE_ACCOUNT_MISSING.search(text)
    if account:
        return PodStart("failed", SERVICE_ACCOUNT_NOT_FOUND,
                        f"its pod cannot be created: ServiceAccount {account.group(1)} does not exist ({text})")
    if "forbidden" in text and "exceeded quota" not in text:
        return PodStart("failed", POD_REJECTED, f"its pod is refused by admission: {text}")
    # A quota may get room, a webhook may come back: wait, up to the same timeout as an unscheduled pod.
    since = _parse_time(_event_time(failures[0])) or now
    waited = (now - since).total_seconds()
    if waited >= timeout:
        return PodStart("failed", POD_CREATE_FAILED, f"its pod could not be created within {timeout:.0f}s: {text}")
    return PodStart("waiting", message=f"its pod cannot be created yet: {text}; the restore fails if it cannot "
                                       f"be created within {timeout:.0f}s",
                    recheck_after=max(1.0, timeout - waited))


# -- Trust: which pods may feed the record ----------------------------------------------
#
# The Job's pods are found by its selector label, which anyone who may create pods can set, and
# the Job controller adopts any orphan that carries it. So a pod counts (its state for
# Queued/Running and fast failures, its termination message as the report) only if the Job
# controls it and its spec is the Job's pod template in everything that decides what runs and
# what it reads. Fields the API server, admission or the scheduler fill in on the pod (resources,
# tolerations, priority, nodeName, imagePullSecrets) do not decide what the runner reports.

UNTRUSTED_POD = "UntrustedPod"
UNTRUSTED_REPORT = "UntrustedReport"

# Fields of a container that decide what runs in it and what it reads, with the value the API
# server gives one left unset (None: no default, compared as it is).
CONTAINER_FIELDS: dict[str, object] = {
    "name": None, "image": None, "command": [], "args": [], "workingDir": "", "env": [], "envFrom": [],
    "volumeMounts": [], "volumeDevices": [], "securityContext": {}, "lifecycle": {}, "livenessProbe": {},
    "readinessProbe": {}, "startupProbe": {}, "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File", "stdin": False, "stdinOnce": False, "tty": False, "restartPolicy": "",
}
POD_FIELDS: dict[str, object] = {
    "serviceAccountName": "default", "automountServiceAccountToken": True, "hostNetwork": False, "hostPID": False,
    "hostIPC": False, "hostUsers": True, "shareProcessNamespace": False, "runtimeClassName": "",
    "securityContext": {}, "hostAliases": [], "dnsPolicy": "ClusterFirst", "dnsConfig": {},
    "enableServiceLinks": True, "restartPolicy": "Always", "os": {}, "resourceClaims": [],
}
# What the ServiceAccount admission plugin adds to a pod that mounts its token (it never touches
# the Job's template): allowed only when the template does not turn the token off.
TOKEN_VOLUME_PREFIX = "kube-api-access-"
TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_MODE = 0o644
# What the cloud identity webhooks add to a pod whose ServiceAccount is bound to a cloud role
# (EKS IRSA and Pod Identity), for a destination with credentialsFromEnvironment: a projected token
# for STS, its mount, and the variables that point the credential chain at it. Allowed only when the
# template names a ServiceAccount, and only these: nothing else may differ, and none of them can
# change what the runner restores or reports (the artifact's sha256 is pinned in the plan).
IDENTITY_VOLUMES = frozenset({"aws-iam-token", "eks-pod-identity-token"})
IDENTITY_ENV = frozenset({"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_REGION",
                          "AWS_DEFAULT_REGION", "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                          "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"})


@dataclass(frozen=True)
class Untrusted:
    """A pod that carries the Job's labels but may not feed the record, and why."""

    name: str
    uid: str
    why: str


def _or(value, default):
    return default if value is None else value


def _image_pull_policy(container: dict) -> str:
    if container.get("imagePullPolicy"):
        return container["imagePullPolicy"]
    image = container.get("image") or ""
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    return "IfNotPresent" if tagged and not image.endswith(":latest") else "Always"


def _container_shape(container: dict, token_volumes: set[str], identity_env: frozenset = frozenset()) -> dict:
    shape = {key: _or(container.get(key), default) for key, default in CONTAINER_FIELDS.items()}
    shape["imagePullPolicy"] = _image_pull_policy(container)
    shape["volumeMounts"] = [m for m in shape["volumeMounts"] if m.get("name") not in token_volumes]
    shape["env"] = [e for e in shape["env"] if e.get("name") not in identity_env]
    # Dynamic resource claims put devices (and what their drivers inject) into the container.
    shape["resourceClaims"] = (container.get("resources") or {}).get("claims") or []
    return shape


def _volume_shape(volume: dict) -> dict:
    """A volume with the defaults the API server writes (defaultMode, a fieldRef's apiVersion)."""
    volume = copy.deepcopy(volume)
    for kind in ("secret", "configMap", "downwardAPI", "projected"):
        if isinstance(volume.get(kind), dict):
            volume[kind].setdefault("defaultMode", DEFAULT_MODE)
    items = list((volume.get("downwardAPI") or {}).get("items") or [])
    for source in (volume.get("projected") or {}).get("sources") or []:
        items += (source.get("downwardAPI") or {}).get("items") or []
    for item in items:
        if isinstance(item.get("fieldRef"), dict):
            item["fieldRef"].setdefault("apiVersion", "v1")
    return volume


def _is_token_volume(volume: dict) -> bool:
    """The projected ServiceAccount token volume, exactly as the ServiceAccount admission plugin makes it."""
    sources = (volume.get("projected") or {}).get("sources") or []
    kinds = [next(iter(s), "") for s in sources]
    return (volume.get("name", "").startswith(TOKEN_VOLUME_PREFIX) and kinds == ["serviceAccountToken", "configMap",
                                                                                   "downwardAPI"]
            and (sources[1]["configMap"] or {}).get("name") == "kube-root-ca.crt")


def _is_identity_volume(volume: dict) -> bool:
    """A cloud identity webhook's token volume: a projected ServiceAccount token and nothing else."""
    sources = (volume.get("projected") or {}).get("sources") or []
    return (volume.get("name") in IDENTITY_VOLUMES and len(volume) == 2 and bool(sources)
            and all(list(s) == ["serviceAccountToken"] for s in sources))


def run_shape(spec: dict, admitted: bool = False, identity: bool = False) -> dict:
    """What a pod spec runs and reads, normalised: equal shapes run the same thing.

    `admitted`: the spec of a pod (not a template), from which the ServiceAccount token volume the
    API server itself adds may be left out. `identity`: the template names a ServiceAccount for
    cloud credentials, so what the identity webhooks add (IDENTITY_*) is left out of both shapes.
    """
    token_volumes = set()
    if admitted and spec.get("automountServiceAccountToken") is not False:
        token_volumes = {v["name"] for v in spec.get("volumes") or [] if _is_token_volume(v)}
    if identity:
        token_volumes |= {v["name"] for v in spec.get("volumes") or [] if _is_identity_volume(v)}
    identity_env = IDENTITY_ENV if identity else frozenset()
    shape: dict = {key: _or(spec.get(key), default) for key, default in POD_FIELDS.items()}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        shape[kind] = [_container_shape(c, token_volumes, identity_env) for c in spec.get(kind) or []]
    shape["volumes"] = sorted((_volume_shape(v) for v in spec.get("volumes") or [] if v["name"] not in token_volumes),
                              key=lambda v: v.get("name", ""))
    return shape


def _differences(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    """The top-level fields (containers: by name and field) in which two shapes differ."""
    out = []
    for key in expected.keys() | actual.keys():
        want, got = expected.get(key), actual.get(key)
        if want == got:
            continue
        if key in ("initContainers", "containers", "ephemeralContainers") and len(want or []) == len(got or []):
            for mine, theirs in zip(want, got):
                name = mine.get("name") or "?"
                out += _differences(mine, theirs, f"{prefix}{key}[{name}].")
        else:
            out.append(prefix + key)
    return sorted(out)


def untrusted_because(pod: dict, job: dict) -> str | None:
    """Why this pod may not feed the record of `job`, or None when it is the Job's own."""
    meta, job_meta = pod.get("metadata") or {}, job.get("metadata") or {}
    controller = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if controller is None or controller.get("kind") != "Job" or controller.get("uid") != job_meta.get("uid"):
        return f"it is not controlled by Job {job_meta.get('name')}"
    template = ((job.get("spec") or {}).get("template")) or {}
    # The runner reads its plan from the pod's own annotation (downward API).
    tmeta = template.get("metadata") or {}
    for field_ in ("annotations", "labels"):
        mine, theirs = tmeta.get(field_) or {}, meta.get(field_) or {}
        changed = sorted(k for k, v in mine.items() if theirs.get(k) != v)
        if changed:
            return f"its {field_} differ from the Job's pod template: {', '.join(changed)}"
    identity = bool((template.get("spec") or {}).get("serviceAccountName"))
    differences = _differences(run_shape(template.get("spec") or {}, identity=identity),
                               run_shape(pod.get("spec") or {}, admitted=True, identity=identity))
    if differences:
        return f"its spec differs from the Job's pod template in {', '.join(differences)}"
    return None


def judge(pods: list[dict], job: dict) -> tuple[list[dict], list[Untrusted]]:
    """The Job's own pods, and those that only carry its labels (with why)."""
    trusted, untrusted = [], []
    for pod in pods:
        why = untrusted_because(pod, job)
        if why is None:
            trusted.append(pod)
        else:
            meta = pod.get("metadata") or {}
            untrusted.append(Untrusted(meta.get("name", ""), meta.get("uid", ""), why))
    return trusted, sorted(untrusted, key=lambda u: u.name)
