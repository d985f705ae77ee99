"""The Helm chart, rendered and linted by the pinned helm: in its default mode it makes exactly the
objects of manifests/ (the kustomize base, built by the pinned kustomize), with watchNamespaces it
grants the namespaced rights per namespace only, and its schema refuses a misspelled value."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from daoflow_operator import dev
from daoflow_operator.api import models
from daoflow_operator.localcluster import build

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "daoflow-operator"
CLUSTER_SCOPED = {"authorization.k8s.io", "admissionregistration.k8s.io"}
ELECTION = "daoflow-operator-leader-election"


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


def lint_sets() -> tuple[str, ...]:
    """The non-default set `make lint-chart` lints, read from the Makefile so the two never part."""
    text = (ROOT / "Makefile").read_text()
    block = re.search(r"^LINT_SETS := (.*?)\n\n", text, re.S | re.M).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    return tuple(words[i + 1] for i, w in enumerate(words) if w == "--set")


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={shop,billing}",), lint_sets()])
def test_helm_lint_strict_passes(helm, sets):
    args = [helm, "lint", "--strict", str(CHART)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("typo", ["replica=2", "image.tg=1.0", "podDisruptionBudget.maxUnavaliable=1",
                                  "crds.enable=false", "resources.limit.memory=1Gi", "replicas=two",
                                  "logFormat=yaml"])
def test_a_misspelled_value_is_refused_by_the_schema(helm, typo):
    for command in ("lint", "template"):
        args = [helm, command, *(["--strict"] if command == "lint" else ["x"]), str(CHART), "--set", typo]
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode != 0 and "values don't meet the specifications" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def kustomize() -> str:
    return str(build.kustomize_path(log=lambda msg: None))


def _one_line(node):
    """kustomize's YAML writer doubles the line break before a more-indented line of a folded scalar
    (the CEL of the policies); CEL ignores that whitespace, so strings are compared with it folded."""
    if isinstance(node, dict):
        return {k: _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return re.sub(r"\s+", " ", node) if isinstance(node, str) else node


def by_key(docs: list[dict]) -> dict:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): _one_line(d) for d in docs}


def test_the_kustomize_base_is_the_charts_default_render(helm, kustomize):
    out = subprocess.run([kustomize, "build", str(ROOT / "manifests")], capture_output=True, text=True,
                         check=True).stdout
    base = by_key([d for d in yaml.safe_load_all(out) if d])
    # helm installs into a namespace it is given (--create-namespace); the base brings its own.
    assert base.pop(("Namespace", "daoflow-system", None))
    chart = by_key(render(helm))
    assert sorted(base) == sorted(chart)
    for key in chart:
        assert base[key] == chart[key], key


def test_the_crds_are_templates_switched_by_a_value_and_kept_on_uninstall(helm):
    crds = [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == sorted(
        f"{m.plural}.{models.GROUP}" for m in models.KINDS)
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in crds)
    assert not [d for d in render(helm, "crds.enabled=false") if d["kind"] == "CustomResourceDefinition"]
    # helm never upgrades a chart's crds/ folder: the chart keeps none.
    assert not (CHART / "crds").exists()


def test_placement_security_labels_and_the_disruption_budget_are_values(helm):
    docs = render(helm, "replicas=3", "podDisruptionBudget.enabled=true", "commonLabels.team=storage",
                  "commonAnnotations.owner=platform", "podLabels.tier=ops", "podAnnotations.note=x",
                  "priorityClassName=system-cluster-critical", "nodeSelector.kubernetes\\.io/os=linux",
                  "tolerations[0].key=dedicated", "tolerations[0].operator=Exists",
                  "topologySpreadConstraints[0].maxSkew=1",
                  "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
                  "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
                  "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=daoflow-operator",
                  "runner.image=registry.example/runner:2", "terminationGracePeriodSeconds=45")
    deployment = one(docs, "Deployment", "daoflow-system")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["labels"]["team"] == "storage"
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "daoflow-operator",
                                         "app.kubernetes.io/instance": "daoflow", "team": "storage", "tier": "ops"}
    assert pod["metadata"]["annotations"] == {"owner": "platform", "note": "x"}
    spec = pod["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["terminationGracePeriodSeconds"] == 45
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["DAOFLOW_RUNNER_IMAGE"] == "registry.example/runner:2"
    assert spec["containers"][0]["image"] == "ghcr.io/daoflow-dev/daoflow-operator:0.1.0"
    policy = one(docs, "ValidatingAdmissionPolicy", name="daoflow-operator-job-shape")
    assert policy["spec"]["variables"][0]["expression"] == "'registry.example/runner:2'"
    pdb = one(docs, "PodDisruptionBudget", "daoflow-system")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "app.kubernetes.io/name": "daoflow-operator", "app.kubernetes.io/instance": "daoflow"}}}
    # The CRDs are generated, and the scopes' objects are not labelled yet.
    scopes = {(d["kind"], d["metadata"]["name"]) for d in render(helm)} - {
        (d["kind"], d["metadata"]["name"]) for d in render(helm, "scopes.enabled=false")}
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition" and (doc["kind"], doc["metadata"]["name"]) not in scopes:
            assert doc["metadata"]["labels"]["team"] == "storage", doc["metadata"]
            assert doc["metadata"]["annotations"]["owner"] == "platform", doc["metadata"]
    assert not [d for d in render(helm) if d["kind"] == "PodDisruptionBudget"]


def test_the_operator_pod_is_hardened_and_probed_by_default(helm):
    spec = one(render(helm), "Deployment", "daoflow-system")["spec"]["template"]["spec"]
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    container = spec["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Every value the Config reads must parse (helm once wrote 1000000 as 1e+06).
    assert int(env["DAOFLOW_RUNNER_MAX_MEMBERS"]) == 1_000_000 and int(env["DAOFLOW_RUNNER_MAX_BYTES"]) == 1 << 40


def test_watching_every_namespace_grants_exactly_the_shipped_cluster_role(helm):
    docs = render(helm)
    shipped = manifest("rbac.yaml")
    assert one(docs, "ClusterRole")["rules"] == one(shipped, "ClusterRole")["rules"]
    assert one(docs, "ClusterRoleBinding") == one(shipped, "ClusterRoleBinding")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("Role", "RoleBinding")] == [
        ("Role", ELECTION), ("RoleBinding", ELECTION)]


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
    assert not [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] not in ("shop", "billing")
                and d["metadata"]["name"] != ELECTION]
    env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "backup-ops")["spec"]["template"]["spec"]
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
    env = {e["name"]: e.get("value") for e in deployment["containers"][0]["env"]}
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


def test_leader_election_has_a_role_for_its_one_lease_and_the_policy_lets_it_write_that_lease(helm):
    docs = render(helm, "watchNamespaces={shop}", "leaderElection.leaseName=ops-election", namespace="backup-ops")
    role = one(docs, "Role", "backup-ops", name=ELECTION)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["ops-election"],
         "verbs": ["get", "update"]}]
    binding = one(docs, "RoleBinding", "backup-ops", name=ELECTION)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "daoflow-operator", "namespace": "backup-ops"}]
    policy = one(docs, "ValidatingAdmissionPolicy", name="daoflow-operator-own-objects")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["electionLease"] == "'backup-ops/ops-election'"
    deployment = one(docs, "Deployment", "backup-ops")["spec"]
    assert deployment["strategy"] == {"type": "RollingUpdate"}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in deployment["template"]["spec"]["containers"][0]["env"]}
    assert env["DAOFLOW_LEADER_ELECTION_LEASE"] == "ops-election"
    assert env["DAOFLOW_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert (env["DAOFLOW_LEASE_DURATION_SECONDS"], env["DAOFLOW_RENEW_DEADLINE_SECONDS"],
            env["DAOFLOW_RETRY_PERIOD_SECONDS"]) == ("15", "10", "2")


def test_without_leader_election_there_is_one_replica_and_no_election_lease(helm):
    docs = render(helm, "leaderElection.enabled=false")
    assert not [d for d in docs if d["metadata"]["name"] == ELECTION]
    policy = one(docs, "ValidatingAdmissionPolicy", name="daoflow-operator-own-objects")
    assert {v["name"]: v["expression"] for v in policy["spec"]["variables"]}["electionLease"] == "''"
    deployment = one(docs, "Deployment", "daoflow-system")["spec"]
    assert deployment["strategy"] == {"type": "Recreate"}
    assert "DAOFLOW_LEADER_ELECTION_LEASE" not in str(deployment)
    proc = subprocess.run([helm, "template", "x", str(CHART), "--set", "replicas=2", "--set",
                           "leaderElection.enabled=false"], capture_output=True, text=True)
    assert proc.returncode != 0 and "replicas > 1 needs leaderElection.enabled" in proc.stderr


def test_the_log_format_is_a_value(helm):
    def env(*sets):
        spec = one(render(helm, *sets), "Deployment", "daoflow-system")["spec"]["template"]["spec"]
        return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}

    assert env()["DAOFLOW_LOG_FORMAT"] == "human"
    assert env("logFormat=json")["DAOFLOW_LOG_FORMAT"] == "json"
