"""End-to-end fixtures: the CRDs and RBAC installed once, and operators that run as their ServiceAccount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_helpers import wait_until
from daoflow_operator import dev
from daoflow_operator.localcluster.cluster import SIMULATED_NODE_SELECTOR, SIMULATED_TOLERATION


@pytest.fixture(scope="session")
def installed(cluster):
    """CRDs, the operator's RBAC, the scope policy and the limits of its Jobs, exactly as shipped in
    manifests/; its Jobs may run the image the tests' operators run."""
    dev.install(str(cluster.kubeconfig), samples=False, runner_image=cluster.runner_image)
    wait_for_admission_policies(cluster)
    return cluster


def wait_for_admission_policies(cluster) -> None:
    """Admission policies take effect asynchronously: probe until the requester is recorded."""
    cluster.kubectl("create", "namespace", "daoflow-probe", check=False)
    probe = {"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRestore",
             "metadata": {"generateName": "probe-", "namespace": "daoflow-probe",
                          "annotations": {"backup.daoflow.dev/requested-by": "forged"}},
             "spec": {"backupRunRef": {"name": "probe"}, "dryRun": True}}

    def recorded():
        created = json.loads(cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(probe)).stdout)
        return created["metadata"]["annotations"]["backup.daoflow.dev/requested-by"] != "forged"

    wait_until(recorded, timeout=60, what="the MutatingAdmissionPolicy to take effect")
    cluster.kubectl("delete", "namespace", "daoflow-probe", "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator_kubeconfig(installed, tmp_path_factory) -> Path:
    """Credentials of the operator's ServiceAccount: the operator never runs as admin here."""
    return dev.serviceaccount_kubeconfig(str(installed.kubeconfig),
                                         tmp_path_factory.mktemp("operator") / "kubeconfig", duration="4h")


# Restore pods of a simulated operator land on KWOK's node, whose stages inject failures and
# long runs on demand; all other restore pods run the real runner on the real node.
SIMULATED = {"DAOFLOW_JOB_POD_TOLERATIONS": json.dumps([SIMULATED_TOLERATION]),
             "DAOFLOW_JOB_NODE_SELECTOR": json.dumps(SIMULATED_NODE_SELECTOR)}


@dataclass
class OperatorProcess:
    namespace: str
    kubeconfig: Path
    log: Path
    env_extra: dict
    runner_image: str = "daoflow-operator:test"
    proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "DAOFLOW_WATCH_NAMESPACES": self.namespace,
               "DAOFLOW_WAIT_BACKOFF_MIN_SECONDS": "1", "DAOFLOW_WAIT_BACKOFF_MAX_SECONDS": "4",
               "DAOFLOW_RUNNER_IMAGE": self.runner_image, **self.env_extra}
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "daoflow_operator"], env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_operator(cluster, operator_kubeconfig, namespace, tmp_path, request):
    """Starts an operator that watches only this test's namespace (so tests can configure it).

    `simulated=True` places its restore pods on KWOK's node (for injected failures and long
    runs); otherwise they run the image built from the Dockerfile, on the real node."""
    started: list[OperatorProcess] = []

    def start(simulated: bool = False, kubeconfig: Path | None = None, **env_extra) -> OperatorProcess:
        env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env_extra.items()}
        if simulated and cluster.real_node:
            env = {**SIMULATED, **env}
        op = OperatorProcess(namespace, kubeconfig or operator_kubeconfig, tmp_path / f"operator-{len(started)}.log", env,
                             runner_image=cluster.runner_image)
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for op in started:
            print(f"--- operator log {op.log} ---\n{op.output()[-6000:]}")


@pytest.fixture
def allow_runner_image(cluster, operator_kubeconfig, namespace):
    """The operator's Jobs may run one image (manifests/operator-limits.yaml): lets a test's operator
    run another one, and puts the session's image back afterwards."""
    from job_shapes import set_runner_image

    yield lambda image: set_runner_image(cluster, operator_kubeconfig, namespace, image)
    set_runner_image(cluster, operator_kubeconfig, namespace, cluster.runner_image)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def operator(start_operator):
    return start_operator()


@pytest.fixture(autouse=True)
def _crds_installed(installed):
    """Every end-to-end test runs with the project's CRDs and RBAC in place."""
