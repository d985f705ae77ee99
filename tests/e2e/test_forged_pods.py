"""A pod creator cannot fake a restore: the attack of issue 13, on the real API server and the real node.

A user who may only create pods reads the restore Job's uid and pinned sha256 and creates a pod with
the Job's selector label and a forged report, so that the Job controller adopts it and completes the
Job. Two layers stop it:

- admission (manifests/pod-trust.yaml): only the Job controller may create a pod with the Job
  controller's labels, and nobody may add or change them on an existing pod;
- the operator: a pod counts only if the Job controls it and its spec is the Job's pod template.
  To show this layer on its own, as on a cluster without the policy, the forged pod is created as
  the Job controller's own identity (impersonated), which the policy admits.
"""

from __future__ import annotations

import json

import pytest

from backups import backup_run, condition, destination, events, restore, restore_status, settle, wait_phase
from cluster_helpers import wait_until

pytestmark = pytest.mark.cluster

JOB_CONTROLLER = "system:serviceaccount:kube-system:job-controller"
# The labels of a Job's generated selector, by which the Job controller adopts pods.
JOB_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
# What the attacker wrote as the report: the pinned sha256, verified, 70 MiB restored.
FORGED_REPORT = {"bytes": 73400320, "files": 12, "verified": True}


def stuck_restore(cluster, namespace, start_operator):
    """A restore whose real pod stays Pending (no node matches it), with its Job and that pod."""
    start_operator(DAOFLOW_JOB_NODE_SELECTOR={"daoflow.dev/no-such-node": "true"},
                   DAOFLOW_UNSCHEDULABLE_TIMEOUT_SECONDS="600", DAOFLOW_POD_START_POLL_SECONDS="1")
    destination(cluster, namespace)
    run = backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    status = wait_until(lambda: (s := restore_status(cluster, namespace, name)).get("jobRef") and s,
                        timeout=60, what="the restore Job")
    job = cluster.get("job", status["jobRef"]["name"], namespace)
    pods = wait_until(lambda: pods_of(cluster, namespace, job), timeout=60, what="the Job's pod")
    return name, job, pods[0], run["status"]["artifact"]["sha256"]


def pods_of(cluster, namespace, job) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json",
                          "-l", f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}").stdout
    return json.loads(out)["items"]


def forged_from(real_pod: dict, name: str, sha256: str) -> dict:
    """The real pod as a tenant reads it, with its command swapped for one that writes a forged report,
    and placed where it runs (the real node)."""
    meta = real_pod["metadata"]
    spec = json.loads(json.dumps(real_pod["spec"]))
    for key in ("nodeSelector", "nodeName"):
        spec.pop(key, None)
    report = json.dumps({**FORGED_REPORT, "sha256": sha256})
    spec["containers"][0]["command"] = ["python", "-c", f"open('/dev/termination-log', 'w').write({report!r})"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": meta["labels"],
                         "annotations": meta.get("annotations") or {}},
            "spec": spec}


def warnings(cluster, namespace, name) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in events(cluster, namespace, name) if e["type"] == "Warning"]


def test_a_user_who_may_only_create_pods_cannot_make_one_the_job_adopts(cluster, namespace, start_operator):
    name, job, real_pod, sha256 = stuck_restore(cluster, namespace, start_operator)
    cluster.kubectl("create", "role", "pod-creator", "-n", namespace, "--verb=create,get,patch", "--resource=pods")
    cluster.kubectl("create", "rolebinding", "pod-creator", "-n", namespace, "--role=pod-creator",
                    f"--user={cluster.user_name('bob')}")
    bob = cluster.user_kubeconfig("bob")

    def create_as_bob(pod):
        return cluster.kubectl("create", "-f", "-", input=json.dumps(pod), kubeconfig=bob, check=False)

    # 1. The attack as filed: a copy of the real pod with a forged report, created by bob. Refused.
    forged = forged_from(real_pod, "forged", sha256)
    refused = wait_until(lambda: (r := create_as_bob(forged)).returncode != 0 and "may only be created" in r.stderr
                         and r, timeout=60, what="the pod-trust policy to refuse bob's forged pod")
    present = ", ".join(label for label in JOB_LABELS if label in real_pod["metadata"]["labels"])
    assert (f"a pod with the Job controller's labels ({present}) may only be created by the Job "
            f"controller: {cluster.user_name('bob')} may not make a pod that a Job would adopt") in refused.stderr
    # Any one of the labels is enough to be refused.
    for label in JOB_LABELS:
        one = forged_from(real_pod, f"forged-{JOB_LABELS.index(label)}", sha256)
        one["metadata"]["labels"] = {label: job["metadata"]["uid"]}
        assert create_as_bob(one).returncode != 0, label

    # 2. A pod of his own, then relabelled to be adopted: the pod is admitted, the relabelling is not.
    plain = forged_from(real_pod, "plain", sha256)
    plain["metadata"]["labels"] = {"app": "mine"}
    plain["spec"]["nodeSelector"] = {"daoflow.dev/no-such-node": "true"}  # it need not run
    created = create_as_bob(plain)
    assert created.returncode == 0, created.stderr
    for label in JOB_LABELS:
        relabel = cluster.kubectl("label", "pod", "plain", "-n", namespace, f"{label}={job['metadata']['uid']}",
                                  kubeconfig=bob, check=False)
        assert relabel.returncode != 0 and "may not be added to a pod or changed" in relabel.stderr, label
    # The job-name labels are not adopted by: other tools' pods may carry them.
    named = cluster.kubectl("label", "pod", "plain", "-n", namespace, f"job-name={job['metadata']['name']}",
                            kubeconfig=bob, check=False)
    assert named.returncode == 0, named.stderr

    # Nor may he point the real pod at another Job.
    moved = cluster.kubectl("label", "pod", real_pod["metadata"]["name"], "-n", namespace, "--overwrite",
                            "batch.kubernetes.io/controller-uid=another-job", kubeconfig=bob, check=False)
    assert moved.returncode != 0 and "may not be added to a pod or changed" in moved.stderr

    # 3. The record is untouched: still Queued behind the real pod, which is the Job's only pod.
    settle()
    assert [p["metadata"]["name"] for p in pods_of(cluster, namespace, job)] == [real_pod["metadata"]["name"]]
    status = restore_status(cluster, namespace, name)
    assert status["phase"] == "Queued" and "Unschedulable" in condition(status, "Ready")["message"]
    assert "UntrustedPod" not in [reason for reason, _ in warnings(cluster, namespace, name)]


def test_a_forged_pod_the_job_adopts_never_feeds_the_record(cluster, namespace, start_operator, real_node):
    name, job, real_pod, sha256 = stuck_restore(cluster, namespace, start_operator)
    target = cluster.volume_dir(f"{namespace}-app-data")

    # As the Job controller itself, which the policy admits: what a cluster without the policy allows anyone.
    forged = forged_from(real_pod, "forged", sha256)
    created = cluster.kubectl("create", "-f", "-", f"--as={JOB_CONTROLLER}", input=json.dumps(forged), check=False)
    assert created.returncode == 0, created.stderr

    status = wait_phase(cluster, namespace, name, "Failed", timeout=180)
    # The Job controller did adopt the forged pod and count it: the attack worked on the Job.
    adopted = cluster.get("pod", "forged", namespace)
    assert [(r["kind"], r["uid"], r.get("controller")) for r in adopted["metadata"]["ownerReferences"]] == \
        [("Job", job["metadata"]["uid"], True)]
    assert adopted["status"]["phase"] == "Succeeded"
    terminated = adopted["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(terminated["message"])["verified"] is True

    # The record did not: failed, saying why, with no result and nothing verified.
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "UntrustedReport")
    assert "none of its own pods reported" in succeeded["message"]
    assert condition(status, "Ready")["reason"] == "UntrustedReport"
    assert "result" not in status and condition(status, "ArtifactVerified") == {}
    steps = [(a["step"], a["outcome"]) for a in status["auditTrail"]]
    assert ("execute", "rejected") in steps and steps[-1] == ("record", "failed")
    assert "fetch" not in [step for step, _ in steps]  # the forged pod never made it Running
    named = [a["message"] for a in status["auditTrail"] if a["outcome"] == "rejected"]
    assert len(named) == 1 and named[0].startswith(f"pod forged (uid {adopted['metadata']['uid']}) carries the "
                                                   f"labels of Job {job['metadata']['name']} but is not its own")
    # Named once, by what the operator saw first: the pod as created (no Job controls it yet, since
    # pod events wake the restore at once) or as adopted (its command is not the template's).
    assert "containers[runner].command" in named[0] or "it is not controlled by Job" in named[0]

    settle()
    found = warnings(cluster, namespace, name)
    assert [reason for reason, _ in found].count("UntrustedPod") == 1  # named once, not on every pass
    assert ("UntrustedPod", named[0]) in found
    assert "UntrustedReport" in [reason for reason, _ in found]
    reasons = [e["reason"] for e in events(cluster, namespace, name)]
    assert not {"Fetching", "Restored", "ChecksumVerified", "Succeeded"} & set(reasons)
    assert list(target.iterdir()) == []  # and indeed nothing was restored
