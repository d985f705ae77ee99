"""What the benchmarks of the operator share: the cluster they measure on."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def start_control_plane():
    """(kubeconfig, the LocalCluster to stop, or None).

    The cluster of $KUBECONFIG with DAOFLOW_BENCH_EXISTING_CLUSTER=1; else the local control plane
    with KWOK's node only: the operator is measured, not the runner, and the simulated node
    completes the Jobs."""
    if os.environ.get("DAOFLOW_BENCH_EXISTING_CLUSTER") == "1" and os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"], None
    from daoflow_operator.localcluster.cluster import LocalCluster

    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="daoflow-bench-")), node_mode="kwok")
    started = time.monotonic()
    kubeconfig = str(cluster.start())
    print(f"local control plane ready in {time.monotonic() - started:.1f}s")
    return kubeconfig, cluster
