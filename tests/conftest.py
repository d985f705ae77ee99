"""The session-wide Kubernetes API server for the tests.

By default the local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) is built once into the cache and started once per session.

- `KUBEBUILDER_ASSETS=/path` takes ready binaries from that folder.
- `--existing-cluster` (or `DAOFLOW_TEST_EXISTING_CLUSTER=1`) uses the current KUBECONFIG, e.g. kind.
- `--kind` starts a cluster with pytest-kind; it needs Docker.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

# pytest removes old temporary folders with shutil.rmtree, which recurses once per level; the
# runner's tests build trees 1,200 folders deep, so one left by an interrupted run must not
# make the next session fail at its start.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))

from cluster_helpers import Cluster, docker_engine_available
from host_state import differences, host_state
from storage import postgres, s3  # noqa: F401 - session fixtures, shared by every test folder


def pytest_addoption(parser):
    group = parser.getgroup("daoflow")
    group.addoption("--existing-cluster", action="store_true",
                    default=os.environ.get("DAOFLOW_TEST_EXISTING_CLUSTER") == "1",
                    help="use the cluster of the current KUBECONFIG instead of the local control plane")
    group.addoption("--kind", action="store_true", default=False,
                    help="start a kind cluster through pytest-kind (needs Docker)")


@pytest.fixture(scope="session")
def cluster(request, tmp_path_factory) -> Cluster:
    if request.config.getoption("--kind"):
        if not docker_engine_available():
            pytest.skip("--kind needs a running Docker engine, and this machine has none")
        kind_cluster = request.getfixturevalue("kind_cluster")
        yield Cluster.existing(Path(kind_cluster.kubeconfig_path))
        return
    if request.config.getoption("--existing-cluster"):
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        yield Cluster.existing(Path(kubeconfig))
        return

    from daoflow_operator.localcluster.cluster import LocalCluster

    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(msg: str) -> None:
        # Shown even while output is captured: a first build takes minutes and must not look hung.
        with capture.global_and_fixture_disabled():
            print(f"\n[localcluster] {msg}", flush=True)

    local = LocalCluster(tmp_path_factory.mktemp("localcluster"), log=log)
    local.host_state_before = host_state()
    started = time.monotonic()
    local.start()
    log(f"control plane ready in {time.monotonic() - started:.1f}s at {local.server}"
        + (" with a real node" if local.real_node else f"; no real node ({local.node_unavailable})"))
    try:
        yield Cluster.local(local)
    finally:
        local.stop()
        # The shared host is left as it was found: checked after every session.
        changed = differences(local.host_state_before, host_state())
        assert not changed, "the local cluster changed the host:\n" + "\n".join(changed)


@pytest.fixture
def real_node(cluster):
    """Skips, saying why, where the local control plane runs no real node."""
    if not cluster.real_node:
        reason = cluster.local.node_unavailable if cluster.local is not None else "not the local control plane"
        pytest.skip(f"needs the local control plane's real node: {reason}")


@pytest.fixture
def namespace(cluster) -> str:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for_default_serviceaccount(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
