"""Two operators on one election Lease, as two replicas would run: only the holder reconciles, a
standby writes nothing, takes over when the holder is killed (kill -9 while a restore's Job runs:
the restore completes with exactly one Job), and at once when the holder is stopped (SIGTERM)."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import yaml

from backups import backup_run, destination, jobs, restore, snapshot, source_tree, wait_phase
from cluster_helpers import audit_entries, audit_extra, wait_until
from daoflow_operator import dev

pytestmark = pytest.mark.cluster

LEASE, LEASE_NAMESPACE = "daoflow-operator", "daoflow-system"
ELECTION = {"DAOFLOW_LEADER_ELECTION_LEASE": LEASE, "DAOFLOW_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE,
            # Short, so the test is short: a standby takes over within 6 s of the holder's last renewal.
            "DAOFLOW_LEASE_DURATION_SECONDS": "6", "DAOFLOW_RENEW_DEADLINE_SECONDS": "4",
            "DAOFLOW_RETRY_PERIOD_SECONDS": "1"}
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def holder(cluster) -> str | None:
    out = cluster.kubectl("get", "lease", LEASE, "-n", LEASE_NAMESPACE, "-o", "json", check=False)
    return (json.loads(out.stdout).get("spec") or {}).get("holderIdentity") if out.returncode == 0 else None


def candidate(op) -> str:
    """The identity an operator runs for, from its log line."""
    found = wait_until(lambda: re.search(r"waiting for the Lease \S+ as (\S+)", op.output()), timeout=60,
                       what="the operator to start its election")
    return found.group(1)


def credential_id(kubeconfig) -> str:
    """The audit log's user.extra credential-id of a ServiceAccount token: its JWT's jti."""
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    return "JTI=" + json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def writes_by(audit_log, offset: int, credential: str) -> list[dict]:
    return [e for e in audit_entries(audit_log, offset) if e["verb"] in WRITES
            and credential in audit_extra(e, "authentication.kubernetes.io/credential-id")]


@pytest.fixture
def election(cluster):
    """The Lease is the cluster's, not the test's: none before, none left behind."""
    cluster.kubectl("delete", "lease", LEASE, "-n", LEASE_NAMESPACE, "--ignore-not-found")
    yield
    cluster.kubectl("delete", "lease", LEASE, "-n", LEASE_NAMESPACE, "--ignore-not-found")


@pytest.fixture
def second_kubeconfig(installed, tmp_path):
    """The same ServiceAccount with a token of its own, so the audit log tells the two operators apart."""
    return dev.serviceaccount_kubeconfig(str(installed.kubeconfig), tmp_path / "standby.kubeconfig", duration="1h")


def test_the_standby_takes_over_a_killed_leader_and_the_restore_completes_with_one_job(
        cluster, namespace, start_operator, operator_kubeconfig, second_kubeconfig, election):
    if cluster.local is None or not cluster.real_node:
        pytest.skip("reads the local control plane's audit log and runs the real runner on the real node")
    audit_log = cluster.local.audit_log
    leader = start_operator(**ELECTION)
    leader_id = candidate(leader)
    wait_until(lambda: holder(cluster) == leader_id, timeout=30, what="the first operator to hold the Lease")
    watched_from = audit_log.stat().st_size
    standby = start_operator(kubeconfig=second_kubeconfig, **ELECTION)
    standby_id = candidate(standby)

    destination(cluster, namespace)
    backup_run(cluster, namespace)
    name = restore(cluster, namespace)
    job = wait_until(lambda: jobs(cluster, namespace), timeout=60, what="the restore's Job")[0]
    leader.kill()  # SIGKILL: no cleanup, no release; the Lease runs out
    killed = time.monotonic()
    standby_idle = writes_by(audit_log, watched_from, credential_id(second_kubeconfig))
    assert standby_idle == [], [(e["verb"], e["objectRef"]) for e in standby_idle]

    wait_until(lambda: holder(cluster) == standby_id, timeout=30, what="the standby to take the Lease")
    took_over = time.monotonic() - killed
    wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    assert "holding the Lease" in standby.output()
    # The method sees the standby's writes once it leads: its status patches of this restore.
    assert any(e["objectRef"].get("name") == name for e in writes_by(audit_log, watched_from,
                                                                    credential_id(second_kubeconfig)))
    assert [j["metadata"]["uid"] for j in jobs(cluster, namespace)] == [job["metadata"]["uid"]]
    creates = [e for e in audit_entries(audit_log, watched_from)
               if e["verb"] == "create" and e["objectRef"].get("resource") == "jobs"
               and e["objectRef"].get("namespace") == namespace and e["stage"] == "ResponseComplete"]
    assert len(creates) == 1, [(e["responseStatus"], e["objectRef"]) for e in creates]
    target = cluster.volume_dir(f"{namespace}-app-data")
    assert snapshot(target) == snapshot(source_tree(cluster, namespace))
    print(f"takeover after kill -9: {took_over:.1f}s (lease duration {ELECTION['DAOFLOW_LEASE_DURATION_SECONDS']}s)")


def test_a_stopped_leader_hands_the_lease_over_at_once(cluster, start_operator, second_kubeconfig, election):
    leader = start_operator(**ELECTION)
    leader_id = candidate(leader)
    wait_until(lambda: holder(cluster) == leader_id, timeout=30, what="the first operator to hold the Lease")
    standby = start_operator(kubeconfig=second_kubeconfig, **ELECTION)
    standby_id = candidate(standby)
    time.sleep(2)  # the standby has seen the Lease held
    stopped = time.monotonic()
    leader.proc.terminate()
    wait_until(lambda: holder(cluster) == standby_id, timeout=30, interval=0.05, what="the standby to take the Lease")
    handover = time.monotonic() - stopped
    leader.proc.wait(15)
    assert "released the Lease" in leader.output()
    print(f"handover on SIGTERM: {handover:.2f}s (lease duration {ELECTION['DAOFLOW_LEASE_DURATION_SECONDS']}s)")
