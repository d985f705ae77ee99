"""The pytest-kind path, for machines with Docker: the same CRDs on a kind cluster."""

from __future__ import annotations

import pytest

from cluster_helpers import docker_engine_available

pytestmark = pytest.mark.kind


@pytest.mark.skipif(not docker_engine_available(), reason="pytest-kind needs a running Docker engine; this machine has none")
def test_the_crds_install_on_a_kind_cluster(request):
    kind_cluster = request.getfixturevalue("kind_cluster")
    from daoflow_operator import dev

    dev.install(str(kind_cluster.kubeconfig_path), samples=False)
    out = kind_cluster.kubectl("get", "crd", "backuprestores.backup.daoflow.dev", "-o", "name")
    assert out.strip() == "customresourcedefinition.apiextensions.k8s.io/backuprestores.backup.daoflow.dev"
