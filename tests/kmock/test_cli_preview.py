"""The CLI's preview reads the target claim too; without access to it, the check is unknown, not a crash."""

from __future__ import annotations

import asyncio

import kmock
import kubernetes
import pytest

from daoflow_operator import cli
from daoflow_operator.api import models
from kmock_world import CLAIMS, declare


@pytest.fixture
def k8s(kmock):
    declare(kmock)
    return kmock


def client_for(k8s) -> kubernetes.client.ApiClient:
    cfg = kubernetes.client.Configuration()
    cfg.host = str(k8s.url).rstrip("/")
    return kubernetes.client.ApiClient(cfg)


async def preview(k8s, **spec) -> cli.planning.PlanResult:
    s = models.BackupRestoreSpec.model_validate({"backupRunRef": {"name": "nightly"}, "dryRun": True, **spec})
    return await asyncio.to_thread(cli.compute_plan, client_for(k8s), "ns", s)


def target_check(result) -> dict:
    return next(c.dump() for c in result.plan.preflight_checks if c.name == "targetClaim")


async def test_the_preview_checks_the_target_claim(k8s):
    result = await preview(k8s)
    assert target_check(result) == {"name": "targetClaim", "status": "ok", "detail": "PersistentVolumeClaim data is Bound"}
    assert [r.url.path for r in k8s][-1] == "/api/v1/namespaces/ns/persistentvolumeclaims/data"


async def test_a_preview_into_a_missing_claim_is_rejected(k8s):
    result = await preview(k8s, target={"persistentVolumeClaim": {"claimName": "nope"}})
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", "TargetNotFound")
    assert target_check(result)["status"] == "fail"


async def test_a_preview_without_access_to_the_claim_says_unknown(k8s):
    k8s["get", kmock.resource(CLAIMS)] << 403 << {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": 'persistentvolumeclaims "data" is forbidden: User "alice" cannot get resource'}
    result = await preview(k8s)
    check = target_check(result)
    assert check["status"] == "unknown"
    assert check["detail"].startswith("PersistentVolumeClaim data: not checked: your credentials cannot read it")
    assert "forbidden" in check["detail"]
    assert result.verdict.outcome == "ready" and result.plan.is_ready
