"""What a failed create of the restore Job means, and the subPath rule of the CRDs."""

from __future__ import annotations

import json

import pytest

from daoflow_operator.api import models
from daoflow_operator.kube import job_refusal


def body(message: str) -> str:
    return json.dumps({"kind": "Status", "message": message})


@pytest.mark.parametrize("code", [400, 404, 422, 403])
def test_a_permanent_refusal_is_final_with_the_servers_message(code):
    reason, message = job_refusal(code, body("spec: Invalid value"), "ns/r1-restore")
    assert reason == "JobRejected"
    assert message == f"the API server refused Job ns/r1-restore (HTTP {code}): spec: Invalid value"


def test_an_exceeded_quota_has_its_own_reason():
    reason, message = job_refusal(403, body('jobs.batch "x" is forbidden: exceeded quota: q'), "ns/x")
    assert reason == "QuotaExceeded" and "exceeded quota: q" in message


@pytest.mark.parametrize("code", [None, 401, 408, 429, 500, 502, 503, 504])
def test_a_transient_error_is_not_a_refusal(code):
    assert job_refusal(code, body("later"), "ns/x") is None


def test_a_body_that_is_not_json_is_the_message():
    assert job_refusal(422, "plain text", "ns/x")[1].endswith(": plain text")


def test_every_sub_path_field_carries_the_rule():
    for model in (models.PersistentVolumeClaimDestination, models.PersistentVolumeClaimSource):
        assert models.SUB_PATH_RULE in model.x_validations
        assert model.model_fields["sub_path"].metadata  # the pattern and the length
    import re
    ok = ["", "a", "team/a", "a.b/c-d_e", "..a", "a..", "a/..b"]
    bad = ["/etc", "a b", "a\\b", "a\nb"]
    assert all(re.fullmatch(models.SUB_PATH_CHARS, s) for s in ok)
    assert not any(re.fullmatch(models.SUB_PATH_CHARS, s) for s in bad)
