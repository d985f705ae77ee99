"""`kubectl apply -k` of an overlay over the kustomize base manifests/, as a user installs it: the
operator runs in a pod of the real node, from the locally built image, and a restore completes
through the real runner. The base's objects are those the session's `installed` fixture applied
(the same manifests), so applying them again changes nothing but adds the Deployment, which the test
deletes at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from backups import backup_run, destination, restore, snapshot, source_tree, wait_phase

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def overlay(tmp: Path, image: str, watched: str) -> Path:
    repository, tag = image.rsplit(":", 1)
    folder = tmp / "overlay"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "manifests", folder)],
        "images": [{"name": "ghcr.io/daoflow-dev/daoflow-operator", "newName": repository, "newTag": tag}],
        "patches": [
            {"target": {"kind": "Deployment", "name": "daoflow-operator"}, "patch": yaml.safe_dump([
                {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
                {"op": "replace", "path": "/spec/template/spec/containers/0/env/1",
                 "value": {"name": "DAOFLOW_RUNNER_IMAGE", "value": image}},
                {"op": "replace", "path": "/spec/template/spec/containers/0/env/2",
                 "value": {"name": "DAOFLOW_WATCH_NAMESPACES", "value": watched}}])},
            # The one image the operator's Jobs may run: the same image (docs/install.md).
            {"target": {"kind": "ValidatingAdmissionPolicy", "name": "daoflow-operator-job-shape"},
             "patch": yaml.safe_dump([{"op": "replace", "path": "/spec/variables/0/expression", "value": f"'{image}'"}])},
        ],
    }))
    return folder


def test_apply_k_runs_the_operator_in_a_pod_and_a_restore_completes(cluster, namespace, tmp_path):
    if not cluster.real_node:
        pytest.skip("the operator runs in a pod of the real node")
    folder = overlay(tmp_path, cluster.runner_image, namespace)
    rendered = [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(folder)).stdout) if d]
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == cluster.runner_image
    try:
        cluster.kubectl("apply", "-k", str(folder))
        cluster.kubectl("rollout", "status", "deployment/daoflow-operator", "-n", "daoflow-system", "--timeout=180s",
                        timeout=200)
        destination(cluster, namespace)
        backup_run(cluster, namespace)
        name = restore(cluster, namespace)
        wait_phase(cluster, namespace, name, "Succeeded", timeout=180)
        assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(source_tree(cluster, namespace))
        pods = json.loads(cluster.kubectl("get", "pods", "-n", "daoflow-system", "-o", "json").stdout)["items"]
        assert [p["spec"]["containers"][0]["image"] for p in pods] == [cluster.runner_image]
    finally:
        cluster.kubectl("delete", "deployment", "daoflow-operator", "-n", "daoflow-system", "--ignore-not-found",
                        "--wait=true", timeout=120)
        cluster.kubectl("delete", "lease", "daoflow-operator", "-n", "daoflow-system", "--ignore-not-found")
