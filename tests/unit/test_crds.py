"""crds/ is generated from the models; this fails when the two drift apart (fix: make crds)."""

from pathlib import Path

import pytest
import yaml

from daoflow_operator.api import crdgen, models

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "helm/daoflow-operator/crds"])
@pytest.mark.parametrize("name", sorted(crdgen.files()))
def test_the_committed_crd_matches_the_model(folder, name):
    path = ROOT / folder / name
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == crdgen.files()[name], f"{path} is out of date: run `make crds`"


def test_every_crd_has_status_columns_short_names_and_the_category():
    for model in models.KINDS:
        crd = yaml.safe_load(crdgen.render(model))
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["shortNames"] and crd["spec"]["names"]["categories"] == ["daoflow"]
        assert version["additionalPrinterColumns"]


def test_the_restore_crd_carries_the_immutability_rule_and_the_columns():
    crd = yaml.safe_load(crdgen.render(models.BackupRestore))
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable: create a new BackupRestore"} in \
        spec["x-kubernetes-validations"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "BackupRun", "Dry-Run", "Age", "Message"} <= set(columns)
    assert columns["Message"]["priority"] == 1


def _without_templates(text: str) -> list:
    import re
    text = re.sub(r"(?m)^\s*{{-?\s*(if|end)\b[^}]*}}\s*$\n?", "", text)  # control lines
    return [d for d in yaml.safe_load_all(re.sub(r"{{[^}]*}}", "X", text)) if d]


def test_the_helm_chart_grants_exactly_the_shipped_rbac():
    shipped = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests/rbac.yaml").read_text())}
    chart = {d["kind"]: d for d in _without_templates((ROOT / "helm/daoflow-operator/templates/rbac.yaml").read_text())}
    assert chart["ClusterRole"]["rules"] == shipped["ClusterRole"]["rules"]
    assert chart["ClusterRoleBinding"]["roleRef"] == shipped["ClusterRoleBinding"]["roleRef"]
    scopes = _without_templates((ROOT / "helm/daoflow-operator/templates/scopes.yaml").read_text())
    assert scopes == list(yaml.safe_load_all((ROOT / "manifests/scopes.yaml").read_text()))
