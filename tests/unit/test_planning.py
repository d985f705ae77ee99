import pytest

from daoflow_operator import planning
from daoflow_operator.paths import relative_path_problem
from daoflow_operator.api import models

from objects import claim, pvc_destination, run, s3_destination


def spec(**kw):
    return models.BackupRestoreSpec.model_validate({"backupRunRef": {"name": "db-nightly"}, **kw})


def test_a_succeeded_run_gives_a_ready_plan_with_every_step():
    result = planning.plan("ns", spec(), run(), s3_destination(), claim())
    assert result.verdict.outcome == "ready"
    p = result.plan
    assert p.is_ready
    assert p.backup_run.uid == "run-uid" and p.backup_run.resource_version == "42"
    assert p.artifact.location == "s3://backups/prod/runs/db-nightly.tar.zst"
    assert [s.step for s in p.steps] == ["validate", "queue", "fetch", "execute", "verify", "record"]
    assert {c.status for c in p.preflight_checks if c.name != "contentCounts"} == {"ok"}
    assert p.execute_command.endswith(f"--expected-plan-hash {p.plan_hash} --yes")
    assert p.approval_request.plan_hash == p.plan_hash
    assert p.target.in_place and p.target.persistent_volume_claim.claim_name == "data"


def test_the_plan_is_deterministic_and_ignores_bookkeeping():
    a = planning.plan("ns", spec(), run(), s3_destination()).plan
    relabelled = run()
    relabelled["metadata"]["resourceVersion"] = "99"
    b = planning.plan("ns", spec(), relabelled, s3_destination()).plan
    assert a.plan_hash == b.plan_hash
    other = run(sha="b" * 64)
    assert planning.plan("ns", spec(), other, s3_destination()).plan.plan_hash != a.plan_hash


@pytest.mark.parametrize("the_run, reason", [
    (None, planning.BACKUP_RUN_NOT_FOUND),
    (run(phase="Running"), planning.BACKUP_RUN_NOT_SUCCEEDED),
    (run(phase=None), planning.BACKUP_RUN_NOT_SUCCEEDED),
])
def test_a_missing_or_unfinished_run_means_wait(the_run, reason):
    result = planning.plan("ns", spec(), the_run, s3_destination())
    assert (result.verdict.outcome, result.verdict.reason) == ("wait", reason)
    assert not result.plan.is_ready and result.plan.steps == []


@pytest.mark.parametrize("the_run, destination, reason", [
    (run(phase="Failed", error="disk full"), s3_destination(), planning.BACKUP_RUN_FAILED),
    (run(path=""), s3_destination(), planning.ARTIFACT_PATH_MISSING),
    (run(path="../etc/passwd"), s3_destination(), planning.ARTIFACT_PATH_INVALID),
    (run(path="/abs/path"), s3_destination(), planning.ARTIFACT_PATH_INVALID),
    (run(path="a\\b"), s3_destination(), planning.ARTIFACT_PATH_INVALID),
    (run(path="a\x00b"), s3_destination(), planning.ARTIFACT_PATH_INVALID),
    (run(sha=None), s3_destination(), planning.ARTIFACT_CHECKSUM_MISSING),
    (run(size=None), s3_destination(), planning.ARTIFACT_SIZE_MISSING),
    (run(), None, planning.DESTINATION_NOT_FOUND),
    (run(), {"metadata": {"name": "s3-main"}, "spec": {}}, planning.DESTINATION_INVALID),
    # Stored before the CRD's https rule: planned again, and refused.
    (run(), {"metadata": {"name": "s3-main"}, "spec": {"s3": {**s3_destination()["spec"]["s3"],
                                                               "allowInsecureHTTP": False}}},
     planning.DESTINATION_INVALID),
    (run(fmt="postgres-custom"), s3_destination(), planning.TARGET_INVALID),
])
def test_a_bad_run_or_destination_is_rejected_with_a_reason(the_run, destination, reason):
    result = planning.plan("ns", spec(), the_run, destination)
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", reason)
    assert any(c.status == "fail" for c in result.plan.preflight_checks)


def test_a_volume_destination_and_a_postgres_target():
    result = planning.plan("ns", spec(existingData="Replace"), run(fmt="postgres-custom", source_type="postgres",
                                                                   destination="vol"), pvc_destination())
    assert result.verdict.outcome == "ready"
    assert result.plan.artifact.location == "pvc://backups/nightly/runs/db-nightly.tar.zst"
    assert "--clean --if-exists" in result.plan.steps[3].description
    assert any(c.name == "existingData" and c.status == "warn" for c in result.plan.preflight_checks)


def test_an_expected_hash_that_no_longer_matches_is_plan_drift():
    result = planning.plan("ns", spec(expectedPlanHash="0" * 64), run(), s3_destination())
    assert (result.verdict.outcome, result.verdict.reason) == ("reject", planning.PLAN_DRIFTED)
    good = planning.plan("ns", spec(), run(), s3_destination()).plan.plan_hash
    assert planning.plan("ns", spec(expectedPlanHash=good), run(), s3_destination()).verdict.outcome == "ready"


@pytest.mark.parametrize("path, problem", [
    ("ok/file.tar", None), ("", "must not be empty"), ("../x", "must not contain '..'"),
    ("a/../../x", "must not contain '..'"), ("/x", "must be relative, not absolute"),
    ("a\\x", "must not contain a backslash"), ("a\x00", "must not contain NUL"),
    ("a\nb", "must not contain control characters"),
])
def test_artifact_path_problems(path, problem):
    assert relative_path_problem(path) == problem


def checks(result) -> dict:
    return {c.name: c for c in result.plan.preflight_checks}


def test_the_target_claim_is_checked_and_a_bound_one_passes():
    result = planning.plan("ns", spec(), run(), s3_destination(), claim("data"))
    check = checks(result)["targetClaim"]
    assert (check.status, check.detail) == ("ok", "PersistentVolumeClaim data is Bound")
    assert result.verdict.outcome == "ready" and result.plan.is_ready


@pytest.mark.parametrize("the_claim, detail", [
    (None, "PersistentVolumeClaim data does not exist"),
    (claim(deleting=True), "PersistentVolumeClaim data is being deleted"),
    (claim(phase="Lost"), "PersistentVolumeClaim data is Lost: its PersistentVolume is gone"),
])
def test_a_missing_target_claim_rejects_the_restore(the_claim, detail):
    result = planning.plan("ns", spec(), run(), s3_destination(), the_claim)
    assert (result.verdict.outcome, result.verdict.reason, result.verdict.message) == \
        ("reject", planning.TARGET_NOT_FOUND, detail)
    assert (checks(result)["targetClaim"].status, checks(result)["targetClaim"].detail) == ("fail", detail)
    assert not result.plan.is_ready and result.plan.steps == []


def test_an_explicit_target_claim_is_the_one_checked():
    s = spec(target={"persistentVolumeClaim": {"claimName": "scratch"}})
    assert planning.target_claim_name(s, run()) == "scratch"
    result = planning.plan("ns", s, run(), s3_destination(), None)
    assert result.verdict.message == "PersistentVolumeClaim scratch does not exist"


def test_an_unbound_target_claim_is_a_warning():
    result = planning.plan("ns", spec(), run(), s3_destination(), claim(phase="Pending"))
    assert checks(result)["targetClaim"].status == "warn"
    assert result.verdict.outcome == "ready"


def test_an_unreadable_target_claim_is_unknown_and_does_not_block():
    result = planning.plan("ns", spec(), run(), s3_destination(), planning.Unreadable("cannot be read: forbidden"))
    check = checks(result)["targetClaim"]
    assert (check.status, check.detail) == ("unknown", "PersistentVolumeClaim data: cannot be read: forbidden")
    assert result.verdict.outcome == "ready" and result.plan.is_ready
    # Not read at all is unknown too, never silently ok.
    assert checks(planning.plan("ns", spec(), run(), s3_destination()))["targetClaim"].status == "unknown"


def test_the_claim_is_not_part_of_the_plan_hash():
    a = planning.plan("ns", spec(), run(), s3_destination(), claim()).plan.plan_hash
    b = planning.plan("ns", spec(), run(), s3_destination(), claim(phase="Pending")).plan.plan_hash
    assert a == b


def test_a_database_target_has_no_claim_check():
    s = spec()
    the_run = run(fmt="postgres-custom", source_type="postgres")
    assert planning.target_claim_name(s, the_run) is None
    assert "targetClaim" not in checks(planning.plan("ns", s, the_run, s3_destination(), None))


def test_the_destination_claim_is_read_from_the_plan():
    plan = planning.plan("ns", spec(), run(destination="vol"), pvc_destination(), claim()).plan.dump()
    assert planning.destination_claim_name(plan) == "backups"
    assert planning.destination_claim_name(planning.plan("ns", spec(), run(), s3_destination()).plan.dump()) is None
