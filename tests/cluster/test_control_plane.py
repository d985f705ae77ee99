"""The control plane enforces what a mock would only assume: Jobs, CEL, RBAC, admission policies."""

from __future__ import annotations

import json
import uuid

import pytest

from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster


def _run_job(cluster, namespace: str, name: str, pod_spec: dict) -> dict:
    cluster.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", **pod_spec}}}})

    def complete():
        status = cluster.get("job", name, namespace).get("status", {})
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", []))

    wait_until(complete, timeout=90, what=f"Job {name} to be Complete")
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"job-name={name}", "-o", "json").stdout)
    assert [p["status"]["phase"] for p in pods["items"]] == ["Succeeded"]
    return pods["items"][0]


def test_a_job_runs_to_complete_through_kwok(cluster, namespace):
    from daoflow_operator.localcluster.cluster import SIMULATED_NODE_SELECTOR, SIMULATED_TOLERATION

    pod = _run_job(cluster, namespace, "hello", {
        "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        # While the real node exists, the simulated one takes only pods that ask for it.
        "tolerations": [SIMULATED_TOLERATION], "nodeSelector": SIMULATED_NODE_SELECTOR})
    assert pod["spec"]["nodeName"] == "kwok-node-0"


@pytest.mark.usefixtures("real_node")
def test_a_job_runs_in_a_real_container_on_the_real_node(cluster, namespace):
    pod = _run_job(cluster, namespace, "hello-real", {
        "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": "localhost/busybox:daoflow", "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "echo hello from $(hostname) in $(cat /proc/1/cgroup | wc -l) cgroups"]}]})
    assert pod["spec"]["nodeName"] == "daoflow-node"
    # `kubectl logs` goes through the API server's egress proxy into the node's network namespace.
    logs = cluster.kubectl("logs", "job/hello-real", "-n", namespace).stdout
    assert logs.startswith(f"hello from {pod['metadata']['name']} in ")


def _immutable_crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec is immutable"}],
                        "properties": {"size": {"type": "integer"}},
                    }},
                }},
            }],
        },
    }


def test_a_cel_rule_refuses_an_update_of_an_immutable_spec(cluster, namespace):
    group = f"g{uuid.uuid4().hex[:8]}.test.daoflow.dev"
    cluster.apply(_immutable_crd(group))
    try:
        wait_until(lambda: cluster.kubectl("get", f"widgets.{group}", "-n", namespace, check=False).returncode == 0,
                   timeout=30, what="the CRD to be served")
        widget = {"apiVersion": f"{group}/v1", "kind": "Widget",
                  "metadata": {"name": "w", "namespace": namespace}, "spec": {"size": 1}}
        cluster.apply(widget)
        widget["spec"]["size"] = 2
        result = cluster.apply(widget, check=False)
        assert result.returncode != 0
        assert "spec is immutable" in result.stderr
        assert cluster.get(f"widgets.{group}", "w", namespace)["spec"]["size"] == 1
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_rbac_denies_an_unprivileged_user_until_a_rolebinding_grants_it(cluster, namespace):
    alice = cluster.user_kubeconfig("alice")
    denied = cluster.kubectl("get", "configmaps", "-n", namespace, kubeconfig=alice, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr

    cluster.kubectl("create", "role", "cm-reader", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    cluster.kubectl("create", "rolebinding", "alice-cm-reader", "-n", namespace, "--role=cm-reader",
                    f"--user={cluster.user_name('alice')}")
    wait_until(lambda: cluster.kubectl("get", "configmaps", "-n", namespace, kubeconfig=alice,
                                       check=False).returncode == 0,
               timeout=30, what="alice to be allowed by the RoleBinding")


def test_an_admission_policy_with_the_cel_authorizer_checks_a_custom_verb(cluster, namespace):
    suffix = uuid.uuid4().hex[:8]
    policy = f"needs-launch-{suffix}"
    cluster.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"],
            }]},
            "matchConditions": [{"name": "only-launch-requests",
                                 "expression": "has(object.metadata.labels) && 'launch' in object.metadata.labels"}],
            "validations": [{
                "expression": "authorizer.group('').resource('configmaps').namespace(object.metadata.namespace)"
                              ".check('launch').allowed()",
                "message": "creating a launch requires the verb launch on configmaps",
            }],
        },
    })
    cluster.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    })
    # Both users may create configmaps; only bob may also "launch".
    cluster.kubectl("create", "role", "cm-writer", "-n", namespace, "--verb=create", "--resource=configmaps")
    cluster.kubectl("create", "role", "launcher", "-n", namespace, "--verb=launch", "--resource=configmaps")
    for user in ("alice", "bob"):
        cluster.kubectl("create", "rolebinding", f"{user}-cm-writer", "-n", namespace, "--role=cm-writer",
                        f"--user={cluster.user_name(user)}")
    cluster.kubectl("create", "rolebinding", "bob-launcher", "-n", namespace, "--role=launcher",
                    f"--user={cluster.user_name('bob')}")
    alice, bob = cluster.user_kubeconfig("alice"), cluster.user_kubeconfig("bob")
    try:
        # Policies take effect asynchronously, so poll.
        def try_create(kubeconfig, name):
            manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": namespace, "labels": {"launch": "yes"}}}
            return cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), kubeconfig=kubeconfig,
                                   check=False)

        def denied():
            name = f"a-{uuid.uuid4().hex[:6]}"
            result = try_create(alice, name)
            if result.returncode == 0:
                cluster.kubectl("delete", "configmap", name, "-n", namespace, check=False)
                return False
            return result.stderr

        stderr = wait_until(denied, timeout=60, what="the admission policy to deny alice")
        assert "creating a launch requires the verb launch on configmaps" in stderr
        allowed = try_create(bob, "bob-launch")
        assert allowed.returncode == 0, allowed.stderr
        # Without the label the policy does not apply, and alice's RBAC alone decides.
        plain = cluster.kubectl("create", "configmap", "plain", "-n", namespace, kubeconfig=alice, check=False)
        assert plain.returncode == 0, plain.stderr
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, check=False)
