"""The restore Job of an S3 destination: credentials from a Secret or from the pod's environment
(with a ServiceAccount), and a CA bundle from a ConfigMap or Secret key."""

import json

import pytest
from pydantic import ValidationError

from daoflow_operator import jobs, planning
from daoflow_operator.api import models
from daoflow_operator.config import Config

from objects import restore, run, s3_destination

ALLOWED_VOLUME_KINDS = {"persistentVolumeClaim", "secret", "configMap", "downwardAPI", "emptyDir"}


def destination(**s3) -> dict:
    dest = s3_destination()
    dest["spec"]["s3"].pop("credentialsSecretRef")
    dest["spec"]["s3"].update(endpoint="https://s3.internal.example:9000", **s3)
    return dest


def build(dest) -> tuple[dict, dict]:
    r = restore()
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), dest).plan
    assert plan.is_ready, plan.preflight_checks
    job = jobs.build_job(r, plan.dump(), dest, Config())
    pod = job["spec"]["template"]["spec"]
    return pod, json.loads(job["spec"]["template"]["metadata"]["annotations"][jobs.ANNOTATION_PLAN])


def test_credentials_from_the_environment_run_the_pod_under_the_named_service_account():
    pod, plan = build(destination(credentialsFromEnvironment={"serviceAccountName": "restore-irsa"}))
    assert pod["serviceAccountName"] == "restore-irsa"
    assert pod["automountServiceAccountToken"] is False  # the EKS webhook projects its own token
    assert "s3-credentials" not in {v["name"] for v in pod["volumes"]}
    assert "credentialsDir" not in plan["source"]  # the runner then uses the default chain


def test_credentials_from_the_environment_without_a_service_account_keep_the_default_one():
    pod, plan = build(destination(credentialsFromEnvironment={}))
    assert "serviceAccountName" not in pod and "credentialsDir" not in plan["source"]


def test_a_secret_keeps_the_mounted_credentials_and_the_default_service_account():
    pod, plan = build(s3_destination())
    assert "serviceAccountName" not in pod
    assert plan["source"]["credentialsDir"] == jobs.S3_CREDENTIALS_DIR
    assert "caBundleFile" not in plan["source"]


@pytest.mark.parametrize("ref, kind, name_field", [
    ({"configMapKeyRef": {"name": "corp-ca", "key": "ca-bundle.pem"}}, "configMap", "name"),
    ({"secretKeyRef": {"name": "corp-ca", "key": "ca.crt"}}, "secret", "secretName"),
])
def test_the_ca_bundle_is_mounted_read_only_as_one_file(ref, kind, name_field):
    pod, plan = build(destination(credentialsFromEnvironment={}, caBundle=ref))
    volume = {v["name"]: v for v in pod["volumes"]}["s3-ca-bundle"]
    key = next(iter(ref.values()))["key"]
    assert volume[kind][name_field] == "corp-ca" and volume[kind]["items"] == [{"key": key, "path": "ca.crt"}]
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["s3-ca-bundle"]
    assert mount == {"name": "s3-ca-bundle", "mountPath": jobs.S3_CA_DIR, "readOnly": True}
    assert plan["source"]["caBundleFile"] == jobs.S3_CA_FILE
    # Within the shape the operator's admission policy allows for its Jobs.
    assert all(set(v) - {"name"} <= ALLOWED_VOLUME_KINDS for v in pod["volumes"])


def test_the_model_reads_both_credential_sources_and_the_ca_bundle():
    s3 = models.S3Destination.model_validate({
        "endpoint": "https://s3.local", "bucket": "backups",
        "credentialsFromEnvironment": {"serviceAccountName": "sa"},
        "caBundle": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}})
    assert s3.credentials_from_environment.service_account_name == "sa"
    assert s3.dump()["caBundle"] == {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}
    with pytest.raises(ValidationError):
        models.KeySelector.model_validate({"name": "ca", "key": "../etc/passwd"})


def test_a_destination_with_both_or_no_credential_source_is_not_ready():
    for creds in ({}, {"credentialsSecretRef": {"name": "s"}, "credentialsFromEnvironment": {}}):
        dest = destination(**creds)
        r = restore()
        plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), dest).plan
        assert not plan.is_ready
        assert any("exactly one of credentialsSecretRef or credentialsFromEnvironment" in c.detail
                   for c in plan.preflight_checks)
