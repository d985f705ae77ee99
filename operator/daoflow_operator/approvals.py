"""Approval gates, as pure functions: a RestoreApproval and a restore in, a verdict out.

A real restore with `spec.approvalRef` waits (AwaitingApproval) until its RestoreApproval is
decided, then runs only if, at the moment its Job would be created:

1. the decision is Approved (ApprovalRejected);
2. the approval has not expired: creationTimestamp + spec.ttlSeconds, both fixed by the API server
   (ApprovalExpired);
3. its backupRunRef and planHash are today's plan's (ApprovalPlanMismatch); the hash pins the
   BackupRun's uid, the artifact, the destination and the target;
4. the restore's requester is not the decider (SelfApproval);
5. the decider still holds the verb approve: a SubjectAccessReview (access.approver_recheck,
   ApproverNoLongerAuthorized);
6. it is unused, or used by this very restore: the claim is a conditional write of status.usedBy
   (kube.claim_approval), so of two restores racing for one approval only one gets it
   (ApprovalAlreadyUsed).

Checks 1-4 and 6 are read here; 5 is asked by the shell; the claim is written by the shell.
The decider's identity (status.decidedBy, decidedByGroups) is recorded at admission
(manifests/approvals.yaml), never by the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .access import Requester, parse_groups, parse_time
from .api import models

AWAITING_APPROVAL = "AwaitingApproval"
APPROVAL_NOT_FOUND = "ApprovalNotFound"
APPROVED = "Approved"
APPROVAL_REJECTED = "ApprovalRejected"
APPROVAL_EXPIRED = "ApprovalExpired"
APPROVAL_PLAN_MISMATCH = "ApprovalPlanMismatch"
SELF_APPROVAL = "SelfApproval"
APPROVER_NO_LONGER_AUTHORIZED = "ApproverNoLongerAuthorized"
APPROVAL_ALREADY_USED = "ApprovalAlreadyUsed"

REASONS = (APPROVAL_REJECTED, APPROVAL_EXPIRED, APPROVAL_PLAN_MISMATCH, SELF_APPROVAL, APPROVER_NO_LONGER_AUTHORIZED,
           APPROVAL_ALREADY_USED)


@dataclass(frozen=True)
class Gate:
    """What the approval allows: wait for it, go ahead, or reject the restore for good."""

    state: Literal["await", "ready", "reject"]
    reason: str
    message: str
    expires: datetime | None = None
    decider: Requester | None = None
    used_by_us: bool = False  # already claimed by this restore (a previous pass, before a crash)
    resource_version: str = ""  # of the approval as read: the claim is conditional on it
    decided_time: str = ""


def expires_at(approval: dict) -> datetime | None:
    """creationTimestamp + spec.ttlSeconds: both set by the API server (the TTL by its schema's bounds),
    so a client can neither backdate nor stretch it. None without a creationTimestamp."""
    created = parse_time((approval.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return None
    spec = models.RestoreApprovalSpec.model_validate(approval.get("spec") or {})
    return created + timedelta(seconds=spec.ttl_seconds)


def decider(approval: dict) -> Requester | None:
    """Who decided, as recorded at admission; None before a decision."""
    status = approval.get("status") or {}
    if not status.get("decision") or not status.get("decidedBy"):
        return None
    return Requester(status["decidedBy"], parse_groups(status.get("decidedByGroups")))


def fmt(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else "an unknown time"


def judge(approval: dict | None, name: str, run_name: str, plan_hash: str, requester: Requester | None,
          restore_uid: str, now: datetime) -> Gate:
    """Checks 1-4 and 6 of the approval named `name`, for today's plan. Pure."""
    if approval is None:
        return Gate("await", APPROVAL_NOT_FOUND, f"RestoreApproval {name} does not exist (yet); the restore waits "
                                                 "for it")
    spec = models.RestoreApprovalSpec.model_validate(approval.get("spec") or {})
    status = approval.get("status") or {}
    expires = expires_at(approval)
    who = decider(approval)
    version = (approval.get("metadata") or {}).get("resourceVersion", "")
    comment = f" ({status['comment']})" if status.get("comment") else ""
    if status.get("decision") == "Rejected":
        return Gate("reject", APPROVAL_REJECTED, f"RestoreApproval {name} was rejected by "
                                                 f"{who.user if who else 'an unknown user'}{comment}", expires)
    if expires is None or now >= expires:
        return Gate("reject", APPROVAL_EXPIRED, f"RestoreApproval {name} expired at {fmt(expires)} "
                                                f"({spec.ttl_seconds} s after its creation, spec.ttlSeconds)"
                                                + ("" if status.get("decision") else " before it was decided"),
                    expires)
    if status.get("decision") != "Approved" or who is None:
        return Gate("await", AWAITING_APPROVAL, f"waiting for RestoreApproval {name} to be decided by a user with "
                                                f"the scope approvals:decide (it expires at {fmt(expires)})", expires)
    if spec.backup_run_ref.name != run_name or spec.plan_hash != plan_hash:
        return Gate("reject", APPROVAL_PLAN_MISMATCH,
                    f"RestoreApproval {name} approved plan {spec.plan_hash[:12]} of BackupRun "
                    f"{spec.backup_run_ref.name}, but today's plan is {plan_hash[:12]} of BackupRun {run_name}: "
                    "request an approval of today's plan", expires, who)
    if requester is not None and requester.user == who.user:
        return Gate("reject", SELF_APPROVAL, f"RestoreApproval {name} was decided by {who.user}, who requested this "
                                             "restore: a restore needs the approval of someone else", expires, who)
    used = status.get("usedBy") or {}
    if used and used.get("uid") != restore_uid:
        return Gate("reject", APPROVAL_ALREADY_USED, f"RestoreApproval {name} was already used by BackupRestore "
                                                     f"{used.get('name')}; an approval is good for one restore",
                    expires, who)
    return Gate("ready", APPROVED, f"approved by {who.user} in RestoreApproval {name}{comment} for plan "
                                   f"{plan_hash[:12]}", expires, who, used_by_us=bool(used),
                resource_version=version, decided_time=status.get("decidedTime") or "")


def claim_patch(restore: dict, resource_version: str, now: datetime) -> dict:
    """The conditional status write that marks the approval used by this restore."""
    meta = restore["metadata"]
    return {"metadata": {"resourceVersion": resource_version},
            "status": {"usedBy": {"name": meta["name"], "uid": meta["uid"]}, "usedTime": fmt(now), "phase": "Used"}}


def phase(approval: dict, now: datetime) -> str:
    status = approval.get("status") or {}
    if status.get("usedBy"):
        return "Used"
    if status.get("decision") == "Rejected":
        return "Rejected"
    expires = expires_at(approval)
    if expires is not None and now >= expires:
        return "Expired"
    return "Approved" if status.get("decision") == "Approved" else "Pending"


def status_patch(approval: dict, now: datetime) -> tuple[dict, float | None]:
    """What the operator writes on an approval's status (its expiry, when it saw the decision, its phase),
    as a merge patch ({} when nothing changed), and when to look again (at its expiry)."""
    status = approval.get("status") or {}
    expires = expires_at(approval)
    want = {"expiresAt": fmt(expires) if expires else None, "phase": phase(approval, now)}
    if status.get("decision") and not status.get("decidedTime"):
        want["decidedTime"] = fmt(now)
    patch = {k: v for k, v in want.items() if v is not None and status.get(k) != v}
    again = None
    if want["phase"] in ("Pending", "Approved") and expires is not None:
        again = max((expires - now).total_seconds(), 0.0) + 1.0
    return patch, again
