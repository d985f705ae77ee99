"""The launcher leaves no process behind: not on a clean stop, not when it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cluster_helpers import wait_until
from daoflow_operator.localcluster import node

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose once its state is Z.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["terminated", "killed"])
def test_no_control_plane_process_outlives_the_launcher(cluster, tmp_path, how):
    if cluster.local is None:
        pytest.skip("only the local control plane is started by this project's launcher")
    ready = tmp_path / "ready"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "daoflow_operator.localcluster", "serve", "--ready-file", str(ready)],
        env={**os.environ, "DAOFLOW_CLUSTER_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(ready.exists, timeout=180, what="the second control plane to start")
        assert ready.read_text() == "ok"
        state = json.loads((tmp_path / "state.json").read_text())
        pids = state["pids"]
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        if state["realNode"]:
            assert set(state["nodePids"]) == {"unshare", "nodeinit", "containerd", "kubelet"}
            pids = {**pids, **{f"node {k}": v for k, v in state["nodePids"].items()}}
        assert all(_alive(pid) for pid in pids.values())
        launcher.send_signal(how)
        launcher.wait(30)
        wait_until(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30,
                   what=f"every component to stop after {how.name}: {pids}")
        if state["realNode"]:
            # A stopped launcher removes its node's cgroups; a killed one cannot, and the next
            # start of any node removes what a dead launcher left (shown here directly).
            stale = node.stale_cgroup_roots()
            if how == signal.SIGTERM:
                assert stale == []
            for name in stale:
                assert node.remove_cgroup_root(name) == []
            assert node.stale_cgroup_roots() == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
