"""The Helm chart, rendered and linted by the pinned helm: in its default mode it makes exactly the
objects of manifests/, and with watchNamespaces it grants the namespaced rights per namespace only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from daoflow_operator import dev
from daoflow_operator.localcluster import build

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "daoflow-operator"
CLUSTER_SCOPED = {"authorization.k8s.io", "admissionregistration.k8s.io"}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(build.helm_path(log=lambda msg: None))


def render(helm: str, *sets: str, namespace: str = "daoflow-system") -> list[dict]:
    args = [helm, "template", "daoflow", str(CHART), "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str, namespace: str | None = None, name: str = "daoflow-operator") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"].get("namespace") == namespace
             and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} in {namespace}"
    return found[0]


def manifest(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "manifests" / name).read_text()) if d]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={shop,billing}",)])
def test_helm_lint_strict_passes(helm, sets):
    args = [helm, "lint", "--strict", str(CHART)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_watching_every_namespace_grants_exactly_the_shipped_cluster_role(helm):
    docs = render(helm)
    shipped = manifest("rbac.yaml")
    assert one(docs, "ClusterRole")["rules"] == one(shipped, "ClusterRole")["rules"]
    assert one(docs, "ClusterRoleBinding") == one(shipped, "ClusterRoleBinding")
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_only_what_has_no_namespace(helm):
    docs = render(helm, "watchNamespaces={shop,billing}", namespace="backup-ops")
    shipped = one(manifest("rbac.yaml"), "ClusterRole")["rules"]
    cluster_rules = one(docs, "ClusterRole")["rules"]
    assert {g for rule in cluster_rules for g in rule["apiGroups"]} == CLUSTER_SCOPED
    for namespace in ("shop", "billing"):
        role = one(docs, "Role", namespace)
        assert role["rules"] + cluster_rules == shipped
        binding = one(docs, "RoleBinding", namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "daoflow-operator"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "daoflow-operator", "namespace": "backup-ops"}]
    assert not [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] not in ("shop", "billing")]
    env = {e["name"]: e["value"] for e in one(docs, "Deployment", "backup-ops")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["DAOFLOW_WATCH_NAMESPACES"] == "shop,billing"


def test_the_operators_limits_are_the_shipped_ones_in_the_default_install(helm):
    shipped = {(d["kind"], d["metadata"]["name"]): d for d in manifest("operator-limits.yaml")}
    assert set(shipped) == {(kind, name) for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
                            for name in ("daoflow-operator-job-shape", "daoflow-operator-own-objects")}
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in render(helm)}
    assert {key: rendered.get(key) for key in shipped} == shipped


def test_the_job_shape_policy_follows_the_release_namespace_and_the_image(helm):
    docs = render(helm, "image.tag=1.2.3", "watchNamespaces={shop}", namespace="backup-ops")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    for name in ("daoflow-operator-job-shape", "daoflow-operator-own-objects"):
        assert [c["expression"] for c in policies[name]["spec"]["matchConditions"]] == [
            "request.userInfo.username == 'system:serviceaccount:backup-ops:daoflow-operator'"]
    policy = policies["daoflow-operator-job-shape"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["runnerImage"] == "'ghcr.io/daoflow-dev/daoflow-operator:1.2.3'"
    deployment = one(docs, "Deployment", "backup-ops")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in deployment["containers"][0]["env"]}
    assert env["DAOFLOW_RUNNER_IMAGE"] == "ghcr.io/daoflow-dev/daoflow-operator:1.2.3"
    assert deployment["serviceAccountName"] == "daoflow-operator"


def test_the_scopes_and_the_admission_policies_are_the_shipped_ones(helm):
    kinds = {"ClusterRole", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
             "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}
    # helm orders objects by kind; the manifest by topic.
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in render(helm) if d["kind"] in kinds
                and d["metadata"]["name"] != "daoflow-operator" and not d["metadata"]["name"].startswith("daoflow-operator-")}
    assert rendered == {(d["kind"], d["metadata"]["name"]): d
                        for name in ("scopes.yaml", "pod-trust.yaml", "approvals.yaml", "require-approval.yaml")
                        for d in manifest(name)}


def test_dev_install_writes_the_image_it_runs_into_the_policy():
    docs = list(yaml.safe_load_all(dev.operator_limits("localhost/daoflow-operator:dev-0123abcd")))
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["runnerImage"] == "'localhost/daoflow-operator:dev-0123abcd'"
    # All else is the shipped manifest.
    shipped = manifest("operator-limits.yaml")
    policy["spec"]["variables"][0]["expression"] = "'ghcr.io/daoflow-dev/daoflow-operator:0.1.0'"
    assert docs == shipped


@pytest.mark.parametrize("image", ["x' || true || '", "a\\b", "", "image with spaces"])
def test_dev_install_refuses_what_is_not_an_image_reference(image):
    with pytest.raises(ValueError):
        dev.operator_limits(image)
