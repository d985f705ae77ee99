"""The chart and the kustomize base installed as users install them, on the local control plane with
its real node: the operator runs in a pod from the locally built image, with exactly the chart's RBAC,
and restores through the real runner.

The session's `installed` fixture already holds the cluster-scoped objects of manifests/ (same names
as the chart's defaults). A release here therefore names its own cluster-scoped objects
(fullnameOverride), lives in a namespace of its own, leaves the scopes and the pod-trust policy to the
session's (scopes.enabled, podTrust.enabled false), and takes over the CRDs (--take-ownership; kept on
uninstall, so the session keeps them)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from backups import backup_run, destination, jobs, restore, restore_status, snapshot, source_tree, wait_phase
from cluster_helpers import audit_entries, audit_extra, wait_until
from daoflow_operator.api import models
from daoflow_operator.localcluster import build

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "daoflow-operator"


@pytest.fixture(scope="module")
def helm_bin() -> str:
    return str(build.helm_path(log=lambda msg: None))


def helm(cluster, helm_bin, *args, check=True):
    import subprocess

    proc = subprocess.run([helm_bin, f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


def image_values(cluster) -> list[str]:
    repository, tag = cluster.runner_image.rsplit(":", 1)
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]


def release_values(cluster, watched: str, name: str) -> list[str]:
    return [*image_values(cluster), "--set", f"watchNamespaces={{{watched}}}", "--set", f"fullnameOverride={name}",
            "--set", "scopes.enabled=false", "--set", "podTrust.enabled=false"]


def kinds_applied(out: str) -> set[str]:
    """`kubectl apply -o name` prints kind.group/name per object."""
    return {line.split("/")[0] for line in out.split() if "/" in line}


def rendered_kinds(text: str) -> set[str]:
    out = set()
    for doc in yaml.safe_load_all(text):
        if doc:
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            out.add(doc["kind"].lower() + (f".{group}" if group else ""))
    return out


@pytest.mark.parametrize("sets", [[], ["--set", "replicas=2", "--set", "podDisruptionBudget.enabled=true",
                                       "--set", "commonLabels.team=storage", "--set", "runner.image=r.example/x:1",
                                       "--set", "priorityClassName=system-cluster-critical",
                                       "--set", "fullnameOverride=daoflow-dry-run"]])
def test_the_rendered_chart_is_accepted_by_the_api_server(cluster, namespace, helm_bin, sets):
    text = helm(cluster, helm_bin, "template", "daoflow", str(CHART), "-n", "daoflow-system",
                *(["--set", f"watchNamespaces={{{namespace}}}"] + sets if sets else [])).stdout
    out = cluster.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=text).stdout
    assert kinds_applied(out) == rendered_kinds(text)
    assert {"customresourcedefinition.apiextensions.k8s.io", "deployment.apps", "clusterrole.rbac.authorization.k8s.io",
            "validatingadmissionpolicy.admissionregistration.k8s.io", "role.rbac.authorization.k8s.io"} <= kinds_applied(out)
    if sets:
        assert "poddisruptionbudget.policy" in kinds_applied(out)


def test_a_misspelled_value_is_refused_before_anything_is_sent(cluster, helm_bin):
    proc = helm(cluster, helm_bin, "install", "typo", str(CHART), "-n", "daoflow-typo", "--dry-run=server",
                "--set", "replica=2", check=False)
    assert proc.returncode != 0 and "additional properties 'replica' not allowed" in proc.stderr


def next_chart(tmp: Path) -> Path:
    """The chart's next version: a CRD change (an optional field of BackupRestore.spec)."""
    chart = tmp / "daoflow-operator"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    crd = chart / "templates" / "crds" / f"{models.GROUP}_backuprestores.yaml"
    text = crd.read_text()
    marker = "            properties:\n"  # spec's properties, the first under the version's schema
    head, _, tail = text.partition("          spec:\n")
    assert tail.startswith(marker)
    crd.write_text(head + "          spec:\n" + marker
                   + "              ticket:\n                description: A change ticket.\n                type: string\n"
                   + tail[len(marker):])
    return chart


def spec_fields(cluster) -> set[str]:
    crd = cluster.get("crd", f"backuprestores.{models.GROUP}")
    return set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def test_install_restore_upgrade_with_a_crd_change_and_uninstall(cluster, namespace, helm_bin, tmp_path):
    if not cluster.real_node:
        pytest.skip("the operator runs in a pod of the real node")
    release, suffix = "daoflow", uuid.uuid4().hex[:6]
    system, name = f"helm-{suffix}", f"daoflow-helm-{suffix}"
    values = release_values(cluster, namespace, name)
    try:
        helm(cluster, helm_bin, "install", release, str(CHART), "-n", system, "--create-namespace",
             "--take-ownership", "--wait", "--timeout=180s", *values)
        pod = json.loads(cluster.kubectl("get", "pods", "-n", system, "-o", "json").stdout)["items"]
        assert len(pod) == 1 and pod[0]["spec"]["containers"][0]["image"] == cluster.runner_image
        assert pod[0]["spec"]["serviceAccountName"] == "daoflow-operator"
        # Exactly the chart's RBAC: the rights it has in the watched namespace, and none in another.
        sa = f"system:serviceaccount:{system}:daoflow-operator"
        can = lambda *a: cluster.kubectl("auth", "can-i", *a, f"--as={sa}", check=False).stdout.strip()  # noqa: E731
        assert can("create", "jobs", "-n", namespace) == "yes"
        assert can("create", "jobs", "-n", "default") == "no"
        assert can("update", "backupruns", "-n", namespace) == "no"

        destination(cluster, namespace)
        backup_run(cluster, namespace)
        first = restore(cluster, namespace)
        wait_phase(cluster, namespace, first, "Succeeded", timeout=180)
        assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(source_tree(cluster, namespace))
        shown = cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout
        print(shown)
        assert f"{system} " in shown and jobs(cluster, namespace)[0]["metadata"]["name"] in shown

        # The upgrade, with a CRD change, while a restore's Job runs.
        before = restore_status(cluster, namespace, first)
        second = restore(cluster, namespace, existingData="Replace")
        wait_until(lambda: len(jobs(cluster, namespace)) == 2, timeout=90, what="the second restore's Job")
        assert "ticket" not in spec_fields(cluster)
        helm(cluster, helm_bin, "upgrade", release, str(next_chart(tmp_path)), "-n", system, "--wait",
             "--timeout=180s", *values)
        assert "ticket" in spec_fields(cluster)
        wait_phase(cluster, namespace, second, "Succeeded", timeout=180)
        assert restore_status(cluster, namespace, first) == before
        history = json.loads(helm(cluster, helm_bin, "history", release, "-n", system, "-o", "json").stdout)
        assert [h["chart"] for h in history] == ["daoflow-operator-0.1.0", "daoflow-operator-0.1.1"]

        helm(cluster, helm_bin, "uninstall", release, "-n", system, "--wait")
        assert cluster.kubectl("get", "deployment", "daoflow-operator", "-n", system, check=False).returncode != 0
        assert cluster.kubectl("get", "clusterrole", name, check=False).returncode != 0
        for model in models.KINDS:
            cluster.get("crd", f"{model.plural}.{models.GROUP}")
        records = json.loads(cluster.kubectl("get", "backuprestores", "-n", namespace, "-o", "json").stdout)["items"]
        assert {r["metadata"]["name"]: r["status"]["phase"] for r in records} == {first: "Succeeded",
                                                                                  second: "Succeeded"}
    finally:
        helm(cluster, helm_bin, "uninstall", release, "-n", system, check=False)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_two_replicas_the_leaders_pod_force_deleted_while_a_job_runs(cluster, namespace, helm_bin):
    if not cluster.real_node:
        pytest.skip("the operator runs in pods of the real node")
    release, suffix = "daoflow", uuid.uuid4().hex[:6]
    system, name = f"helm-{suffix}", f"daoflow-helm-{suffix}"
    try:
        helm(cluster, helm_bin, "install", release, str(CHART), "-n", system, "--create-namespace",
             "--take-ownership", "--wait", "--timeout=180s", "--set", "replicas=2",
             "--set", "podDisruptionBudget.enabled=true", *release_values(cluster, namespace, name))

        def holder() -> str:
            lease = cluster.get("lease", "daoflow-operator", system)
            return (lease.get("spec") or {}).get("holderIdentity") or ""

        pods = {p["metadata"]["name"] for p in json.loads(
            cluster.kubectl("get", "pods", "-n", system, "-o", "json").stdout)["items"]}
        assert len(pods) == 2
        leader = wait_until(lambda: holder().rsplit("_", 1)[0] in pods and holder().rsplit("_", 1)[0], timeout=60,
                            what="a replica to hold the Lease")
        destination(cluster, namespace)
        backup_run(cluster, namespace)
        name_ = restore(cluster, namespace)
        job = wait_until(lambda: jobs(cluster, namespace), timeout=90, what="the restore's Job")[0]
        import time

        standby = (pods - {leader}).pop()
        if cluster.local is not None:
            # The standby pod's token names its pod in the audit log: it wrote nothing while it stood by.
            # A write the server refused changed nothing: both replicas start at once, and the one that
            # loses the race to create the Lease is told 409 AlreadyExists.
            entries = audit_entries(cluster.local.audit_log)
            by_standby = [e for e in entries if e["verb"] in {"create", "update", "patch", "delete", "deletecollection"}
                          and audit_extra(e, "authentication.kubernetes.io/pod-name") == [standby]
                          and (e.get("responseStatus") or {}).get("code", 200) < 400]
            assert by_standby == [], [(e["verb"], e["objectRef"]) for e in by_standby]
            assert any(audit_extra(e, "authentication.kubernetes.io/pod-name") == [leader]
                       for e in entries), "the audit log names no pod"
        cluster.kubectl("delete", "pod", leader, "-n", system, "--grace-period=0", "--force")
        deleted = time.monotonic()
        wait_until(lambda: holder().startswith(standby + "_"), timeout=60, interval=0.1,
                   what="the standby to take the Lease")
        print(f"takeover after the leader's pod was force-deleted: {time.monotonic() - deleted:.1f}s")
        wait_phase(cluster, namespace, name_, "Succeeded", timeout=180)
        assert [j["metadata"]["uid"] for j in jobs(cluster, namespace)] == [job["metadata"]["uid"]]
        assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(source_tree(cluster, namespace))
    finally:
        helm(cluster, helm_bin, "uninstall", release, "-n", system, check=False)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)
