"""The operator's own rights: what its token may create, and where (issue 13).

Jobs are sent with the operator's ServiceAccount token in a server-side dry run: admission runs in
full (RBAC, the Job-shape policy) and nothing is stored. The chart's RBAC with watchNamespaces is
rendered by the pinned helm, applied, and asked with a token of its own ServiceAccount."""

from __future__ import annotations

import copy
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from backups import backup_run, condition, destination, jobs, restore, wait_phase
from cluster_helpers import wait_until
from daoflow_operator.localcluster import build
from job_shapes import dry_run_create, operator_job

pytestmark = pytest.mark.cluster

POLICY = "ValidatingAdmissionPolicy 'daoflow-operator-job-shape'"
CHART = Path(__file__).resolve().parents[2] / "helm" / "daoflow-operator"


@pytest.fixture
def enforced(cluster, operator_kubeconfig, namespace):
    """Waits until the API server enforces the Job-shape policy (policies load asynchronously)."""
    hostile = operator_job(namespace, cluster.runner_image)
    hostile["spec"]["template"]["spec"]["volumes"].append({"name": "probe", "hostPath": {"path": "/"}})
    wait_until(lambda: POLICY in dry_run_create(cluster, operator_kubeconfig, hostile).stderr, timeout=60,
               what="the Job-shape policy to be enforced")


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def runner(job: dict) -> dict:
    return pod_spec(job)["containers"][0]


def with_change(job: dict, change) -> dict:
    job = copy.deepcopy(job)
    change(job)
    return job


def test_a_job_with_a_hostpath_volume_is_refused(cluster, namespace, operator_kubeconfig, enforced):
    job = operator_job(namespace, cluster.runner_image)
    pod_spec(job)["volumes"].append({"name": "node-root", "hostPath": {"path": "/"}})
    runner(job)["volumeMounts"].append({"name": "node-root", "mountPath": "/var/run/daoflow/node"})
    refused = dry_run_create(cluster, operator_kubeconfig, job)
    assert refused.returncode != 0
    assert POLICY in refused.stderr and "is forbidden" in refused.stderr
    assert "a Job of the operator may not mount a hostPath volume (node-root)" in refused.stderr


def test_a_job_of_another_image_is_refused(cluster, namespace, operator_kubeconfig, enforced):
    job = operator_job(namespace, "docker.io/library/busybox:1.37")
    refused = dry_run_create(cluster, operator_kubeconfig, job)
    assert refused.returncode != 0 and POLICY in refused.stderr
    assert (f"a Job of the operator must run only the runner image {cluster.runner_image}, "
            "not docker.io/library/busybox:1.37") in refused.stderr


@pytest.mark.parametrize("destination_kind,target_kind", [("volume", "volume"), ("s3", "volume"),
                                                          ("volume", "postgres"), ("s3", "postgres"),
                                                          ("s3-ca-secret", "volume"),
                                                          ("s3-irsa-ca-configmap", "postgres")])
def test_every_job_the_operator_builds_is_admitted(cluster, namespace, operator_kubeconfig, enforced,
                                                    destination_kind, target_kind):
    # With every option of the operator's config that reaches the pod spec.
    job = operator_job(namespace, cluster.runner_image, destination_kind, target_kind,
                       job_pod_annotations={"sidecar.istio.io/inject": "false"},
                       job_node_selector={"kubernetes.io/os": "linux"},
                       job_pod_tolerations=[{"key": "daoflow.dev/simulated", "operator": "Exists",
                                             "effect": "NoSchedule"}],
                       s3_endpoint_allowlist=("10.0.0.0/8",))
    admitted = dry_run_create(cluster, operator_kubeconfig, job)
    assert admitted.returncode == 0, admitted.stderr
    assert admitted.stdout.strip() == "job.batch/shape-restore"


def _add_volume(kind: dict, path: str):
    def change(job):
        pod_spec(job)["volumes"].append({"name": "extra", **kind})
        runner(job)["volumeMounts"].append({"name": "extra", "mountPath": path})
    return change


REFUSED = {
    "an init container of another image": (
        lambda j: pod_spec(j).update(initContainers=[{**runner(j), "name": "init", "image": "busybox:1.37"}]),
        "must run only the runner image"),
    "another command": (
        lambda j: runner(j).update(command=["python", "-c", "print(open('/var/run/daoflow/database/password').read())"]),
        "must run the runner's command (python -m daoflow_operator.runner)"),
    "a working directory on a volume": (
        lambda j: runner(j).update(workingDir="/var/run/daoflow/target"),
        "must run the runner's command"),
    "a projected ServiceAccount token": (
        _add_volume({"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}, "/var/run/daoflow/t"),
        "may mount only persistentVolumeClaim, secret, configMap, downwardAPI and emptyDir volumes, not extra"),
    "a mount over the image's code": (
        _add_volume({"emptyDir": {}}, "/usr/local/lib"),
        "may mount volumes only at /tmp, below /etc/daoflow/ or below /var/run/daoflow/, not at /usr/local/lib"),
    "PYTHONPATH": (
        lambda j: runner(j)["env"].append({"name": "PYTHONPATH", "value": "/var/run/daoflow/target"}),
        "may set only DAOFLOW_* and CA bundle variables"),
    "privileged": (
        lambda j: runner(j)["securityContext"].update(privileged=True, allowPrivilegeEscalation=True),
        "may not be privileged nor add capabilities"),
    "an added capability": (
        lambda j: runner(j)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "may not be privileged nor add capabilities"),
    "privilege escalation left to its default": (
        lambda j: runner(j)["securityContext"].pop("allowPrivilegeEscalation"),
        "must set allowPrivilegeEscalation: false"),
    "root": (
        lambda j: runner(j)["securityContext"].update(runAsNonRoot=False),
        "must run as non-root"),
    "an unconfined seccomp profile": (
        lambda j: runner(j)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "may not run unconfined"),
    "the node's network": (
        lambda j: pod_spec(j).update(hostNetwork=True),
        "may not use the node's network, PID or IPC namespace, nor a hostPort"),
    "the node's PIDs": (
        lambda j: pod_spec(j).update(hostPID=True),
        "may not use the node's network, PID or IPC namespace"),
    "a hostPort": (
        lambda j: runner(j).update(ports=[{"containerPort": 8080, "hostPort": 8080}]),
        "nor a hostPort"),
    "a nodeName": (
        lambda j: pod_spec(j).update(nodeName="control-plane"),
        "may not set nodeName"),
    "a mounted ServiceAccount token": (
        lambda j: pod_spec(j).update(automountServiceAccountToken=True, serviceAccountName="default"),
        "must set automountServiceAccountToken: false"),
    "no managed-by label": (
        lambda j: j["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        "must carry its labels"),
    "no owner": (
        lambda j: j["metadata"].pop("ownerReferences"),
        "must have exactly one ownerReference, its controller: a BackupRestore"),
    "another owner": (
        lambda j: j["metadata"]["ownerReferences"][0].update(apiVersion="apps/v1", kind="Deployment"),
        "must have exactly one ownerReference"),
    "an owner the labels do not name": (
        lambda j: j["metadata"]["ownerReferences"][0].update(uid=str(uuid.uuid4())),
        "whose uid the label backup.daoflow.dev/restore-uid repeats"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_a_job_of_any_other_shape_is_refused(cluster, namespace, operator_kubeconfig, enforced, what):
    change, message = REFUSED[what]
    refused = dry_run_create(cluster, operator_kubeconfig, with_change(operator_job(namespace, cluster.runner_image),
                                                                      change))
    assert refused.returncode != 0, f"{what} was admitted"
    assert POLICY in refused.stderr and message in refused.stderr, refused.stderr


ADMITTED = {
    # What an S3 identity of the cloud and a private CA need: a ServiceAccount (its token never
    # mounted), a CA bundle from a ConfigMap, and the variable that points at it.
    "a ServiceAccount for a cloud identity": lambda j: pod_spec(j).update(serviceAccountName="restore-irsa"),
    "a CA bundle from a ConfigMap": _add_volume({"configMap": {"name": "corp-ca"}}, "/etc/daoflow/ca"),
    "a CA bundle variable": lambda j: runner(j)["env"].append({"name": "SSL_CERT_FILE",
                                                               "value": "/etc/daoflow/ca/ca.crt"}),
}


@pytest.mark.parametrize("what", sorted(ADMITTED))
def test_what_the_runner_may_still_need_is_admitted(cluster, namespace, operator_kubeconfig, enforced, what):
    admitted = dry_run_create(cluster, operator_kubeconfig,
                              with_change(operator_job(namespace, cluster.runner_image), ADMITTED[what]))
    assert admitted.returncode == 0, admitted.stderr


def test_the_policy_binds_only_the_operator(cluster, namespace, enforced):
    """Other users' Jobs (an admin's, a CronJob's) are none of its business."""
    job = operator_job(namespace, "docker.io/library/busybox:1.37")
    pod_spec(job)["volumes"].append({"name": "node-root", "hostPath": {"path": "/"}})
    del job["metadata"]["ownerReferences"]
    admitted = dry_run_create(cluster, None, job)
    assert admitted.returncode == 0, admitted.stderr


# --- Leases and Jobs of others -----------------------------------------------------------------

def lease(namespace: str, name: str, managed: bool = True) -> dict:
    labels = {"app.kubernetes.io/managed-by": "daoflow-operator"} if managed else {}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"holderIdentity": "shape/0"}}


def test_the_operator_writes_only_its_own_leases(cluster, namespace, operator_kubeconfig, enforced):
    # Its RBAC allows Leases in every namespace; a node's heartbeat or a leader election is not its own.
    refused = dry_run_create(cluster, operator_kubeconfig, lease("kube-system", "kube-scheduler"))
    assert refused.returncode != 0
    assert ("the operator may write or delete only its own Leases (daoflow-target-*, managed by daoflow-operator, "
            "and write its election Lease daoflow-system/daoflow-operator), not kube-system/kube-scheduler") in refused.stderr
    # Its election Lease, by namespace and name only.
    election = dry_run_create(cluster, operator_kubeconfig, lease("daoflow-system", "daoflow-operator", managed=False))
    assert election.returncode == 0, election.stderr
    elsewhere = dry_run_create(cluster, operator_kubeconfig, lease(namespace, "daoflow-operator", managed=False))
    assert "only its own Leases" in elsewhere.stderr
    unlabelled = dry_run_create(cluster, operator_kubeconfig, lease(namespace, "daoflow-target-0123", managed=False))
    assert "only its own Leases" in unlabelled.stderr
    admitted = dry_run_create(cluster, operator_kubeconfig, lease(namespace, "daoflow-target-0123"))
    assert admitted.returncode == 0, admitted.stderr
    cluster.apply(lease(namespace, "kube-controller-manager", managed=False))
    deleted = cluster.kubectl("delete", "lease", "kube-controller-manager", "-n", namespace, "--dry-run=server",
                              kubeconfig=operator_kubeconfig, check=False)
    assert deleted.returncode != 0 and "only its own Leases" in deleted.stderr


def test_the_operator_deletes_only_its_own_jobs(cluster, namespace, operator_kubeconfig, enforced):
    foreign = operator_job(namespace, "docker.io/library/busybox:1.37")
    del foreign["metadata"]["ownerReferences"]
    foreign["metadata"].update(name="nightly-report", labels={"app": "report"})
    foreign["spec"]["suspend"] = True  # never runs: only its deletion is tested
    foreign["spec"]["template"]["metadata"]["labels"] = {"app": "report"}
    cluster.apply(foreign)
    refused = cluster.kubectl("delete", "job", "nightly-report", "-n", namespace, "--dry-run=server",
                              kubeconfig=operator_kubeconfig, check=False)
    assert refused.returncode != 0
    assert ("the operator may delete only its own restore Jobs (managed by daoflow-operator), "
            f"not {namespace}/nightly-report") in refused.stderr
    own = operator_job(namespace, cluster.runner_image)
    own["spec"]["suspend"] = True
    del own["metadata"]["ownerReferences"]  # no such restore: the garbage collector would take it first
    cluster.apply(own)
    deleted = cluster.kubectl("delete", "job", own["metadata"]["name"], "-n", namespace, "--dry-run=server",
                              kubeconfig=operator_kubeconfig, check=False)
    assert deleted.returncode == 0, deleted.stderr


# --- the chart's RBAC when watchNamespaces is set -------------------------------------------------

@pytest.fixture
def chart_rbac(cluster, namespace, request):
    """The chart's RBAC for a release in a namespace of its own that watches only `namespace`, applied.

    Its ClusterRole and binding get the release's name, so that the session's own (the cluster-wide
    mode, from manifests/rbac.yaml) stay as they are. Yields a kubeconfig of the release's
    ServiceAccount."""
    release = f"daoflow-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", release)
    rendered = subprocess.run([str(build.helm_path()), "template", "daoflow", str(CHART), "--namespace", release,
                               "--set", f"watchNamespaces={{{namespace}}}", "--show-only", "templates/rbac.yaml"],
                              capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] = release
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = release
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    token = cluster.kubectl("create", "token", "daoflow-operator", "-n", release, "--duration=1h").stdout.strip()
    yield {"kubeconfig": cluster.token_kubeconfig(f"{release}-operator", token), "release": release, "docs": docs}
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", release, check=False)
    cluster.kubectl("delete", "namespace", release, "--wait=false", check=False)


def can_i(cluster, kubeconfig, *args: str) -> str:
    proc = cluster.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    return proc.stdout.strip()


def test_with_watch_namespaces_the_operator_cannot_create_jobs_elsewhere(cluster, namespace, chart_rbac):
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in chart_rbac["docs"]}
    assert ("Role", namespace) in kinds and ("RoleBinding", namespace) in kinds
    kubeconfig = chart_rbac["kubeconfig"]
    # RBAC changes reach the authorizer's cache within a moment.
    wait_until(lambda: can_i(cluster, kubeconfig, "create", "jobs", "-n", namespace) == "yes", timeout=30,
               what="the Role to take effect")
    assert can_i(cluster, kubeconfig, "create", "jobs", "-n", "kube-system") == "no"
    assert can_i(cluster, kubeconfig, "create", "jobs", "-n", "default") == "no"
    assert can_i(cluster, kubeconfig, "list", "pods", "--all-namespaces") == "no"
    assert can_i(cluster, kubeconfig, "get", "pods", "-n", "kube-system") == "no"
    assert can_i(cluster, kubeconfig, "create", "leases", "-n", "kube-system") == "no"
    assert can_i(cluster, kubeconfig, "list", "pods", "-n", namespace) == "yes"
    assert can_i(cluster, kubeconfig, "get", "secrets", "-n", namespace) == "no"
    assert can_i(cluster, kubeconfig, "create", "subjectaccessreviews.authorization.k8s.io") == "yes"


def test_with_watch_namespaces_the_operator_still_restores_in_its_namespace(cluster, namespace, chart_rbac,
                                                                           start_operator):
    """The Role is enough: the operator, run with only the chart's per-namespace RBAC, plans a dry run
    and runs a restore to its end (on the simulated node: the rights are what is tested here)."""
    kubeconfig = chart_rbac["kubeconfig"]
    wait_until(lambda: can_i(cluster, kubeconfig, "create", "jobs", "-n", namespace) == "yes", timeout=30,
               what="the Role to take effect")
    start_operator(simulated=True, kubeconfig=kubeconfig)
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    preview = wait_phase(cluster, namespace, restore(cluster, namespace, dryRun=True), "Planned", timeout=60)
    assert condition(preview, "Validated")["status"] == "True"
    status = wait_phase(cluster, namespace, restore(cluster, namespace), "Succeeded", timeout=120)
    assert condition(status, "Succeeded")["status"] == "True"
    assert [j["metadata"]["ownerReferences"][0]["kind"] for j in jobs(cluster, namespace)] == ["BackupRestore"]
