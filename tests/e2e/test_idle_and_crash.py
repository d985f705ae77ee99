"""Idempotence on a real API server: no writes when idle, and no twin Job after a crash."""

from __future__ import annotations

import time

import pytest

from backups import backup_run, destination, jobs, restore, wait_phase
from cluster_helpers import audit_entries, audit_user
from daoflow_operator import handlers
from daoflow_operator.config import Config
from daoflow_operator.kube import Kube

pytestmark = pytest.mark.cluster

OPERATOR = "system:serviceaccount:daoflow-system:daoflow-operator"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def operator_writes(audit_log, offset: int) -> list[dict]:
    return [e for e in audit_entries(audit_log, offset) if audit_user(e) == OPERATOR and e["verb"] in WRITES]


def test_an_idle_operator_writes_nothing_after_a_restore_has_finished(cluster, namespace, operator):
    if cluster.local is None:
        pytest.skip("counts requests in the local control plane's audit log")
    audit_log = cluster.local.audit_log
    start = audit_log.stat().st_size
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    time.sleep(1)
    before = operator_writes(audit_log, start)
    # The method sees the operator's writes: its status patches of this very restore.
    assert any(e["objectRef"].get("subresource") == "status" and e["objectRef"].get("name") == name
               for e in before), "the audit log shows none of the operator's status writes"
    idle_from = audit_log.stat().st_size
    time.sleep(30)
    idle = operator_writes(audit_log, idle_from)
    assert idle == [], [(e["verb"], e["objectRef"]) for e in idle]
    print(f"writes during the restore: {len(before)}; writes in 30 s idle: {len(idle)}")


class CrashAfterJobCreate(Kube):
    """The API calls of an operator that dies between creating the Job and recording it."""

    def patch_status(self, *args, **kwargs):
        raise SystemExit("killed before the status write")


def test_a_crash_between_job_creation_and_status_write_adopts_the_job(cluster, namespace, operator_kubeconfig):
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    client = cluster.api_client(operator_kubeconfig)
    # The image the operator's Jobs may run (manifests/operator-limits.yaml).
    config = Config(runner_image=cluster.runner_image)
    with pytest.raises(SystemExit):
        handlers.reconcile(CrashAfterJobCreate(client), config, namespace, name)
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == [f"{name}-restore"]
    assert not (cluster.get("backuprestore", name, namespace).get("status") or {}).get("jobRef")

    # The restarted operator plans again, meets AlreadyExists and adopts the Job.
    decision = handlers.reconcile(Kube(client), config, namespace, name)
    assert decision.create_job
    status = cluster.get("backuprestore", name, namespace)["status"]
    assert status["jobRef"] == {"name": f"{name}-restore"} and status["phase"] in ("Queued", "Running")
    assert len(jobs(cluster, namespace)) == 1
