"""Restores that run the real runner, from the image built from the Dockerfile, in real pods.

Each test reads what the restore really did: the files in the target volume, the rows in
PostgreSQL, the identity of the process inside the container. They need the real node, and
are skipped (saying why) where the machine cannot run one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from backups import (ARTIFACT_PATH, application_data, backup_run, condition, destination, events, jobs, make_artifact,
                     restore, sample_tree, set_run_status, snapshot, succeeded, volume, wait_phase)
from cluster_helpers import wait_until
from daoflow_operator import jobs as jobs_
from daoflow_operator.config import Config

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]


def pod_logs(cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("logs", f"job/{name}-restore", "-n", namespace, check=False).stdout


def s3_destination(cluster, namespace, s3, name="s3", secret="s3-creds") -> str:
    """A BackupDestination on the real S3 server, reached by pods over the node's network."""
    cluster.apply({"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupDestination",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"s3": {"endpoint": f"http://{cluster.forward(s3.port)}", "allowInsecureHTTP": True,
                                   "bucket": s3.bucket,
                                   "prefix": f"{namespace}/", "forcePathStyle": True,
                                   "credentialsSecretRef": {"name": secret}}}})
    return name


def test_an_s3_restore_through_the_real_s3_server_keeps_its_credentials_secret(cluster, namespace, operator, s3,
                                                                                tmp_path):
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}")
    s3_destination(cluster, namespace, s3)
    tree = sample_tree(tmp_path / "tree")
    artifact = make_artifact(tree, tmp_path / "artifact.tar.zst")
    s3.upload(f"{namespace}/{ARTIFACT_PATH}", tmp_path / "artifact.tar.zst")
    status = succeeded()
    status["artifact"].update(artifact)
    backup_run(cluster, namespace, destination_name="s3", status=status)
    name = restore(cluster, namespace)

    status = wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    assert snapshot(cluster.volume_dir(f"{namespace}-app-data")) == snapshot(tree)
    assert status["result"]["sha256"] == artifact["sha256"] and status["result"]["verified"] is True
    pod = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    seen = json.dumps(cluster.get("backuprestore", name, namespace)) + json.dumps(events(cluster, namespace, name))
    seen += json.dumps(jobs(cluster, namespace)) + json.dumps(pod) + operator.output() + pod_logs(cluster, namespace, name)
    assert "progress" in pod_logs(cluster, namespace, name) or status["result"]["bytes"] > 0
    for secret in (s3.access_key, s3.secret_key):
        assert secret not in seen


def test_a_postgres_restore_into_real_postgresql(cluster, namespace, operator, postgres, tmp_path):
    postgres.psql("DROP DATABASE IF EXISTS shop_src")
    postgres.psql("CREATE DATABASE shop_src")
    postgres.psql("CREATE TABLE orders (id int PRIMARY KEY, item text, qty int);"
                  "INSERT INTO orders SELECT g, 'item-' || g, g % 7 FROM generate_series(1, 5000) g;"
                  "CREATE TABLE notes (id serial PRIMARY KEY, body text);"
                  "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 300) g;", db="shop_src")
    target_db = f"shop_{namespace.replace('-', '_')}"
    postgres.psql(f"DROP DATABASE IF EXISTS {target_db}")
    postgres.psql(f"CREATE DATABASE {target_db}")
    dump = postgres.pg_dump("shop_src", tmp_path / "shop.dump")
    destination_dir = destination(cluster, namespace)
    (destination_dir / "db").mkdir(exist_ok=True)
    shutil.copy(dump, destination_dir / "db" / "shop.dump")
    host, port = cluster.forward(postgres.port).split(":")
    cluster.kubectl("create", "secret", "generic", "db", "-n", namespace, f"--from-literal=host={host}",
                    f"--from-literal=port={port}", f"--from-literal=dbname={target_db}",
                    "--from-literal=user=postgres", f"--from-literal=password={postgres.password}")
    cluster.apply({"apiVersion": "backup.daoflow.dev/v1alpha1", "kind": "BackupRun",
                   "metadata": {"name": "nightly", "namespace": namespace},
                   "spec": {"destinationRef": {"name": "shared"},
                            "source": {"type": "postgres", "database": {"secretRef": {"name": "db"}}}}})
    data = dump.read_bytes()
    set_run_status(cluster, namespace, "nightly", {
        "phase": "Succeeded", "startTime": "2026-11-27T02:00:00Z", "completionTime": "2026-11-27T02:03:00Z",
        "artifact": {"path": "db/shop.dump", "format": "postgres-custom", "sizeBytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}})
    name = restore(cluster, namespace)

    wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    checksum = "SELECT count(*), md5(string_agg(id || ':' || item || ':' || qty, ',' ORDER BY id)) FROM orders"
    assert postgres.psql(checksum, db=target_db) == postgres.psql(checksum, db="shop_src")
    notes = "SELECT count(*), md5(string_agg(body, ',' ORDER BY id)) FROM notes"
    assert postgres.psql(notes, db=target_db) == postgres.psql(notes, db="shop_src")
    assert postgres.password not in pod_logs(cluster, namespace, name)


def test_a_corrupt_artifact_fails_with_checksum_mismatch_and_leaves_the_target(cluster, namespace, operator):
    destination(cluster, namespace)
    run = backup_run(cluster, namespace)
    target = cluster.volume_dir(f"{namespace}-app-data")
    (target / "existing.txt").write_text("keep me\n")
    before = snapshot(target)
    artifact = cluster.volume_dir(f"{namespace}-backups") / ARTIFACT_PATH
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert run["status"]["artifact"]["sizeBytes"] == len(data)
    name = restore(cluster, namespace, existingData="Replace")

    status = wait_phase(cluster, namespace, name, "Failed", timeout=120)
    assert condition(status, "Succeeded")["reason"] == "ChecksumMismatch"
    assert condition(status, "ArtifactVerified")["status"] == "False"
    assert snapshot(target) == before


def _runner_pids(pod_uid: str) -> list[int]:
    """Host pids of the runner's processes in the pod (its cgroup path carries the pod's uid)."""
    found = []
    marker = pod_uid.replace("-", "_")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (pod_uid in cgroup or marker in cgroup) and "daoflow_operator.runner" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_replace_killed_mid_way_keeps_the_old_data_and_the_next_restore_recovers(cluster, namespace, operator,
                                                                                    tmp_path):
    destination(cluster, namespace)
    target = application_data(cluster, namespace)
    before = snapshot(target)
    # Incompressible data, so the runner is still writing when it is killed.
    tree = sample_tree(tmp_path / "tree")
    with open(tree / "large.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 << 20))
    status = succeeded()
    status["artifact"].update(make_artifact(tree, cluster.volume_dir(f"{namespace}-backups") / ARTIFACT_PATH))
    backup_run(cluster, namespace, status=status)
    name = restore(cluster, namespace, existingData="Replace")

    pod = wait_until(lambda: next((p for p in json.loads(cluster.kubectl(
        "get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        if p["status"].get("phase") == "Running"), None), timeout=120, what="the runner pod to run")
    pids = wait_until(lambda: _runner_pids(pod["metadata"]["uid"]), timeout=60, interval=0.02,
                      what="the runner process")
    # Freeze it the moment it writes into the target, look, then kill -9: a crash mid-restore.
    wait_until(lambda: (target / ".daoflow-restore").exists(), timeout=60, interval=0.01,
               what="the runner to start writing into the target")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    assert {k: v for k, v in snapshot(target).items() if not k.startswith(".daoflow-restore")} == before
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    status = wait_phase(cluster, namespace, name, "Failed", timeout=120)
    assert condition(status, "Succeeded")["status"] == "False"
    visible = {k: v for k, v in snapshot(target).items() if not k.startswith(".daoflow-restore")}
    assert visible == before, "a killed Replace must leave the old data in place"

    again = restore(cluster, namespace, existingData="Replace")
    wait_phase(cluster, namespace, again, "Succeeded", timeout=180)
    assert snapshot(target) == snapshot(tree)


def test_the_runner_runs_with_the_jobs_real_security_context(cluster, namespace):
    """The pod of jobs.build_job, with its command swapped for a probe: read from inside the container."""
    destination(cluster, namespace)
    volume(cluster, namespace, "app-data")
    restore_obj = {"metadata": {"name": "probe", "namespace": namespace, "uid": "0"},
                   "spec": {"backupRunRef": {"name": "nightly"}}}
    plan = {"planHash": "0" * 64, "artifact": {"path": ARTIFACT_PATH, "format": "tar+zstd", "sizeBytes": 1,
                                              "sha256": "0" * 64},
            "target": {"type": "volume", "persistentVolumeClaim": {"claimName": "app-data"}}}
    dest = {"spec": {"persistentVolumeClaim": {"claimName": "backups"}}}
    job = jobs_.build_job(restore_obj, plan, dest, Config(runner_image=cluster.runner_image))
    del job["metadata"]["ownerReferences"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", (
        "import json, os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "try:\n    open('/probe', 'w'); rootfs = 'writable'\nexcept OSError as e:\n    rootfs = e.strerror\n"
        "print(json.dumps({'status': status, 'rootfs': rootfs, 'token': os.path.exists("
        "'/var/run/secrets/kubernetes.io/serviceaccount/token')}))")]
    container["args"] = []
    cluster.apply(job)
    wait_until(lambda: (cluster.get("job", job["metadata"]["name"], namespace).get("status") or {}).get("succeeded"),
               timeout=120, what="the probe Job to complete")
    out = json.loads(cluster.kubectl("logs", f"job/{job['metadata']['name']}", "-n", namespace).stdout)
    status = out["status"]
    assert status["Uid"].split() == ["65532"] * 4
    assert status["Gid"].split() == ["65532"] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode: the runtime's default profile
    assert out["rootfs"] == "Read-only file system"
    assert out["token"] is False


def test_a_missing_s3_secret_fails_fast_with_its_reason(cluster, namespace, operator, s3):
    s3_destination(cluster, namespace, s3, secret="no-such-secret")
    status = succeeded()
    backup_run(cluster, namespace, destination_name="s3", status=status)
    name = restore(cluster, namespace)
    started = time.monotonic()
    status = wait_phase(cluster, namespace, name, "Failed", timeout=60)
    assert condition(status, "Succeeded")["reason"] == "SecretNotFound"
    assert "no-such-secret" in condition(status, "Succeeded")["message"]
    assert time.monotonic() - started < 60
    assert "SecretNotFound" in [e["reason"] for e in events(cluster, namespace, name) if e["type"] == "Warning"]


def test_the_host_is_left_as_it_was(cluster):
    """The node runs in private namespaces: the host's sysctls, interfaces, iptables and folders
    are the same while it runs as before it started (the launcher test checks after it stops)."""
    from host_state import differences, host_state

    now = host_state()
    # The one thing a running node adds is its own cgroup subtree, removed when it stops.
    own = cluster.local.node.cgroup_root
    assert own and all(path.endswith("/" + own) for path in now["cgroups"]) and now["cgroups"]
    now["cgroups"] = cluster.local.host_state_before["cgroups"]
    assert differences(cluster.local.host_state_before, now) == []


def test_an_image_that_cannot_be_pulled_fails_fast_with_its_reason(cluster, namespace, start_operator,
                                                                    allow_runner_image):
    # No registry is reachable here, so a missing image can never be pulled.
    allow_runner_image("localhost/daoflow-operator:does-not-exist")
    start_operator(DAOFLOW_RUNNER_IMAGE="localhost/daoflow-operator:does-not-exist")
    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    status = wait_phase(cluster, namespace, name, "Failed", timeout=60)
    assert condition(status, "Succeeded")["reason"] == "ImagePullFailed"
    assert "does-not-exist" in condition(status, "Succeeded")["message"]
    wait_until(lambda: not [j for j in jobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp")],
               timeout=30, what="the Job of the failed restore to be deleted")
