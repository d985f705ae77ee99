"""The CLI's preview reads the target claim too; without access to it, the check is unknown, not a crash.

It asks whether its own user may restore into the target (a SelfSubjectAccessReview), and says so."""

from __future__ import annotations

import asyncio

import kmock
import kubernetes
import pytest

from daoflow_operator import cli
from daoflow_operator.api import models
from kmock_world import CLAIMS, RUNS, declare, failure


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
    assert "/api/v1/namespaces/ns/persistentvolumeclaims/data" in [r.url.path for r in k8s]


async def test_a_preview_into_a_missing_claim_is_rejected(k8s):
    result = await preview(k8s, target={"persistentVolumeClaim": {"claimName": "nope"}})
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", "TargetNotFound")
    assert target_check(result)["status"] == "fail"


async def test_a_preview_without_access_to_the_claim_says_unknown(k8s):
    k8s["get", kmock.resource(CLAIMS)] << 403 << failure(
        403, 'persistentvolumeclaims "data" is forbidden: User "alice" cannot get resource', "Forbidden")
    result = await preview(k8s)
    check = target_check(result)
    assert check["status"] == "unknown"
    assert check["detail"].startswith("PersistentVolumeClaim data: not checked: your credentials cannot read it")
    assert "forbidden" in check["detail"]
    assert result.verdict.outcome == "ready" and result.plan.is_ready


def answer_for(k8s, allowed: bool, username: str | None = "alice") -> None:
    for plural, kind in (("selfsubjectreviews", "SelfSubjectReview"), ("selfsubjectaccessreviews",
                                                                        "SelfSubjectAccessReview")):
        group = "authentication.k8s.io" if plural == "selfsubjectreviews" else "authorization.k8s.io"
        k8s.resources[f"{group}/v1/{plural}"] = {"kind": kind, "namespaced": False, "verbs": ["create"]}
    if username:
        k8s["post", kmock.resource("authentication.k8s.io/v1/selfsubjectreviews")] << 201 << {
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
            "status": {"userInfo": {"username": username, "groups": ["system:authenticated"]}}}
    k8s["post", kmock.resource("authorization.k8s.io/v1/selfsubjectaccessreviews")] << 201 << {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "status": {"allowed": allowed}}


def authorized_check(result) -> dict:
    return next(c.dump() for c in result.plan.preflight_checks if c.name == "targetAuthorized")


async def test_the_preview_says_whether_its_user_may_restore_into_the_target(k8s):
    answer_for(k8s, allowed=True)
    result = await preview(k8s)
    assert authorized_check(result) == {
        "name": "targetAuthorized", "status": "ok",
        "detail": "alice may restore into PersistentVolumeClaim data (the verb restore on persistentvolumeclaims/data "
                  "in namespace ns)"}
    asked = next(r for r in k8s if r.url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert asked.data["spec"] == {"resourceAttributes": {"namespace": "ns", "verb": "restore", "group": "",
                                                         "resource": "persistentvolumeclaims", "name": "data"}}


async def test_a_preview_of_a_user_who_may_not_restore_shows_the_failed_check(k8s):
    answer_for(k8s, allowed=False, username=None)  # an API server without SelfSubjectReview: "you"
    result = await preview(k8s)
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", "TargetNotAuthorized")
    assert authorized_check(result) == {
        "name": "targetAuthorized", "status": "fail",
        "detail": "you may not restore into PersistentVolumeClaim data: that needs the verb restore on "
                  "persistentvolumeclaims/data in namespace ns (the scope backup:restore)"}
    assert not result.plan.is_ready and len(result.plan.steps) == 6


async def test_a_preview_whose_question_fails_says_unknown(k8s):
    k8s["post", kmock.resource("authorization.k8s.io/v1/selfsubjectaccessreviews")] << 500 << failure(500, "boom")
    result = await preview(k8s)
    check = authorized_check(result)
    assert check["status"] == "unknown" and check["detail"].startswith(
        "could not check whether you may restore into PersistentVolumeClaim data: ")
    assert result.verdict.outcome == "ready"


async def test_the_preview_escapes_what_the_cluster_says(k8s, capsys, monkeypatch):
    # A failed BackupRun whose error would clear the screen and retitle the terminal.
    run = k8s.objects[RUNS, "ns", "nightly"].raw
    run["status"] = {**run["status"], "phase": "Failed",
                     "error": "\x1b[2J\x1b]0;owned\x07 \u202eevil\u2028\x85\x7f\nnext"}
    k8s.objects[RUNS, "ns", "nightly"] = run
    monkeypatch.setattr(cli, "_client", lambda args: client_for(k8s))

    code = await asyncio.to_thread(cli.main, ["backup", "restore", "--backup-run-id", "nightly", "-n", "ns", "--dry-run"])

    out = capsys.readouterr()
    printed = out.out + out.err
    assert code == cli.EXIT_RESTORE_FAILED
    assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil\\u2028\\x85\\x7f\\nnext" in printed
    assert not any(ch in printed for ch in "\x1b\x07\u202e\u2028\x85\x7f")
    assert all(line.isprintable() for line in printed.split("\n"))

    # JSON is escaped by json.dumps (ensure_ascii): nothing raw either.
    await asyncio.to_thread(cli.main, ["backup", "restore", "--backup-run-id", "nightly", "-n", "ns", "--dry-run", "--json"])
    printed = capsys.readouterr().out
    assert "\\u001b[2J" in printed and all(line.isprintable() for line in printed.split("\n"))
