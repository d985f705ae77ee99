"""RestoreApprovals made and decided by token users, on the real API server."""

from __future__ import annotations

import json

from backups import GROUP
from cluster_helpers import wait_until

PLAN = "ab" * 32
OPERATOR = "system:serviceaccount:daoflow-system:daoflow-operator"


def bind(cluster, namespace: str, user: str, *scopes: str) -> None:
    for scope in scopes:
        cluster.kubectl("create", "rolebinding", f"{user}-{scope}", "-n", namespace, f"--clusterrole=daoflow:{scope}",
                        f"--user={cluster.user_name(user)}")


def request_as(cluster, user: str, namespace: str, name: str, run: str = "nightly", plan: str = PLAN,
               annotations: dict | None = None, **spec):
    body = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "RestoreApproval",
            "metadata": {"name": name, "namespace": namespace, **({"annotations": annotations} if annotations else {})},
            "spec": {"backupRunRef": {"name": run}, "planHash": plan, **spec}}
    return cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(body),
                           kubeconfig=cluster.user_kubeconfig(user), check=False)


def requested(cluster, user: str, namespace: str, name: str, **kwargs) -> dict:
    """Creates the approval as `user` once the scope's binding took effect."""
    result = wait_until(lambda: (r := request_as(cluster, user, namespace, name, **kwargs)).returncode == 0 and r,
                        what=f"{user} to be allowed to request an approval")
    return json.loads(result.stdout)


def decide_as(cluster, user: str | None, namespace: str, name: str, decision: str = "Approved",
              comment: str = "looks right", **extra):
    status = {"decision": decision, "comment": comment, **extra}
    return cluster.kubectl("patch", "restoreapproval", name, "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", json.dumps({"status": status}),
                           kubeconfig=cluster.user_kubeconfig(user) if user else None, check=False)


def decided(cluster, user: str, namespace: str, name: str, decision: str = "Approved", **kwargs) -> dict:
    """Decides as `user`, once the scope's binding took effect (RBAC and the CEL authorizer)."""
    def attempt():
        result = decide_as(cluster, user, namespace, name, decision, **kwargs)
        if result.returncode != 0 and "approvals:decide" not in result.stderr and "forbidden" not in result.stderr.lower():
            raise AssertionError(result.stderr)
        return result.returncode == 0
    wait_until(attempt, what=f"{user} to be allowed to decide {name}")
    return cluster.get("restoreapproval", name, namespace)


def approval(cluster, namespace: str, name: str) -> dict:
    return cluster.get("restoreapproval", name, namespace)
