import json

import pytest

from daoflow_operator import jobs, planning
from daoflow_operator.api import models
from daoflow_operator.config import Config

from objects import SHA, pvc_destination, restore, run, s3_destination


def build(destination, the_run=None, **spec):
    r = restore(**spec)
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), the_run or run(), destination).plan
    return jobs.build_job(r, plan.dump(), destination, Config(job_pod_annotations={"x/y": "z"}))


def test_the_job_is_owned_named_and_never_retried():
    job = build(s3_destination())
    assert job["metadata"]["name"] == "r1-restore"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BackupRestore", "restore-uid", True)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 3600


def test_the_pod_is_hardened():
    pod = build(s3_destination())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def test_s3_credentials_and_the_target_are_mounted_and_the_plan_is_pinned():
    job = build(s3_destination())
    pod = job["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["s3-credentials"]["readOnly"] and mounts["target"]["mountPath"] == jobs.TARGET_DIR
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["s3-credentials"]["secret"]["secretName"] == "s3-creds"
    assert volumes["target"]["persistentVolumeClaim"]["claimName"] == "data"
    ann = job["spec"]["template"]["metadata"]["annotations"]
    plan = json.loads(ann[jobs.ANNOTATION_PLAN])
    assert plan["artifact"] == {"path": "runs/db-nightly.tar.zst", "format": "tar+zstd", "sizeBytes": 1234, "sha256": SHA}
    assert plan["source"]["type"] == "s3" and plan["source"]["prefix"] == "prod/"
    assert "AWS" not in json.dumps(plan)  # credentials are mounted, never copied
    assert ann["x/y"] == "z"


def test_a_volume_destination_is_mounted_read_only():
    job = build(pvc_destination(), the_run=run(destination="vol"))
    pod = job["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "destination")
    assert mount["readOnly"] and mount["subPath"] == "nightly"
    vol = next(v for v in pod["volumes"] if v["name"] == "destination")
    assert vol["persistentVolumeClaim"]["readOnly"] is True


def test_a_postgres_target_mounts_the_database_secret():
    job = build(s3_destination(), the_run=run(fmt="postgres-custom", source_type="postgres"))
    pod = job["spec"]["template"]["spec"]
    assert any(v.get("secret", {}).get("secretName") == "db" for v in pod["volumes"])
    plan = json.loads(job["spec"]["template"]["metadata"]["annotations"][jobs.ANNOTATION_PLAN])
    assert plan["target"] == {"type": "postgres", "credentialsDir": jobs.DATABASE_DIR}


def test_the_same_inputs_give_the_same_job():
    assert build(s3_destination()) == build(s3_destination())


def test_scratch_space_holds_a_database_dump():
    big = run(fmt="postgres-custom", source_type="postgres")
    big["status"]["artifact"]["sizeBytes"] = 10 << 30
    pod = build(s3_destination(), the_run=big)["spec"]["template"]["spec"]
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"]
    assert int(tmp["sizeLimit"]) > 10 << 30
    pod = build(s3_destination())["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"] == {"sizeLimit": "1Gi"}


def test_restore_pods_have_no_placement_unless_configured():
    pod = build(s3_destination())["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_configured_tolerations_and_node_selector_go_into_the_pod_spec():
    r = restore()
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), s3_destination()).plan
    toleration = {"key": "daoflow.dev/simulated", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    config = Config(job_pod_tolerations=[toleration], job_node_selector={"kubernetes.io/os": "linux"})
    pod = jobs.build_job(r, plan.dump(), s3_destination(), config)["spec"]["template"]["spec"]
    assert pod["tolerations"] == [toleration]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_placement_and_timeouts_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("DAOFLOW_JOB_POD_TOLERATIONS", '[{"key": "daoflow.dev/simulated", "operator": "Exists"}]')
    monkeypatch.setenv("DAOFLOW_JOB_NODE_SELECTOR", '{"node-role": "restore"}')
    monkeypatch.setenv("DAOFLOW_UNSCHEDULABLE_TIMEOUT_SECONDS", "30")
    config = Config.from_env()
    assert config.job_pod_tolerations == [{"key": "daoflow.dev/simulated", "operator": "Exists"}]
    assert config.job_node_selector == {"node-role": "restore"}
    assert config.unschedulable_timeout_seconds == 30.0
    assert Config().unschedulable_timeout_seconds == 300.0 and Config().job_pod_tolerations == []
    monkeypatch.setenv("DAOFLOW_JOB_POD_TOLERATIONS", '{"key": "x"}')
    with pytest.raises(ValueError, match="JSON list of objects"):
        Config.from_env()
