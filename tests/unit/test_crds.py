"""The CRDs are generated from the models; this fails when they drift apart (fix: make crds)."""

from pathlib import Path

import pytest
import yaml

from daoflow_operator.api import crdgen, models

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", sorted(crdgen.OUTPUTS))
@pytest.mark.parametrize("name", sorted(crdgen.files()))
def test_the_committed_crd_matches_the_model(folder, name):
    path = ROOT / folder / name
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == crdgen.OUTPUTS[folder]()[name], f"{path} is out of date: run `make crds`"


@pytest.mark.parametrize("folder", sorted(crdgen.OUTPUTS))
def test_no_stale_crd_is_left_behind(folder):
    assert {p.name for p in (ROOT / folder).glob("*.yaml")} == set(crdgen.files())


def test_the_crds_are_kept_when_the_release_is_uninstalled():
    for model in models.KINDS:
        crd = yaml.safe_load(crdgen.render(model))
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


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

