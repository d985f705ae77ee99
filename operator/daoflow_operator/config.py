"""The operator's configuration: one class, read from DAOFLOW_-prefixed environment variables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from . import __version__


def _json_map(name: str) -> dict[str, str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} must be a JSON object of strings")
    return value


def _json_list_of_objects(name: str) -> list[dict]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return []
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{name} must be a JSON list of objects")
    return value


@dataclass(frozen=True)
class Config:
    # The one image of the operator and the runner.
    runner_image: str = f"ghcr.io/daoflow-dev/daoflow-operator:{__version__}"
    # Extra annotations for restore pods, e.g. to opt out of a service mesh sidecar.
    job_pod_annotations: dict[str, str] = field(default_factory=dict)
    # Where restore pods may run: tolerations and a nodeSelector for their pod spec (omitted when empty).
    job_pod_tolerations: list[dict] = field(default_factory=list)
    job_node_selector: dict[str, str] = field(default_factory=dict)
    runner_max_members: int = 1_000_000
    runner_max_bytes: int = 1 << 40
    runner_cpu_request: str = "100m"
    runner_memory_request: str = "128Mi"
    runner_memory_limit: str = "512Mi"
    # Retry delays while waiting for a BackupRun, in seconds: doubling from min to max.
    wait_backoff_min: float = 5.0
    wait_backoff_max: float = 300.0
    # A restore pod the scheduler cannot place fails the restore (Unschedulable) after this long.
    unschedulable_timeout_seconds: float = 300.0
    # While a restore pod has not started, its Job and pod are looked at again this often.
    pod_start_poll_seconds: float = 5.0
    # How long a restore pod that is stopped (a cancel, the Job's deadline, a drain) has between SIGTERM
    # and SIGKILL: the runner finishes a commit it has begun or renames the old data back (seconds),
    # then removes what it staged (about a second per 10-50k files on a local disk, longer on network
    # volumes). Data is safe once the renames are undone; a SIGKILL during the clean-up only leaves
    # staged files for the next restore into the target to remove.
    runner_termination_grace_seconds: int = 120
    # A running restore's progress is written into its status at most this often (seconds), and only
    # when it advanced: one pod list and one log read per running restore per interval.
    progress_interval_seconds: float = 10.0
    # With no progress for this long, a running restore is marked Progressing=False/Stalled (seconds).
    stall_timeout_seconds: float = 300.0
    # The port of /metrics (Prometheus); 0: not served.
    metrics_port: int = 0
    # CIDRs an S3 endpoint must resolve into (DAOFLOW_S3_ENDPOINT_ALLOWLIST, comma-separated), checked
    # by the runner after DNS; empty: any address but link-local and cloud metadata ones.
    s3_endpoint_allowlist: tuple[str, ...] = ()
    # Leader election (election.py): the Lease's name, empty for none (one replica, tests, make run),
    # and its namespace (the pod's, from the downward API).
    leader_election_lease: str = ""
    leader_election_namespace: str = "daoflow-system"
    lease_duration_seconds: int = 15
    renew_deadline_seconds: int = 10
    retry_period_seconds: int = 2
    # On SIGTERM, how long the pass in flight may take before the Lease is released anyway.
    shutdown_grace_seconds: float = 20.0

    @classmethod
    def from_env(cls) -> "Config":
        env = os.environ.get
        defaults = cls()
        return cls(
            runner_image=env("DAOFLOW_RUNNER_IMAGE", defaults.runner_image),
            job_pod_annotations=_json_map("DAOFLOW_JOB_POD_ANNOTATIONS"),
            job_pod_tolerations=_json_list_of_objects("DAOFLOW_JOB_POD_TOLERATIONS"),
            job_node_selector=_json_map("DAOFLOW_JOB_NODE_SELECTOR"),
            runner_max_members=int(env("DAOFLOW_RUNNER_MAX_MEMBERS", defaults.runner_max_members)),
            runner_max_bytes=int(env("DAOFLOW_RUNNER_MAX_BYTES", defaults.runner_max_bytes)),
            runner_cpu_request=env("DAOFLOW_RUNNER_CPU_REQUEST", defaults.runner_cpu_request),
            runner_memory_request=env("DAOFLOW_RUNNER_MEMORY_REQUEST", defaults.runner_memory_request),
            runner_memory_limit=env("DAOFLOW_RUNNER_MEMORY_LIMIT", defaults.runner_memory_limit),
            wait_backoff_min=float(env("DAOFLOW_WAIT_BACKOFF_MIN_SECONDS", defaults.wait_backoff_min)),
            wait_backoff_max=float(env("DAOFLOW_WAIT_BACKOFF_MAX_SECONDS", defaults.wait_backoff_max)),
            unschedulable_timeout_seconds=float(env("DAOFLOW_UNSCHEDULABLE_TIMEOUT_SECONDS",
                                                    defaults.unschedulable_timeout_seconds)),
            pod_start_poll_seconds=float(env("DAOFLOW_POD_START_POLL_SECONDS", defaults.pod_start_poll_seconds)),
            runner_termination_grace_seconds=int(env("DAOFLOW_RUNNER_TERMINATION_GRACE_SECONDS",
                                                     defaults.runner_termination_grace_seconds)),
            progress_interval_seconds=float(env("DAOFLOW_PROGRESS_WRITE_INTERVAL_SECONDS",
                                                defaults.progress_interval_seconds)),
            stall_timeout_seconds=float(env("DAOFLOW_STALL_TIMEOUT_SECONDS", defaults.stall_timeout_seconds)),
            metrics_port=int(env("DAOFLOW_METRICS_PORT", defaults.metrics_port)),
            s3_endpoint_allowlist=tuple(n.strip() for n in env("DAOFLOW_S3_ENDPOINT_ALLOWLIST", "").split(",")
                                        if n.strip()),
            leader_election_lease=env("DAOFLOW_LEADER_ELECTION_LEASE", defaults.leader_election_lease),
            leader_election_namespace=env("DAOFLOW_LEADER_ELECTION_NAMESPACE", defaults.leader_election_namespace),
            lease_duration_seconds=int(env("DAOFLOW_LEASE_DURATION_SECONDS", defaults.lease_duration_seconds)),
            renew_deadline_seconds=int(env("DAOFLOW_RENEW_DEADLINE_SECONDS", defaults.renew_deadline_seconds)),
            retry_period_seconds=int(env("DAOFLOW_RETRY_PERIOD_SECONDS", defaults.retry_period_seconds)),
            shutdown_grace_seconds=float(env("DAOFLOW_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds)),
        )
