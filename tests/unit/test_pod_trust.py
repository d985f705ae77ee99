"""Only the Job's own pods feed the record: any pod that merely carries its labels is named, never counted."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from daoflow_operator import jobs, planning, pods, status
from daoflow_operator.api import models
from daoflow_operator.config import Config
from daoflow_operator.status import Observation, decide

from objects import SHA, allowed, claim, free, restore, run, s3_destination, still

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
JOB_UID = "job-uid"
REPORT = json.dumps({"bytes": 73400320, "files": 12, "sha256": SHA, "verified": True})


def the_job(destination: dict | None = None, **status_) -> dict:
    """The restore Job as the API server keeps it: the operator's manifest, with its uid and selector labels."""
    r = restore()
    destination = destination or s3_destination()
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(r["spec"]), run(), destination).plan
    job = jobs.build_job(r, plan.dump(), destination, Config(runner_image="registry.example/daoflow:1.2.0"))
    job["metadata"]["uid"] = JOB_UID
    job["spec"]["template"]["metadata"]["labels"].update(
        {"batch.kubernetes.io/controller-uid": JOB_UID, "batch.kubernetes.io/job-name": job["metadata"]["name"],
         "controller-uid": JOB_UID, "job-name": job["metadata"]["name"]})
    job["status"] = status_ or {"active": 1, "ready": 0, "startTime": "2026-11-27T12:00:00Z"}
    return job


def own_pod(job: dict, name: str = "r1-restore-x7k2p", report: str | None = None, state: dict | None = None) -> dict:
    """A pod the Job controller made from the template, with what the API server and the scheduler add."""
    template = copy.deepcopy(job["spec"]["template"])
    spec = template["spec"]
    spec.update({"nodeName": "node-1", "schedulerName": "default-scheduler", "dnsPolicy": "ClusterFirst",
                 "terminationGracePeriodSeconds": 30,
                 "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300}]})
    for volume in spec["volumes"]:  # the defaults the API server writes
        if "downwardAPI" in volume:
            volume["downwardAPI"]["defaultMode"] = 420
            for item in volume["downwardAPI"]["items"]:
                item["fieldRef"]["apiVersion"] = "v1"
    spec["serviceAccountName"] = spec["serviceAccount"] = spec.get("serviceAccountName", "default")
    spec["containers"][0]["resources"]["limits"]["cpu"] = "2"  # a LimitRange's default
    if report is not None:
        state = {"terminated": {"exitCode": 0, "message": report, "startedAt": "2026-11-27T12:00:02Z"}}
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "creationTimestamp": "2026-11-27T12:00:01Z",
                     "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"],
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                          "uid": JOB_UID, "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
        "status": {"phase": "Succeeded" if report else "Pending",
                   "containerStatuses": [{"name": "runner", "ready": False, "state": state or {}}]},
    }


def forged(job: dict, change, name: str = "forged") -> dict:
    """A copy of the Job's real pod, as a tenant reads it, changed by `change(pod)`, with a forged report."""
    pod = own_pod(job, name, report=REPORT)
    change(pod)
    return pod


def runner(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def sets(path: str, value):
    def change(pod):
        obj = pod
        *parents, last = path.split(".")
        for part in parents:
            obj = obj[int(part)] if part.isdigit() else obj.setdefault(part, {})
        obj[last] = value
    return change


ATTACKS = {
    "another image tag": sets("spec.containers.0.image", "registry.example/daoflow:1.2.0-evil"),
    "a command override": sets("spec.containers.0.command", ["sh", "-c", "echo forged > /dev/termination-log"]),
    "other args": sets("spec.containers.0.args", ["--plan", "/tmp/mine.json"]),
    "an extra env var": lambda p: runner(p)["env"].append({"name": "PYTHONPATH", "value": "/tmp"}),
    "env from a ConfigMap": sets("spec.containers.0.envFrom", [{"configMapRef": {"name": "mine"}}]),
    "another working dir": sets("spec.containers.0.workingDir", "/tmp"),
    "another termination message path": sets("spec.containers.0.terminationMessagePath", "/tmp/report"),
    "messages from the logs": sets("spec.containers.0.terminationMessagePolicy", "FallbackToLogsOnError"),
    "a postStart hook": sets("spec.containers.0.lifecycle", {"postStart": {"exec": {"command": ["sh"]}}}),
    "an exec probe": sets("spec.containers.0.livenessProbe", {"exec": {"command": ["sh"]}}),
    "a root container": sets("spec.containers.0.securityContext", {"runAsUser": 0}),
    "an extra container": lambda p: p["spec"]["containers"].append({"name": "helper", "image": "busybox"}),
    "a sidecar before it": lambda p: p["spec"]["containers"].insert(0, {"name": "helper", "image": "busybox"}),
    "an init container": sets("spec.initContainers", [{"name": "prep", "image": "busybox",
                                                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}]),
    "an ephemeral container": sets("spec.ephemeralContainers", [{"name": "debug", "image": "busybox",
                                                                 "targetContainerName": "runner"}]),
    "a mount of a volume they fill": lambda p: (
        p["spec"]["volumes"].append({"name": "mine", "persistentVolumeClaim": {"claimName": "mine"}}),
        runner(p)["volumeMounts"].append({"name": "mine", "mountPath": "/tmp/lib"})),
    "the plan from a ConfigMap": lambda p: p["spec"]["volumes"].__setitem__(0, {
        "name": "plan", "configMap": {"name": "my-plan", "defaultMode": 420}}),
    "another target claim": lambda p: next(v for v in p["spec"]["volumes"] if v["name"] == "target")
    .__setitem__("persistentVolumeClaim", {"claimName": "elsewhere"}),
    "other S3 credentials": lambda p: next(v for v in p["spec"]["volumes"] if v["name"] == "s3-credentials")
    ["secret"].__setitem__("secretName", "mine"),
    "a mount at another path": lambda p: runner(p)["volumeMounts"][1].__setitem__("mountPath", "/var/tmp"),
    "another service account": sets("spec.serviceAccountName", "builder"),
    "a mounted token": sets("spec.automountServiceAccountToken", True),
    "the host network": sets("spec.hostNetwork", True),
    "the host PID namespace": sets("spec.hostPID", True),
    "the host IPC namespace": sets("spec.hostIPC", True),
    "a shared PID namespace": sets("spec.shareProcessNamespace", True),
    "another runtime class": sets("spec.runtimeClassName", "unsandboxed"),
    "a root pod": sets("spec.securityContext.runAsUser", 0),
    "host aliases": sets("spec.hostAliases", [{"ip": "10.0.0.9", "hostnames": ["s3.example"]}]),
    "its own DNS": sets("spec.dnsConfig", {"nameservers": ["10.0.0.9"]}),
    "service links": sets("spec.enableServiceLinks", True),
    "another plan annotation": lambda p: p["metadata"]["annotations"].__setitem__(
        jobs.ANNOTATION_PLAN, json.dumps({"forged": True})),
    "no owner": lambda p: p["metadata"].pop("ownerReferences"),
    "another Job as owner": sets("metadata.ownerReferences.0.uid", "other-job-uid"),
    "an owner that is not the controller": sets("metadata.ownerReferences.0.controller", False),
    "a controller of another kind": sets("metadata.ownerReferences.0.kind", "ReplicaSet"),
}


def test_the_jobs_own_pod_is_trusted_whatever_the_api_server_and_scheduler_added():
    job = the_job()
    assert pods.untrusted_because(own_pod(job), job) is None
    assert pods.judge([own_pod(job)], job) == ([own_pod(job)], [])


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_difference_in_what_runs_or_what_it_reads_disqualifies_a_pod(attack):
    job = the_job()
    pod = forged(job, ATTACKS[attack])
    why = pods.untrusted_because(pod, job)
    assert why, attack
    trusted, untrusted = pods.judge([pod, own_pod(job)], job)
    assert [p["metadata"]["name"] for p in trusted] == ["r1-restore-x7k2p"]
    assert untrusted == [pods.Untrusted("forged", "forged-uid", why)]


def test_the_reason_names_what_differs():
    job = the_job()
    assert pods.untrusted_because(forged(job, ATTACKS["a command override"]), job) == \
        "its spec differs from the Job's pod template in containers[runner].command"
    assert pods.untrusted_because(forged(job, ATTACKS["no owner"]), job) == "it is not controlled by Job r1-restore"
    assert "annotations differ" in pods.untrusted_because(forged(job, ATTACKS["another plan annotation"]), job)


def test_the_token_volume_of_the_service_account_plugin_counts_only_where_the_template_allows_a_token():
    job = the_job()
    token = {"name": "kube-api-access-x1y2z", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                       "fieldPath": "metadata.namespace"}}]}}]}}
    mount = {"name": token["name"], "mountPath": pods.TOKEN_MOUNT_PATH, "readOnly": True}

    def with_token(pod):
        pod["spec"]["volumes"].append(copy.deepcopy(token))
        runner(pod)["volumeMounts"].append(dict(mount))

    # The operator's template turns the token off: a token volume is then something else's doing.
    assert pods.untrusted_because(forged(job, with_token), job)
    del job["spec"]["template"]["spec"]["automountServiceAccountToken"]
    assert pods.untrusted_because(forged(job, with_token), job) is None
    # The same name with content of one's own choosing is not the plugin's volume.
    mine = copy.deepcopy(token)
    mine["projected"]["sources"][1]["configMap"]["name"] = "mine"
    assert pods.untrusted_because(forged(job, lambda p: (p["spec"]["volumes"].append(mine),
                                                         runner(p)["volumeMounts"].append(dict(mount)))), job)


def test_what_a_cloud_identity_webhook_adds_counts_only_for_a_serviceaccount_of_the_destination():
    irsa = s3_destination()
    del irsa["spec"]["s3"]["credentialsSecretRef"]
    irsa["spec"]["s3"]["credentialsFromEnvironment"] = {"serviceAccountName": "restore-irsa"}
    token = {"name": "aws-iam-token", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}
    mount = {"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
             "readOnly": True}
    env = [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/restore"},
           {"name": "AWS_WEB_IDENTITY_TOKEN_FILE",
            "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
           {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]

    def webhook(volume=token, extra_env=()):
        def change(pod):
            pod["spec"]["volumes"].append(copy.deepcopy(volume))
            runner(pod)["volumeMounts"].append(dict(mount))
            runner(pod).setdefault("env", []).extend([*env, *extra_env])
        return change

    job = the_job(irsa)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "restore-irsa"
    assert pods.untrusted_because(own_pod(job), job) is None
    assert pods.untrusted_because(forged(job, webhook()), job) is None
    # Only those variables: one that moves the endpoint or the CA is something else's doing.
    for name in ("AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "DAOFLOW_S3_ENDPOINT_ALLOWLIST"):
        assert pods.untrusted_because(forged(job, webhook(extra_env=[{"name": name, "value": "x"}])), job), name
    # Only a token: a volume of that name with other content is not the webhook's.
    mixed = copy.deepcopy(token)
    mixed["projected"]["sources"].append({"configMap": {"name": "mine"}})
    assert pods.untrusted_because(forged(job, webhook(volume=mixed)), job)
    # A destination with a Secret names no ServiceAccount: the same additions are then untrusted.
    plain = the_job()
    assert pods.untrusted_because(forged(plain, webhook()), plain)


# -- the record ------------------------------------------------------------------------------

def queued() -> dict:
    r = restore()
    d = decide(r, Observation(run=run(), destination=s3_destination(), target=free(), authorization=allowed(),
                              still_authorized=still(), target_claim=claim()), T0)
    assert d.create_job
    return {**r, "status": d.status}


def observe(r: dict, job: dict, pod_list: list[dict], at=T0 + timedelta(seconds=30)) -> status.Decision:
    """What the shell does: judge the pods, take the report from the trusted ones only."""
    trusted, untrusted = pods.judge(pod_list, job)
    report = pods.termination_message(trusted) if status.job_ended(job) else None
    return decide(r, Observation(job=job, pods=trusted, untrusted_pods=untrusted, report=report), at)


COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


def test_a_forged_pod_that_completes_the_job_fails_the_restore_and_is_named_never_counted():
    r, job = queued(), the_job(**COMPLETE)
    fake = forged(job, ATTACKS["a command override"])
    # The real pod never ran (the Job controller deleted it once the forged one was adopted).
    d = observe(r, job, [fake])
    st = d.status
    assert st["phase"] == "Failed" and st["completionTime"]
    succeeded = status.get_condition(st, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "UntrustedReport")
    assert "none of its own pods reported" in succeeded["message"]
    assert "result" not in st and status.get_condition(st, "ArtifactVerified") is None
    warnings = [(e.reason, e.message) for e in d.events if e.type == "Warning"]
    assert warnings[0][0] == "UntrustedPod" and "pod forged (uid forged-uid) carries the labels of Job r1-restore" \
        in warnings[0][1] and "containers[runner].command" in warnings[0][1]
    assert warnings[1][0] == "UntrustedReport"
    assert [(a["step"], a["outcome"]) for a in st["auditTrail"]][-2:] == [("execute", "rejected"), ("record", "failed")]
    assert d.release_target == "pvc/data" and not d.delete_job


def test_the_real_pods_report_is_used_next_to_a_forged_one():
    r, job = queued(), the_job(**COMPLETE)
    fake = forged(job, ATTACKS["another image tag"], name="forged")
    fake["metadata"]["creationTimestamp"] = "2026-11-27T12:09:00Z"  # newer: it would have won before
    fake["spec"]["containers"][0]["image"] = "registry.example/daoflow:1.2.0-evil"
    fake["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = json.dumps(
        {"bytes": 1, "files": 1, "sha256": SHA, "verified": True})
    d = observe(r, job, [fake, own_pod(job, report=REPORT)])
    assert d.status["phase"] == "Succeeded"
    assert d.status["result"]["bytes"] == 73400320
    assert [e.reason for e in d.events if e.type == "Warning"] == ["UntrustedPod"]


def test_a_running_forged_pod_does_not_make_a_queued_restore_running_and_is_named_once():
    r, job = queued(), the_job(active=2, ready=1, startTime="2026-11-27T12:00:00Z")
    fake = forged(job, ATTACKS["a command override"])
    fake["status"] = {"phase": "Running", "containerStatuses": [
        {"name": "runner", "ready": True, "state": {"running": {"startedAt": "2026-11-27T12:00:05Z"}}}]}
    real = own_pod(job, state={"waiting": {"reason": "ContainerCreating"}})
    d1 = observe(r, job, [fake, real])
    assert d1.status["phase"] == "Queued"
    assert [e.reason for e in d1.events] == ["UntrustedPod"]
    r = {**r, "status": d1.status}
    d2 = observe(r, job, [fake, real], at=T0 + timedelta(seconds=40))
    assert d2.events == [] and not status.changed(r["status"], d2.status)  # nothing new: nothing written


def test_a_flood_of_forged_pods_names_only_the_first_few():
    r, job = queued(), the_job()
    fakes = [forged(job, ATTACKS["a command override"], name=f"forged-{i:02d}") for i in range(20)]
    d = observe(r, job, fakes + [own_pod(job, state={"waiting": {"reason": "ContainerCreating"}})])
    assert len([e for e in d.events if e.reason == "UntrustedPod"]) == status.UNTRUSTED_NOTED
    again = observe({**r, "status": d.status}, job, fakes, at=T0 + timedelta(seconds=40))
    assert again.events == []


def test_a_job_that_completed_with_none_of_its_own_pods_succeeded_proves_nothing():
    # A forged pod that completed the Job and was deleted before the operator looked.
    r, job = queued(), the_job(**COMPLETE)
    d = observe(r, job, [])
    assert d.status["phase"] == "Failed"
    assert status.get_condition(d.status, "Succeeded")["message"] == (
        "Job r1-restore ended, but none of its own pods reported: none of them succeeded; nothing is known to "
        "have been restored")
    # Its own pod succeeded without a report (a simulated node runs no runner): Succeeded, unverified.
    own = own_pod(job, state={"terminated": {"exitCode": 0, "startedAt": "2026-11-27T12:00:02Z"}})
    own["status"]["phase"] = "Succeeded"
    d = observe(r, job, [own])
    assert d.status["phase"] == "Succeeded"
    assert status.get_condition(d.status, "ArtifactVerified")["reason"] == "ReportMissing"


def test_a_job_that_ended_without_any_untrusted_pod_keeps_its_old_outcome():
    r, job = queued(), the_job(**COMPLETE)
    d = observe(r, job, [own_pod(job, report=REPORT)])
    assert d.status["phase"] == "Succeeded" and [e.type for e in d.events] == ["Normal"] * len(d.events)


# -- the admission policy, as shipped and as the chart renders it --------------------------------

def test_the_chart_renders_the_shipped_policy_by_default():
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    values = yaml.safe_load((root / "helm/daoflow-operator/values.yaml").read_text())["podTrust"]
    assert values["enabled"] and values["namespaceSelector"] == {}
    text = (root / "helm/daoflow-operator/templates/pod-trust.yaml").read_text()
    text = text.replace("{{ .Values.podTrust.jobControllerUsers | toJson }}",
                        json.dumps(values["jobControllerUsers"], separators=(",", ":")))
    text = re.sub(r"(?ms)^\s*{{- with .Values.podTrust.namespaceSelector }}.*?{{- end }}\n", "", text)
    text = re.sub(r"(?m)^{{-? (if|end)\b[^}]*}}\n", "", text)
    text = re.sub(r'(?m)^\s*{{- include "daoflow.commonMetadata" [^}]*}}\n', "", text)  # empty by default
    shipped = list(yaml.safe_load_all((root / "manifests/pod-trust.yaml").read_text()))
    assert [d for d in yaml.safe_load_all(text) if d] == shipped
    policy = shipped[0]["spec"]
    assert "system:serviceaccount:kube-system:job-controller" in policy["matchConditions"][1]["expression"]
