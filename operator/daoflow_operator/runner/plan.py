"""The runner's plan: the JSON the operator mounts into the Job, parsed and validated.

Pure: `parse_plan` takes a decoded JSON value and returns frozen dataclasses, or raises an
InvalidPlan failure whose message names the field. No file or network access happens here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..paths import relative_path_problem
from ..escaping import escape
from .failures import endpoint_not_allowed, invalid_plan

ARCHIVE_FORMATS = ("tar", "tar+gzip", "tar+zstd")
FORMATS = ARCHIVE_FORMATS + ("postgres-custom",)
EXISTING_DATA = ("FailIfNotEmpty", "Replace", "Merge")
DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_BYTES = 1 << 40  # 1 TiB

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# S3 bucket names (the DNS-compatible rules, plus dots and underscores for older buckets).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{0,254}$", re.IGNORECASE)
_REGION = re.compile(r"^[a-z0-9-]{1,64}$")


@dataclass(frozen=True)
class RestoreRef:
    namespace: str = ""
    name: str = ""
    uid: str = ""


@dataclass(frozen=True)
class Artifact:
    path: str
    format: str
    size_bytes: int
    sha256: str
    # The archive's own counts, when the BackupRun records them: checked before the commit.
    files: int | None = None
    uncompressed_bytes: int | None = None


@dataclass(frozen=True)
class S3Source:
    endpoint: str
    bucket: str
    region: str
    prefix: str
    force_path_style: bool
    # The mounted Secret's folder; None: the default credential chain of the pod's environment.
    credentials_dir: str | None
    # CIDRs the endpoint must resolve into (an operator setting); empty: any address but link-local
    # and cloud metadata ones.
    endpoint_allowlist: tuple[str, ...] = ()
    # A PEM file of the CAs to trust for an https endpoint, instead of the system's.
    ca_bundle_file: str | None = None
    # http:// only when the destination says so: keys and data would travel in clear text.
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class VolumeSource:
    mount_path: str
    sub_path: str


@dataclass(frozen=True)
class VolumeTarget:
    mount_path: str


@dataclass(frozen=True)
class PostgresTarget:
    credentials_dir: str


@dataclass(frozen=True)
class Limits:
    max_members: int = DEFAULT_MAX_MEMBERS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Plan:
    restore: RestoreRef
    artifact: Artifact
    source: S3Source | VolumeSource
    target: VolumeTarget | PostgresTarget
    existing_data: str = "FailIfNotEmpty"
    limits: Limits = field(default_factory=Limits)

    @property
    def s3_key(self) -> str:
        assert isinstance(self.source, S3Source)
        return self.source.prefix + self.artifact.path


def check_relative_path(value: str, what: str, allow_empty: bool = False) -> str:
    """A relative path that cannot climb: no absolute path, `..`, NUL or backslash.

    Returns the path without `.` components and doubled slashes.
    """
    if not isinstance(value, str):
        raise invalid_plan(f"{what} must be a string")
    if value == "" and allow_empty:
        return ""
    problem = relative_path_problem(value)
    if problem:
        raise invalid_plan(f"{what} {problem}")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts and not allow_empty:
        raise invalid_plan(f"{what} must name a file")
    return "/".join(parts)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_plan(f"{what} must be an object")
    return value


def _str(obj: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise invalid_plan(f"{what}.{key} is required")
    if not isinstance(value, str):
        raise invalid_plan(f"{what}.{key} must be a string")
    return value


def _int(obj: dict[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if value is None:
        raise invalid_plan(f"{what}.{key} is required")
    # bool is an int in Python; a plan that says `true` for a size is wrong.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_plan(f"{what}.{key} must be an integer")
    return value


def _absolute_dir(obj: dict[str, Any], key: str, what: str) -> str:
    value = _str(obj, key, what)
    if not value.startswith("/") or "\x00" in value:
        raise invalid_plan(f"{what}.{key} must be an absolute path")
    return value


def parse_artifact(raw: Any) -> Artifact:
    obj = _obj(raw, "artifact")
    path = check_relative_path(_str(obj, "path", "artifact"), "artifact.path")
    fmt = _str(obj, "format", "artifact")
    if fmt not in FORMATS:
        raise invalid_plan(f"artifact.format must be one of {', '.join(FORMATS)}")
    size = _int(obj, "sizeBytes", "artifact")
    if size < 0:
        raise invalid_plan("artifact.sizeBytes must not be negative")
    sha = _str(obj, "sha256", "artifact").lower()
    if not _SHA256.match(sha):
        raise invalid_plan("artifact.sha256 must be 64 hexadecimal characters")
    counts = {}
    for key, name in (("files", "files"), ("uncompressedBytes", "uncompressed_bytes")):
        if obj.get(key) is not None:
            counts[name] = _int(obj, key, "artifact")
            if counts[name] < 0:
                raise invalid_plan(f"artifact.{key} must not be negative")
    return Artifact(path=path, format=fmt, size_bytes=size, sha256=sha, **counts)


def _network(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def parse_source(raw: Any) -> S3Source | VolumeSource:
    obj = _obj(raw, "source")
    kind = obj.get("type")
    if kind == "s3":
        endpoint = _str(obj, "endpoint", "source")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid_plan("source.endpoint must be an http or https URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise invalid_plan("source.endpoint must not carry a query, fragment or user")
        bucket = _str(obj, "bucket", "source")
        if not _BUCKET.match(bucket):
            raise invalid_plan("source.bucket must be a valid bucket name")
        region = _str(obj, "region", "source", "us-east-1") or "us-east-1"
        if not _REGION.match(region):
            raise invalid_plan("source.region must be a region name such as us-east-1")
        prefix = _str(obj, "prefix", "source", "")
        if prefix:
            # The key is prefix + path; the prefix is held to the same rules as the path.
            if prefix.startswith("/") or "\x00" in prefix or "\\" in prefix:
                raise invalid_plan("source.prefix must be relative, without NUL or backslash")
            if ".." in prefix.split("/"):
                raise invalid_plan("source.prefix must not contain '..'")
        force = obj.get("forcePathStyle", False)
        if not isinstance(force, bool):
            raise invalid_plan("source.forcePathStyle must be a boolean")
        creds = obj.get("credentialsDir")
        if creds is not None and (not isinstance(creds, str) or not creds.startswith("/")):
            raise invalid_plan("source.credentialsDir must be an absolute path")
        ca_bundle = obj.get("caBundleFile")
        if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle.startswith("/")
                                      or "\x00" in ca_bundle):
            raise invalid_plan("source.caBundleFile must be an absolute path")
        insecure = obj.get("allowInsecureHTTP", False)
        if not isinstance(insecure, bool):
            raise invalid_plan("source.allowInsecureHTTP must be a boolean")
        if parts.scheme == "http" and not insecure:
            raise endpoint_not_allowed(f"the endpoint {escape(endpoint)} uses http://, in clear text, and the "
                                       "destination does not set allowInsecureHTTP")
        allowlist = obj.get("endpointAllowlist", [])
        if not isinstance(allowlist, list) or not all(isinstance(n, str) and _network(n) for n in allowlist):
            raise invalid_plan("source.endpointAllowlist must be a list of CIDRs such as 10.0.0.0/8")
        return S3Source(
            endpoint=endpoint.rstrip("/"),
            bucket=bucket,
            region=region,
            prefix=prefix,
            force_path_style=force,
            credentials_dir=creds,
            endpoint_allowlist=tuple(allowlist),
            ca_bundle_file=ca_bundle,
            allow_insecure_http=insecure,
        )
    if kind == "volume":
        mount = _absolute_dir(obj, "mountPath", "source")
        sub = check_relative_path(
            _str(obj, "subPath", "source", ""), "source.subPath", allow_empty=True
        )
        return VolumeSource(mount_path=mount, sub_path=sub)
    raise invalid_plan("source.type must be 's3' or 'volume'")


def parse_target(raw: Any) -> VolumeTarget | PostgresTarget:
    obj = _obj(raw, "target")
    kind = obj.get("type")
    if kind == "volume":
        return VolumeTarget(mount_path=_absolute_dir(obj, "mountPath", "target"))
    if kind == "postgres":
        return PostgresTarget(credentials_dir=_absolute_dir(obj, "credentialsDir", "target"))
    raise invalid_plan("target.type must be 'volume' or 'postgres'")


def parse_limits(raw: Any) -> Limits:
    if raw is None:
        return Limits()
    obj = _obj(raw, "limits")
    members = _int(obj, "maxMembers", "limits", DEFAULT_MAX_MEMBERS)
    size = _int(obj, "maxBytes", "limits", DEFAULT_MAX_BYTES)
    if members <= 0 or size <= 0:
        raise invalid_plan("limits.maxMembers and limits.maxBytes must be positive")
    return Limits(max_members=members, max_bytes=size)


def parse_plan(raw: Any) -> Plan:
    """Validate a decoded plan. Raises RunnerFailure(InvalidPlan) naming the bad field."""
    obj = _obj(raw, "plan")
    ref = obj.get("restore") or {}
    if not isinstance(ref, dict):
        raise invalid_plan("restore must be an object")
    restore = RestoreRef(
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        uid=str(ref.get("uid", "")),
    )
    artifact = parse_artifact(obj.get("artifact"))
    source = parse_source(obj.get("source"))
    target = parse_target(obj.get("target"))
    existing = obj.get("existingData", "FailIfNotEmpty")
    if existing not in EXISTING_DATA:
        raise invalid_plan(f"existingData must be one of {', '.join(EXISTING_DATA)}")
    if isinstance(target, PostgresTarget) and artifact.format != "postgres-custom":
        raise invalid_plan("a postgres target needs an artifact of format postgres-custom")
    if isinstance(target, VolumeTarget) and artifact.format not in ARCHIVE_FORMATS:
        raise invalid_plan("a volume target needs an artifact of format tar, tar+gzip or tar+zstd")
    return Plan(
        restore=restore,
        artifact=artifact,
        source=source,
        target=target,
        existing_data=existing,
        limits=parse_limits(obj.get("limits")),
    )
