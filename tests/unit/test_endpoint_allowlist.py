"""The operator's S3 endpoint allowlist reaches the runner's plan."""

from __future__ import annotations

import json

from daoflow_operator import jobs, planning
from daoflow_operator.api import models
from daoflow_operator.config import Config

from objects import restore, run, s3_destination


def runner_plan(config: Config) -> dict:
    r, destination = restore(), s3_destination()
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), destination).plan
    job = jobs.build_job(r, plan.dump(), destination, config)
    return json.loads(job["spec"]["template"]["metadata"]["annotations"][jobs.ANNOTATION_PLAN])


def test_the_allowlist_is_passed_to_the_runner_when_set(monkeypatch):
    monkeypatch.setenv("DAOFLOW_S3_ENDPOINT_ALLOWLIST", "10.0.0.0/8, fd00::/8")
    config = Config.from_env()
    assert config.s3_endpoint_allowlist == ("10.0.0.0/8", "fd00::/8")
    assert runner_plan(config)["source"]["endpointAllowlist"] == ["10.0.0.0/8", "fd00::/8"]
    assert "endpointAllowlist" not in runner_plan(Config())["source"]


def test_plain_http_is_an_explicit_choice_of_the_destination():
    s3 = models.S3Destination.model_validate({"endpoint": "http://x", "bucket": "abc",
                                              "allowInsecureHTTP": True, "credentialsSecretRef": {"name": "s"}})
    assert s3.allow_insecure_http and s3.dump()["allowInsecureHTTP"] is True
    assert models.S3Destination.model_validate({"endpoint": "https://x", "bucket": "abc",
                                                "credentialsSecretRef": {"name": "s"}}).allow_insecure_http is False
