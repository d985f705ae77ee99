"""The approval policies: switched in the chart, and naming the operator's own ServiceAccount."""

from __future__ import annotations

from pathlib import Path

import yaml

from daoflow_operator.api import crdgen, models

ROOT = Path(__file__).resolve().parents[2]


def test_the_chart_switches_the_require_approval_policy_and_has_it_on():
    # That the chart renders exactly the shipped policies is test_chart.py's (helm renders both).
    values = yaml.safe_load((ROOT / "helm/daoflow-operator/values.yaml").read_text())
    assert values["requireApproval"] == {"enabled": True}
    assert (ROOT / "helm/daoflow-operator/templates/require-approval.yaml").read_text() \
        .startswith("{{- if .Values.requireApproval.enabled }}")


def test_the_policy_names_the_operators_service_account():
    rbac = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests/rbac.yaml").read_text())}
    account = rbac["ServiceAccount"]["metadata"]
    policy = next(d for d in yaml.safe_load_all((ROOT / "manifests/approvals.yaml").read_text())
                  if d["metadata"]["name"] == "daoflow-approval-decision")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["operatorUser"] == f"'system:serviceaccount:{account['namespace']}:{account['name']}'"


def test_the_approval_scopes_exist_and_the_operator_may_not_approve():
    scopes = {d["metadata"]["name"]: d for d in yaml.safe_load_all((ROOT / "manifests/scopes.yaml").read_text())}
    decide = scopes["daoflow:approvals-decide"]["rules"]
    assert {"resources": ["restoreapprovals"], "verbs": ["get", "list", "watch", "approve"]}.items() <= decide[0].items()
    assert scopes["daoflow:approvals-create"]["rules"][0]["verbs"] == ["get", "list", "watch", "create"]
    operator = next(d for d in yaml.safe_load_all((ROOT / "manifests/rbac.yaml").read_text())
                    if d["kind"] == "ClusterRole")
    approvals = [r for r in operator["rules"] if any(x.startswith("restoreapprovals") for x in r["resources"])]
    assert approvals and all("approve" not in r["verbs"] and "update" not in r["verbs"] for r in approvals)


def test_the_approval_crd_has_an_immutable_spec_a_ttl_and_the_columns():
    crd = yaml.safe_load(crdgen.render(models.RestoreApproval))
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable: request a new RestoreApproval"} in \
        spec["x-kubernetes-validations"]
    assert spec["properties"]["ttlSeconds"]["default"] == 7 * 3600
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Decision", "BackupRun", "Plan", "Requested-By", "Decided-By", "Expires", "Phase", "Age"]
