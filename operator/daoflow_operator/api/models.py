"""One pydantic model per kind: the single source of truth for the API.

The CRDs in manifests/crds/ are generated from these models (`make crds`), and a test fails
when the two drift apart. Field names are Python's; the API's camelCase names are
their aliases. Everything Kubernetes-specific that JSON Schema cannot say (CEL
rules, printer columns, list types) is attached here too, next to the field it is about.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "backup.daoflow.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# An object name in the same namespace (a DNS-1123 subdomain).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"rule": rule, "message": message, **extra}


class Model(BaseModel):
    # Unknown fields are ignored when reading objects: the API server prunes them anyway,
    # and an older operator must still read objects written by a newer schema.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        # CEL rules live on the model they are about; the CRD generator carries them over.
        schema = handler(core_schema)
        rules = cls.__dict__.get("x_validations")
        if rules:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = rules
        return schema

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Name = Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]

# A folder inside a volume: relative, made of plain characters, never climbing out with "..".
# The pattern (RE2, no look-ahead) bounds the characters and refuses a leading "/"; the CEL rule
# (on the model that holds the field) refuses a ".." component and says so with one message.
SUB_PATH_CHARS = r"^([A-Za-z0-9._~@+=,-][A-Za-z0-9._~@+=,/-]*)?$"
SubPath = Annotated[str, Field(max_length=512, pattern=SUB_PATH_CHARS,
                               description="A relative folder inside the volume: letters, digits and ._~@+=,- "
                                           "separated by /, with no .. component.")]
SUB_PATH_RULE = cel(
    "!has(self.subPath) || (!self.subPath.startsWith('/') && self.subPath != '..' && !self.subPath.startsWith('../')"
    " && !self.subPath.endsWith('/..') && !self.subPath.contains('/../'))",
    "subPath must be a relative path inside the volume: it must not start with / nor have a .. component", fieldPath=".subPath")


class LocalObjectReference(Model):
    """A reference to an object of a known kind in the same namespace."""

    name: Name


# -- BackupDestination ---------------------------------------------------------------------


# A key of a ConfigMap or Secret (the Kubernetes rule for data keys).
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class KeySelector(Model):
    """One key of a ConfigMap or Secret in the same namespace."""

    name: Name
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=DATA_KEY_PATTERN)]


class CABundleSource(Model):
    x_validations: ClassVar = [
        cel("has(self.configMapKeyRef) != has(self.secretKeyRef)",
            "exactly one of configMapKeyRef or secretKeyRef must be set"),
    ]
    config_map_key_ref: KeySelector | None = Field(None, description="A ConfigMap key holding PEM certificates.")
    secret_key_ref: KeySelector | None = Field(None, description="A Secret key holding PEM certificates.")


class CredentialsFromEnvironment(Model):
    service_account_name: Name | None = Field(
        None, description="The ServiceAccount the restore pod runs under, e.g. one annotated for IRSA "
                          "(eks.amazonaws.com/role-arn) or bound by an EKS Pod Identity association. "
                          "Default: the namespace's default ServiceAccount.")


class S3Destination(Model):
    x_validations: ClassVar = [
        cel("self.endpoint.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)",
            "endpoint must use https:// unless allowInsecureHTTP is true", fieldPath=".endpoint"),
        cel("has(self.credentialsSecretRef) != has(self.credentialsFromEnvironment)",
            "exactly one of credentialsSecretRef or credentialsFromEnvironment must be set"),
        cel("!has(self.caBundle) || self.endpoint.startsWith('https://')",
            "caBundle may only be set with an https:// endpoint", fieldPath=".caBundle"),
    ]
    endpoint: Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s/]+(/.*)?$",
                                   description="URL of the S3-compatible endpoint, e.g. https://s3.eu-west-1.amazonaws.com.")]
    allow_insecure_http: bool = Field(
        False, alias="allowInsecureHTTP",
        description="Allow an http:// endpoint: the access key id, the session token and the data then travel "
                    "in clear text. Off by default: https:// is required.")
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")]
    region: Annotated[str, Field(max_length=64)] = "us-east-1"
    prefix: Annotated[str, Field(max_length=1024, description="Key prefix under which artifact paths are resolved.")] = ""
    force_path_style: bool = Field(False, description="Address the bucket as endpoint/bucket instead of bucket.endpoint.")
    credentials_secret_ref: LocalObjectReference | None = Field(
        None, description="A Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally "
                          "AWS_SESSION_TOKEN). One of credentialsSecretRef or credentialsFromEnvironment.")
    credentials_from_environment: CredentialsFromEnvironment | None = Field(
        None, description="Take the credentials from the restore pod's environment through the default AWS "
                          "credential chain (web identity/IRSA, EKS Pod Identity, instance metadata, ...). "
                          "One of credentialsSecretRef or credentialsFromEnvironment.")
    ca_bundle: CABundleSource | None = Field(
        None, description="PEM certificates of the CAs that sign the endpoint's certificate, trusted instead of "
                          "the system's CAs (a private CA). Only with an https:// endpoint.")


class PersistentVolumeClaimDestination(Model):
    x_validations: ClassVar = [SUB_PATH_RULE]
    claim_name: Name
    sub_path: SubPath = ""


class BackupDestinationSpec(Model):
    x_validations: ClassVar = [
        cel("has(self.s3) != has(self.persistentVolumeClaim)",
            "exactly one of s3 or persistentVolumeClaim must be set"),
    ]
    s3: S3Destination | None = None
    persistent_volume_claim: PersistentVolumeClaimDestination | None = None


class BackupDestination(Model):
    """Where backup artifacts live: an S3 bucket or a shared volume."""

    kind: ClassVar = "BackupDestination"
    plural: ClassVar = "backupdestinations"
    short_names: ClassVar = ["bdest"]
    printer_columns: ClassVar = [
        {"name": "S3-Bucket", "type": "string", "jsonPath": ".spec.s3.bucket"},
        {"name": "Claim", "type": "string", "jsonPath": ".spec.persistentVolumeClaim.claimName"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    spec: BackupDestinationSpec
    status: dict[str, Any] | None = None


# -- BackupRun -----------------------------------------------------------------------------


class DatabaseSource(Model):
    secret_ref: LocalObjectReference = Field(
        description="A Secret with host, port, dbname, user and password of the database.")


class PersistentVolumeClaimSource(Model):
    x_validations: ClassVar = [SUB_PATH_RULE]
    claim_name: Name
    sub_path: SubPath = ""


class BackupSource(Model):
    x_validations: ClassVar = [
        # Exactly one, matching the type: a volume source that also names a database is refused.
        cel("self.type == 'volume' ? has(self.persistentVolumeClaim) && !has(self.database)"
            " : has(self.database) && !has(self.persistentVolumeClaim)",
            "a volume source must set persistentVolumeClaim and not database, and a postgres source must set "
            "database and not persistentVolumeClaim"),
    ]
    type: Literal["volume", "postgres"]
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    database: DatabaseSource | None = None


class BackupRunSpec(Model):
    destination_ref: LocalObjectReference
    source: BackupSource


class Artifact(Model):
    path: Annotated[str, Field(max_length=4096, description="Relative to the destination.")] = ""
    format: Literal["tar", "tar+gzip", "tar+zstd", "postgres-custom"] | None = None
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None
    files: Annotated[int, Field(ge=0)] | None = Field(
        None, description="For a tar archive: its members that a restore creates (regular files, folders, "
                          "symlinks and hard links, each repeat of a name too), not counting the archive's "
                          "root ./ or extended headers. Checked by the restore before its commit.")
    uncompressed_bytes: Annotated[int, Field(ge=0)] | None = Field(
        None, description="For a tar archive: the sum of the sizes of its regular-file members (hard links add "
                          "nothing). Checked by the restore before its commit.")


class BackupRunStatus(Model):
    phase: Literal["Queued", "Running", "Succeeded", "Failed"] | None = None
    artifact: Artifact | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


class BackupRun(Model):
    """The record of one backup. Written by whatever takes backups; the operator only reads it."""

    kind: ClassVar = "BackupRun"
    plural: ClassVar = "backupruns"
    short_names: ClassVar = ["brun"]
    printer_columns: ClassVar = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.type"},
        {"name": "Format", "type": "string", "jsonPath": ".status.artifact.format"},
        {"name": "Size", "type": "integer", "jsonPath": ".status.artifact.sizeBytes"},
        {"name": "Completed", "type": "date", "jsonPath": ".status.completionTime"},
        {"name": "Error", "type": "string", "jsonPath": ".status.error", "priority": 1},
    ]
    spec: BackupRunSpec
    status: BackupRunStatus | None = None


# -- BackupRestore -------------------------------------------------------------------------


class RestoreTarget(Model):
    x_validations: ClassVar = [
        cel("has(self.persistentVolumeClaim) != has(self.database)",
            "exactly one of persistentVolumeClaim or database must be set"),
    ]
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    database: DatabaseSource | None = None


ExistingData = Literal["FailIfNotEmpty", "Replace", "Merge"]


class BackupRestoreSpec(Model):
    x_validations: ClassVar = [
        cel("self == oldSelf", "spec is immutable: create a new BackupRestore"),
    ]
    backup_run_ref: LocalObjectReference
    dry_run: bool = Field(False, description="Validate and plan only: no Job is created and nothing is restored.")
    target: RestoreTarget | None = Field(
        None, description="Where to restore. By default, back into the BackupRun's own source, in place.")
    existing_data: ExistingData = Field(
        "FailIfNotEmpty",
        description="FailIfNotEmpty refuses a target with data; Replace keeps the old data aside until the "
                    "restore has succeeded and puts it back on failure; Merge overwrites the archive's files only.")
    expected_plan_hash: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = Field(
        None, description="The planHash of a previewed plan. The restore fails with PlanDrifted if today's plan differs.")
    approval_ref: LocalObjectReference | None = Field(
        None, description="A RestoreApproval of this plan. A real restore then waits (AwaitingApproval) until it is "
                          "decided, and runs only if it is approved, unexpired, unused, for today's plan, and decided "
                          "by someone other than the requester who still holds the verb approve.")
    active_deadline_seconds: Annotated[int, Field(ge=60, le=604800)] = Field(
        3600, description="How long the restore Job may run before it is stopped and the restore fails.")
    # The floor is low enough for a test to see a deadline pass; the ceiling is the Job's.
    wait_timeout_seconds: Annotated[int, Field(ge=30, le=604800)] = Field(
        3600, description="How long the restore may wait before its Job exists (for its BackupRun to exist and "
                          "succeed, for its target to be free), counted from its creation. When it has passed "
                          "without a Job, the restore is Rejected with WaitDeadlineExceeded.")


class Condition(Model):
    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)] = ""
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class PreflightCheck(Model):
    name: str
    status: Literal["ok", "warn", "fail", "unknown"]
    detail: str


class PinnedBackupRun(Model):
    name: str
    uid: str = ""
    resource_version: str = ""
    completion_time: str | None = None


class PlannedArtifact(Model):
    destination: str
    destination_type: Literal["s3", "persistentVolumeClaim"] | None = None
    location: str = Field("", description="Where the artifact is fetched from, e.g. s3://bucket/prefix/path.")
    path: str
    format: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    files: int | None = None
    uncompressed_bytes: int | None = None


class PlannedTarget(Model):
    type: Literal["volume", "postgres"] | None = None
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    database: DatabaseSource | None = None
    in_place: bool = False
    existing_data: ExistingData = "FailIfNotEmpty"


class PlanStep(Model):
    step: Literal["validate", "queue", "fetch", "execute", "verify", "record"]
    description: str


class ApprovalRequestTemplate(Model):
    required_scope: str = "approvals:decide"
    backup_run_ref: LocalObjectReference
    plan_hash: str
    reason: str = ""


class RestorePlan(Model):
    is_ready: bool
    plan_hash: str
    backup_run: PinnedBackupRun
    artifact: PlannedArtifact | None = None
    target: PlannedTarget | None = None
    preflight_checks: list[PreflightCheck] = []
    steps: list[PlanStep] = []
    execute_command: str = ""
    approval_request: ApprovalRequestTemplate | None = None


class RestoreResult(Model):
    bytes: int | None = None
    files: int | None = None
    sha256: str | None = None
    verified: bool | None = None
    duration_seconds: float | None = None
    reason: str | None = None
    message: str | None = None


class RestoreProgress(Model):
    """What the runner reported last, written at most once per progress interval while it runs."""

    bytes_done: int = Field(ge=0, description="Bytes of the artifact fetched and restored so far.")
    bytes_total: int | None = Field(None, ge=0, description="The artifact's size, from the plan.")
    percent: int | None = Field(None, ge=0, le=100,
                                description="At most 99 until the restore has succeeded: fetched is not committed.")
    files_done: int = Field(0, ge=0)
    throughput_bytes_per_second: int | None = Field(None, ge=0, description="Since the previous progress write.")
    eta_seconds: int | None = Field(None, ge=0)
    last_progress_time: datetime | None = Field(None, description="When progress last advanced.")


class AuditEntry(Model):
    time: datetime
    step: Literal["preview", "validate", "queue", "fetch", "execute", "verify", "record"]
    outcome: Literal["ok", "waiting", "failed", "rejected"]
    message: Annotated[str, Field(max_length=1024)]


class BackupRestoreStatus(Model):
    observed_generation: int | None = None
    phase: Literal["Pending", "Planned", "AwaitingApproval", "Queued", "Running", "Succeeded", "Failed",
                   "Cancelled", "Rejected"] | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    plan: RestorePlan | None = None
    job_ref: LocalObjectReference | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    result: RestoreResult | None = None
    progress: RestoreProgress | None = None
    follow_up: Annotated[str, Field(max_length=4096)] | None = None
    requested_by: str | None = None
    wait_deadline_time: datetime | None = Field(
        None, description="creationTimestamp + spec.waitTimeoutSeconds: no Job is created after it.")
    approved_by: str | None = None
    audit_trail: list[AuditEntry] = Field(default_factory=list, max_length=64)


class BackupRestore(Model):
    """One restore operation, and its permanent record."""

    kind: ClassVar = "BackupRestore"
    plural: ClassVar = "backuprestores"
    short_names: ClassVar = ["brestore", "brs"]
    printer_columns: ClassVar = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "BackupRun", "type": "string", "jsonPath": ".spec.backupRunRef.name"},
        {"name": "Dry-Run", "type": "boolean", "jsonPath": ".spec.dryRun"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Message", "type": "string", "priority": 1,
         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"},
    ]
    spec: BackupRestoreSpec
    status: BackupRestoreStatus | None = None


# -- RestoreApproval -----------------------------------------------------------------------

# DaoFlow's approval requests expire after 7 hours.
DEFAULT_APPROVAL_TTL_SECONDS = 7 * 3600


class RestoreApprovalSpec(Model):
    x_validations: ClassVar = [
        cel("self == oldSelf", "spec is immutable: request a new RestoreApproval"),
    ]
    backup_run_ref: LocalObjectReference
    plan_hash: Annotated[str, Field(pattern=SHA256_PATTERN)] = Field(
        description="The planHash of the dry-run plan that was reviewed.")
    reason: Annotated[str, Field(max_length=1024)] = ""
    ttl_seconds: Annotated[int, Field(ge=10, le=604800)] = Field(
        DEFAULT_APPROVAL_TTL_SECONDS,
        description="How long the approval may be used, counted from its creationTimestamp (set by the API server): "
                    "it expires at creationTimestamp + ttlSeconds, decided or not.")


class ApprovalUse(Model):
    name: Name
    uid: Annotated[str, Field(max_length=128)]


class RestoreApprovalStatus(Model):
    decision: Literal["Approved", "Rejected"] | None = Field(
        None, description="Written once by the decider through the status subresource; never changed afterwards.")
    comment: Annotated[str, Field(max_length=1024)] | None = None
    decided_by: str | None = Field(
        None, description="The decider as the API server authenticated them: recorded at admission with the decision.")
    decided_by_groups: str | None = Field(
        None, description="The decider's groups, a JSON list, recorded with decidedBy.")
    decided_time: datetime | None = Field(
        None, description="When the operator first saw the decision (the API server's audit log holds the write).")
    expires_at: datetime | None = Field(
        None, description="creationTimestamp + spec.ttlSeconds, written by the operator.")
    phase: Literal["Pending", "Approved", "Rejected", "Used", "Expired"] | None = None
    used_by: ApprovalUse | None = Field(
        None, description="The BackupRestore that consumed the approval: written once, by the operator only.")
    used_time: datetime | None = None


class RestoreApproval(Model):
    """A request for a second person's approval of one restore plan; decided once, used once."""

    kind: ClassVar = "RestoreApproval"
    plural: ClassVar = "restoreapprovals"
    short_names: ClassVar = ["rapproval"]
    printer_columns: ClassVar = [
        {"name": "Decision", "type": "string", "jsonPath": ".status.decision"},
        {"name": "BackupRun", "type": "string", "jsonPath": ".spec.backupRunRef.name"},
        {"name": "Plan", "type": "string", "jsonPath": ".spec.planHash"},
        {"name": "Requested-By", "type": "string",
         "jsonPath": ".metadata.annotations.backup\\.daoflow\\.dev/requested-by"},
        {"name": "Decided-By", "type": "string", "jsonPath": ".status.decidedBy"},
        # A string: kubectl shows a date column as an age, and a time to come as <invalid>.
        {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    spec: RestoreApprovalSpec
    status: RestoreApprovalStatus | None = None


KINDS: tuple[type[Model], ...] = (BackupDestination, BackupRun, BackupRestore, RestoreApproval)
