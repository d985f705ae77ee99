"""The archive's own counts (status.artifact.files, uncompressedBytes): the plan, the runner's
instructions and the status of a ContentMismatch."""

from datetime import datetime, timezone

from daoflow_operator import jobs, planning
from daoflow_operator.api import models
from daoflow_operator.config import Config
from daoflow_operator.runner.plan import parse_plan
from daoflow_operator.status import Observation, decide

from objects import SHA, allowed, free, restore, run, s3_destination, still

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


def counted_run(files=3, uncompressed=1000, **kw) -> dict:
    r = run(**kw)
    artifact = r["status"]["artifact"]
    if files is not None:
        artifact["files"] = files
    if uncompressed is not None:
        artifact["uncompressedBytes"] = uncompressed
    return r


def spec() -> models.BackupRestoreSpec:
    return models.BackupRestoreSpec.model_validate({"backupRunRef": {"name": "db-nightly"}})


def check(plan: models.RestorePlan) -> models.PreflightCheck:
    [found] = [c for c in plan.preflight_checks if c.name == "contentCounts"]
    return found


def test_both_counts_make_the_contents_verifiable():
    p = planning.plan("ns", spec(), counted_run(), s3_destination()).plan
    assert p.is_ready
    assert check(p).status == "ok" and "3 members and 1000 bytes" in check(p).detail
    assert p.artifact.files == 3 and p.artifact.uncompressed_bytes == 1000
    assert p.dump()["artifact"]["uncompressedBytes"] == 1000


def test_missing_counts_warn_that_only_the_checksum_is_verified():
    for the_run in (run(), counted_run(files=None), counted_run(uncompressed=None)):
        p = planning.plan("ns", spec(), the_run, s3_destination()).plan
        assert p.is_ready
        assert check(p).status == "warn"
        assert "only the artifact's checksum is verified" in check(p).detail
    assert "files" not in planning.plan("ns", spec(), run(), s3_destination()).plan.dump()["artifact"]


def test_a_postgres_dump_is_verified_by_its_checksum_only():
    the_run = counted_run(fmt="postgres-custom", path="db.dump", source_type="postgres")
    p = planning.plan("ns", spec(), the_run, s3_destination()).plan
    assert check(p).status == "warn" and "tar archives only" in check(p).detail


def test_the_counts_change_the_plan_hash():
    a = planning.plan("ns", spec(), counted_run(), s3_destination()).plan
    b = planning.plan("ns", spec(), counted_run(files=4), s3_destination()).plan
    assert a.plan_hash != b.plan_hash


def test_the_counts_travel_in_the_runner_instructions():
    r = restore()
    p = planning.plan("ns", spec(), counted_run(), s3_destination()).plan.dump()
    instructions = jobs.runner_plan(r, p, s3_destination(), Config())
    assert instructions["artifact"]["files"] == 3 and instructions["artifact"]["uncompressedBytes"] == 1000
    parsed = parse_plan(instructions)
    assert parsed.artifact.files == 3 and parsed.artifact.uncompressed_bytes == 1000
    without = jobs.runner_plan(r, planning.plan("ns", spec(), run(), s3_destination()).plan.dump(),
                               s3_destination(), Config())
    assert "files" not in without["artifact"] and parse_plan(without).artifact.files is None


def test_the_backup_run_model_refuses_negative_counts():
    import pydantic
    import pytest
    with pytest.raises(pydantic.ValidationError):
        models.Artifact.model_validate({"files": -1})
    with pytest.raises(pydantic.ValidationError):
        models.Artifact.model_validate({"uncompressedBytes": -1})


def test_a_content_mismatch_fails_verification_like_a_checksum_mismatch():
    import json

    def apply(obj, decision):
        return {**obj, "status": decision.status}

    r = restore()
    r = apply(r, decide(r, Observation(run=counted_run(), destination=s3_destination(), target=free(),
                                       authorization=allowed(), still_authorized=still()), T0))
    failed_job = {"metadata": {"name": "r1-restore", "uid": "job-uid"},
                  "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}
    report = json.dumps({"bytes": 1234, "sha256": SHA, "verified": True, "durationSeconds": 1.5,
                         "reason": "ContentMismatch",
                         "message": "the archive holds 2 members, the BackupRun records 3"})
    d = decide(r, Observation(job=failed_job, report=report), T0)
    conditions = {c["type"]: c for c in d.status["conditions"]}
    assert d.status["phase"] == "Failed"
    assert conditions["Succeeded"]["reason"] == "ContentMismatch"
    assert conditions["ArtifactVerified"]["status"] == "False"
    assert conditions["ArtifactVerified"]["reason"] == "ContentMismatch"
    steps = [(e["step"], e["outcome"]) for e in d.status["auditTrail"]]
    assert ("verify", "failed") in steps and ("execute", "failed") not in steps
