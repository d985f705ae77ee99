"""Fetch begins when the runner runs: what the restore pod says about its start. Pure.

A Job only counts its pods as active; a pod that can never start (its image cannot be
pulled, a claim or Secret it mounts does not exist, no node takes it) would sit Pending
until the Job's activeDeadlineSeconds. `start()` reads the newest pod of the Job and the
events about it, and tells whether the runner is running, is still starting, or never will:

    no pod yet / Pending for a passing reason     -> waiting  (the restore stays Queued)
    the runner container is running or has run   -> running  (the restore is Running)
    ErrImagePull, ImagePullBackOff, ...          -> failed: ImagePullFailed
    CreateContainerConfigError, ...              -> failed: PodStartFailed
    persistentvolumeclaim "X" not found          -> failed: TargetNotFound / DestinationNotFound
    secret "X" not found (FailedMount)           -> failed: SecretNotFound
    Unschedulable for longer than the timeout    -> failed: Unschedulable

It never reads a clock or the network: `now` and the timeout are passed in.
"""

from __future__ import annotations

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
START_FAILURES = frozenset({IMAGE_PULL_FAILED, POD_START_FAILED, SECRET_NOT_FOUND, UNSCHEDULABLE,
                            planning.TARGET_NOT_FOUND, planning.DESTINATION_NOT_FOUND})

# The kubelet's waiting reasons of a container that will not start by waiting longer.
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
CREATE_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})

# The scheduler says `persistentvolumeclaim "x" not found`, the kubelet `persistentvolumeclaims "x" not found`.
CLAIM_MISSING = re.compile(r'persistentvolumeclaims? "([^"]+)" (not found|is being deleted)')
SECRET_MISSING = re.compile(r'secrets? "([^"]+)" not found')


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


def events_needed(pods: list[dict]) -> str | None:
    """The uid of the pod whose events may tell why it does not start, or None when they cannot add anything.

    Mount failures are reported by the kubelet only as events, and only once the pod is on a node.
    """
    pod = newest(pods)
    if pod is None or has_started(pod) or (pod.get("status") or {}).get("phase") != "Pending":
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
        return PodStart("waiting", message="waiting for its pod to start")
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
