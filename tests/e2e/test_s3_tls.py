"""S3 over HTTPS with a private CA, on the real node: the CA bundle comes from a ConfigMap and
the endpoint is the real S3 server with a certificate of a throwaway CA, reached by the pod
through the node's relay. And a destination that takes its credentials from the environment runs
the restore pod under the ServiceAccount it names."""

from __future__ import annotations

import json

import pytest

from backups import (ARTIFACT_PATH, backup_run, condition, events, jobs, make_artifact, restore, sample_tree, snapshot,
                     succeeded, wait_phase)
from cluster_helpers import wait_until
from storage import s3_tls  # noqa: F401 - the HTTPS gateway's session fixture

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]
API = "backup.daoflow.dev/v1alpha1"


def tls_destination(cluster, namespace, server, credentials: dict) -> None:
    cluster.kubectl("create", "configmap", "corp-ca", "-n", namespace, f"--from-file=ca-bundle.pem={server.ca_file}")
    cluster.apply({"apiVersion": API, "kind": "BackupDestination", "metadata": {"name": "s3", "namespace": namespace},
                   "spec": {"s3": {"endpoint": f"https://{cluster.forward(server.port)}", "bucket": server.bucket,
                                   "prefix": f"{namespace}/", "forcePathStyle": True,
                                   "caBundle": {"configMapKeyRef": {"name": "corp-ca", "key": "ca-bundle.pem"}},
                                   **credentials}}})


def uploaded_run(cluster, namespace, server, tmp_path):
    tree = sample_tree(tmp_path / "tree")
    artifact = make_artifact(tree, tmp_path / "artifact.tar.zst")
    server.client.upload_file(str(tmp_path / "artifact.tar.zst"), server.bucket, f"{namespace}/{ARTIFACT_PATH}")
    status = succeeded()
    status["artifact"].update(artifact)
    backup_run(cluster, namespace, destination_name="s3", status=status)
    return tree, artifact


def pod_spec(cluster, namespace) -> dict:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]["spec"]


def test_an_https_endpoint_with_a_ca_bundle_from_a_config_map(cluster, namespace, operator, s3_tls, tmp_path):
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_tls.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_tls.secret_key}")
    tls_destination(cluster, namespace, s3_tls, {"credentialsSecretRef": {"name": "s3-creds"}})
    tree, artifact = uploaded_run(cluster, namespace, s3_tls, tmp_path)
    name = restore(cluster, namespace)

    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=180)
    assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(tree)
    assert status["result"]["sha256"] == artifact["sha256"] and status["result"]["verified"] is True
    spec = pod_spec(cluster, namespace)
    ca = next(v for v in spec["volumes"] if v["name"] == "s3-ca-bundle")
    assert ca["configMap"]["name"] == "corp-ca"


def test_credentials_from_the_environment_run_the_pod_under_the_named_service_account(cluster, namespace, operator,
                                                                                     s3_tls, tmp_path):
    """Here no IRSA or Pod Identity webhook gives the pod credentials, so the restore fails, and
    says why; the pod ran under the ServiceAccount, still without an API token."""
    cluster.kubectl("create", "serviceaccount", "restore-irsa", "-n", namespace)
    tls_destination(cluster, namespace, s3_tls, {"credentialsFromEnvironment": {"serviceAccountName": "restore-irsa"}})
    uploaded_run(cluster, namespace, s3_tls, tmp_path)
    name = restore(cluster, namespace)

    status = wait_phase(cluster, namespace, name, "Failed", timeout=180)
    assert condition(status, "Succeeded")["reason"] == "FetchFailed"
    assert "no S3 credentials were found in the pod's environment" in condition(status, "Succeeded")["message"]
    spec = pod_spec(cluster, namespace)
    assert spec["serviceAccountName"] == "restore-irsa" and spec["automountServiceAccountToken"] is False
    assert not any(v.get("projected") for v in spec["volumes"])  # no API token was mounted


def test_a_service_account_that_does_not_exist_fails_the_restore_at_once(cluster, namespace, operator, s3_tls,
                                                                        tmp_path):
    """The Job cannot create its pod, and says so only in its events: the restore fails with the
    reason instead of waiting for its deadline."""
    tls_destination(cluster, namespace, s3_tls, {"credentialsFromEnvironment": {"serviceAccountName": "no-such-sa"}})
    uploaded_run(cluster, namespace, s3_tls, tmp_path)
    name = restore(cluster, namespace)

    status = wait_phase(cluster, namespace, name, "Failed", timeout=60)
    failed = condition(status, "Succeeded")
    assert failed["reason"] == "ServiceAccountNotFound"
    assert "ServiceAccount no-such-sa does not exist" in failed["message"]
    assert "ServiceAccountNotFound" in [e["reason"] for e in events(cluster, namespace, name) if e["type"] == "Warning"]
    wait_until(lambda: jobs(cluster, namespace) == [], timeout=30, what="the Job to be deleted")


def test_the_api_server_holds_destinations_to_one_credential_source_and_https_for_a_ca_bundle(cluster, namespace):
    base = {"endpoint": "https://s3.local", "bucket": "backups"}
    cases = {
        "none": (base, "exactly one of credentialsSecretRef or credentialsFromEnvironment must be set"),
        "both": ({**base, "credentialsSecretRef": {"name": "s"}, "credentialsFromEnvironment": {}},
                 "exactly one of credentialsSecretRef or credentialsFromEnvironment must be set"),
        "plain": ({**base, "endpoint": "http://s3.local", "allowInsecureHTTP": True, "credentialsFromEnvironment": {},
                   "caBundle": {"configMapKeyRef": {"name": "ca", "key": "ca.crt"}}},
                  "caBundle may only be set with an https:// endpoint"),
        "two-cas": ({**base, "credentialsFromEnvironment": {},
                     "caBundle": {"configMapKeyRef": {"name": "ca", "key": "ca.crt"},
                                  "secretKeyRef": {"name": "ca", "key": "ca.crt"}}},
                    "exactly one of configMapKeyRef or secretKeyRef must be set"),
    }
    for name, (s3, message) in cases.items():
        result = cluster.apply({"apiVersion": API, "kind": "BackupDestination",
                                "metadata": {"name": name, "namespace": namespace}, "spec": {"s3": s3}}, check=False)
        assert result.returncode != 0 and message in result.stderr, (name, result.stderr)
    ok = cluster.apply({"apiVersion": API, "kind": "BackupDestination", "metadata": {"name": "ok", "namespace": namespace},
                        "spec": {"s3": {**base, "credentialsFromEnvironment": {"serviceAccountName": "irsa"},
                                        "caBundle": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}}}}, check=False)
    assert ok.returncode == 0, ok.stderr
