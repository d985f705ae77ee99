"""Queue: may the user who asked restore into the target? Pure functions of what the shell read.

The scope `backup:restore` is the verb `restore` on the BackupRun and on the target itself:
`persistentvolumeclaims/<claim>` for a volume, `secrets/<name>` (the database's credentials) for
PostgreSQL. Without the second, anyone who may restore one BackupRun could aim the operator's Job,
which runs with the operator's rights, at any claim or database of the namespace.

- Who asked is the API server's word: the MutatingAdmissionPolicy `daoflow-record-requester`
  (manifests/scopes.yaml) writes the authenticated user name and groups into two annotations at
  creation, and the ValidatingAdmissionPolicy `daoflow-requester-is-immutable` refuses any later
  change of them. Where those policies are missing, or came after the restore, the annotations are
  whatever the client wrote: the restore is refused, since nobody can be checked.
- The question is asked once, right before the Job would be created (a dry run: when its plan is
  done): a SubjectAccessReview for the requester. The CLI's preview asks for its own user, with a
  SelfSubjectAccessReview.
- A real restore's requester is also asked again, on that same pass, whether they may still
  `restore` the BackupRun (`recheck`): admission checked it at creation, but a restore may wait
  long, and a right revoked meanwhile must stop it (RequesterNoLongerAuthorized). A dry run is not
  asked: it needs only the read scope, and creates nothing to stop.
- An explicit `spec.target` is also checked at admission (the CEL `authorizer`); the operator checks
  it again, so a cluster without the policies is safe too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from . import targets
from .api.models import GROUP
from .planning import Authorization

# Written at admission by the MutatingAdmissionPolicy in manifests/scopes.yaml.
REQUESTED_BY = "backup.daoflow.dev/requested-by"
REQUESTED_BY_GROUPS = "backup.daoflow.dev/requested-by-groups"  # a JSON list of the user's groups
VERB = "restore"

# The admission policies and bindings that record the requester and keep it unchanged, as
# (resource in admissionregistration.k8s.io/v1, name): the annotations are the API server's word
# only where all of them exist, and existed before the restore.
RECORDING_POLICIES = (
    ("mutatingadmissionpolicies", "daoflow-record-requester"),
    ("mutatingadmissionpolicybindings", "daoflow-record-requester"),
    ("validatingadmissionpolicies", "daoflow-requester-is-immutable"),
    ("validatingadmissionpolicybindings", "daoflow-requester-is-immutable"),
)
# Likewise for the decider of a RestoreApproval (manifests/approvals.yaml): status.decidedBy is the API
# server's word only where these exist, and existed before the approval.
DECISION_POLICIES = (
    ("mutatingadmissionpolicies", "daoflow-record-decider"),
    ("mutatingadmissionpolicybindings", "daoflow-record-decider"),
    ("validatingadmissionpolicies", "daoflow-approval-decision"),
    ("validatingadmissionpolicybindings", "daoflow-approval-decision"),
)
APPROVE = "approve"
_KINDS = {"mutatingadmissionpolicies": "MutatingAdmissionPolicy",
          "mutatingadmissionpolicybindings": "MutatingAdmissionPolicyBinding",
          "validatingadmissionpolicies": "ValidatingAdmissionPolicy",
          "validatingadmissionpolicybindings": "ValidatingAdmissionPolicyBinding"}


@dataclass(frozen=True)
class Requester:
    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Review:
    """The question: may `requester` (None: the caller itself) `restore` on `resource/name` in `namespace`?"""

    namespace: str
    resource: str  # persistentvolumeclaims or secrets, of the core group; or backupruns (`recheck`)
    name: str
    target_key: str  # "" for the BackupRun
    requester: Requester | None = None
    caller: str = ""  # without a requester: the caller's own name, when known
    group: str = ""
    verb: str = VERB

    @property
    def who(self) -> str:
        return self.requester.user if self.requester else (self.caller or "you")

    @property
    def needs(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"the verb {self.verb} on {resource}/{self.name} in namespace {self.namespace}"


@dataclass(frozen=True)
class Answer:
    """What the API server answered: allowed or not, with its reason; `error` when it could not say."""

    allowed: bool
    reason: str = ""
    error: str = ""


def requester(restore: dict) -> Requester | None:
    """Who asked, as recorded at admission; None when nothing was recorded.

    A groups annotation that is missing (a restore created before it was recorded) or malformed
    gives no groups: the review can then only allow less, never more.
    """
    annotations = (restore.get("metadata") or {}).get("annotations") or {}
    user = annotations.get(REQUESTED_BY)
    if not user:
        return None
    return Requester(user, parse_groups(annotations.get(REQUESTED_BY_GROUPS)))


def parse_groups(text: str | None) -> tuple[str, ...]:
    """Groups recorded at admission as a JSON list; none when missing or malformed (a review can then
    only allow less, never more)."""
    try:
        groups = json.loads(text or "[]")
    except ValueError:
        return ()
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return ()
    return tuple(groups)


def review(namespace: str, target: dict | None, requester: Requester | None = None) -> Review | None:
    """The question for a plan's target (`plan.target`); None when the target is not valid."""
    key = targets.key(target)
    if key is None:
        return None
    kind, _, name = key.partition("/")
    return Review(namespace, "persistentvolumeclaims" if kind == "pvc" else "secrets", name, key, requester)


def recheck(namespace: str, run_name: str, requester: Requester) -> Review:
    """The question asked again at dispatch: may the requester still restore the BackupRun?"""
    return Review(namespace, "backupruns", run_name, "", requester, group=GROUP)


def approver_recheck(namespace: str, approval_name: str, decider: Requester) -> Review:
    """The question asked at dispatch of a restore with an approval: may its decider still approve it?"""
    return Review(namespace, "restoreapprovals", approval_name, "", decider, group=GROUP, verb=APPROVE)


def parse_time(value: str | None) -> datetime | None:
    """An API timestamp (RFC 3339); None when absent or malformed."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def untrusted(restore: dict, policies: dict[str, dict | None], names=RECORDING_POLICIES,
              field: str = f"annotation {REQUESTED_BY}", where: str = "manifests/scopes.yaml") -> str | None:
    """Why the requester annotations (or, with DECISION_POLICIES, an approval's decidedBy) are not the
    API server's word, or None when they are.

    `policies`: the objects of `names` as read, by resource (None: it does not exist).
    """
    created = parse_time((restore.get("metadata") or {}).get("creationTimestamp"))
    kind = restore.get("kind") or "BackupRestore"
    for resource, name in names:
        obj = policies.get(resource)
        what = f"the {_KINDS[resource]} {name} ({where})"
        if obj is None:
            return f"{what} is not installed, so the {field} is whatever the client wrote"
        since = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
        if created is None or since is None or since >= created:
            return f"{what} was installed after this {kind} was created, so its {field} may be whatever the client wrote"
    return None


def sar_body(question: Review) -> dict:
    """A SubjectAccessReview for the requester, or a SelfSubjectAccessReview without one."""
    attributes = {"namespace": question.namespace, "verb": question.verb, "group": question.group, "resource": question.resource,
                  "name": question.name}
    if question.requester is None:
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": question.requester.user, "groups": list(question.requester.groups),
                     "resourceAttributes": attributes}}


def parse_answer(response: dict | None) -> Answer | None:
    """The answer in a review's response; None when it holds none."""
    status = (response or {}).get("status") if isinstance(response, dict) else None
    if not isinstance(status, dict):
        return None
    if status.get("allowed") is True:
        return Answer(True, reason=status.get("reason") or "")
    return Answer(False, reason=status.get("reason") or "", error=status.get("evaluationError") or "")


def not_asked(question: Review) -> Authorization:
    """The check before the question is asked: a restore that waits shows this, unchanged, until then."""
    return Authorization("unknown", f"not checked yet: whether {question.who} may restore into "
                                    f"{targets.describe(question.target_key)} is asked right before the Job "
                                    "is created")


def nobody(question: Review, why: str) -> Authorization:
    """Refused: there is nobody whose rights can be checked."""
    return Authorization("fail", f"the requester is unknown: {why}; nobody can be checked for {question.needs}")


def unknown_requester(question: Review) -> Authorization:
    return nobody(question, f"the annotation {REQUESTED_BY} was not recorded at admission (install "
                            "manifests/scopes.yaml)")


def judge(question: Review, answer: Answer) -> Authorization:
    """The check from the API server's answer. Anything but allowed is refused."""
    where = targets.describe(question.target_key)
    if answer.allowed:
        return Authorization("ok", f"{question.who} may restore into {where} ({question.needs})")
    detail = f"{question.who} may not restore into {where}: that needs {question.needs} (the scope backup:restore)"
    extra = "; ".join(x for x in (answer.reason, answer.error) if x)
    return Authorization("fail", detail + (f"; {extra}" if extra else ""))


def judge_recheck(question: Review, answer: Answer) -> Authorization:
    """The re-check at dispatch from the API server's answer. Anything but allowed is refused."""
    if answer.allowed:
        return Authorization("ok", f"{question.who} may still restore BackupRun {question.name} ({question.needs}; "
                                   "checked again at dispatch)")
    extra = "; ".join(x for x in (answer.reason, answer.error) if x)
    return Authorization("fail", f"{question.who} may no longer restore BackupRun {question.name}: that needs "
                                 f"{question.needs} (the scope backup:restore), checked again at dispatch, right "
                                 "before the Job would have been created" + (f"; {extra}" if extra else ""))


def could_not_ask(question: Review, error: str) -> Authorization:
    """The CLI's preview, when its question failed: unknown, which does not block a preview."""
    return Authorization("unknown", f"could not check whether {question.who} may restore into "
                                    f"{targets.describe(question.target_key)}: {error}")


def judge_approver(question: Review, answer: Answer) -> Authorization:
    """The decider's right, asked again at dispatch, from the API server's answer. Anything but allowed is refused."""
    if answer.allowed:
        return Authorization("ok", f"{question.who} may still approve RestoreApproval {question.name} "
                                   f"({question.needs}; checked again at dispatch)")
    extra = "; ".join(x for x in (answer.reason, answer.error) if x)
    return Authorization("fail", f"{question.who}, who decided RestoreApproval {question.name}, may no longer approve "
                                 f"it: that needs {question.needs} (the scope approvals:decide), checked again at "
                                 "dispatch, right before the Job would have been created" + (f"; {extra}" if extra else ""))
