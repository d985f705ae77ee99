"""The operator's /metrics after a known mix of real restores: exactly those counts, by namespace,
outcome and reason; the duration histogram counts each finished restore once; no restore name in any label."""

from __future__ import annotations

import hashlib
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backups import backup_run, condition, destination, restore, restore_status, succeeded, wait_phase
from cluster_helpers import wait_until
from daoflow_operator import metrics, status as status_
from daoflow_operator.access import parse_time
from daoflow_operator.localcluster.cluster import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def final(cluster, namespace: str, name: str) -> dict:
    return wait_until(lambda: (st := restore_status(cluster, namespace, name)).get("completionTime") and st,
                      timeout=180, what=f"restore {name} to end")


def test_a_scrape_counts_exactly_the_restores_that_ended(cluster, namespace, start_operator):
    port = free_port()
    start_operator(DAOFLOW_METRICS_PORT=str(port))
    destination(cluster, namespace)
    backup_run(cluster, namespace)  # a real artifact of sample_tree() in the `backups` volume
    wrong = succeeded(sha=hashlib.sha256(b"not the artifact").hexdigest())
    real = cluster.get("backuprun", "nightly", namespace)["status"]["artifact"]
    wrong["artifact"]["sizeBytes"] = real["sizeBytes"]
    backup_run(cluster, namespace, name="corrupt", claim="other-data", status=wrong)
    backup_run(cluster, namespace, name="broken", claim="third-data", status={"phase": "Failed", "error": "disk full"})

    names = {
        "succeeded": restore(cluster, namespace),
        "failed": restore(cluster, namespace, run="corrupt"),
        "rejected": restore(cluster, namespace, run="broken"),
        "planned": restore(cluster, namespace, dryRun=True),
        "waiting": restore(cluster, namespace, run="missing"),
    }
    wait_phase(cluster, namespace, names["succeeded"], "Succeeded", timeout=180)
    # A second real restore into the same claim, after the first one.
    names["succeeded-again"] = restore(cluster, namespace, existingData="Replace")
    # The one waiting for a BackupRun that does not exist is cancelled by request.
    cluster.kubectl("annotate", "backuprestore", names["waiting"], "-n", namespace, f"{status_.CANCEL_REQUESTED}=true")
    statuses = {k: final(cluster, namespace, n) for k, n in names.items()}
    assert [statuses[k]["phase"] for k in ("succeeded", "succeeded-again", "failed", "rejected", "planned",
                                           "waiting")] == ["Succeeded", "Succeeded", "Failed", "Rejected",
                                                           "Planned", "Cancelled"]

    expected: dict[tuple, int] = {}
    for st in statuses.values():
        reason = condition(st, "Succeeded").get("reason") or condition(st, "Ready").get("reason")
        key = (("namespace", namespace), ("outcome", metrics.OUTCOMES[st["phase"]]), ("reason", reason))
        expected[key] = expected.get(key, 0) + 1

    def settled():
        got = scrape(port)
        return got if got.get(("daoflow_restores_in_progress", ())) == 0 else None

    got = wait_until(settled, timeout=30, what="no restore in progress on /metrics")
    counted = {labels: int(v) for (name, labels), v in got.items() if name == "daoflow_restores_total"}
    assert counted == expected
    # The histogram counts each finished restore once (total), and those whose runner was seen running (running).
    assert got[("daoflow_restore_duration_seconds_count", (("stage", "total"),))] == len(names)
    ran = sum(1 for st in statuses.values() if any(e["step"] == "fetch" for e in st.get("auditTrail", [])))
    # Which of them were seen running depends on timing (a runner may end between two looks): at
    # least one was, and the running stage counts exactly those.
    assert ran >= 1 and got[("daoflow_restore_duration_seconds_count", (("stage", "running"),))] == ran
    restored = sum(statuses[k]["result"]["bytes"] for k in ("succeeded", "succeeded-again"))
    assert got[("daoflow_restore_bytes_total", (("namespace", namespace),))] == restored
    last = max(st["completionTime"] for st in statuses.values() if st["phase"] == "Succeeded")
    assert got[("daoflow_restore_last_success_timestamp_seconds", (("namespace", namespace),))] == \
        parse_time(last).timestamp()
    assert got[("daoflow_restores_stalled", ())] == 0
    assert got[("daoflow_workqueue_latency_seconds_count", ())] > 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert not any(n in text for n in names.values())  # no restore name in any label
    print(f"\nmetrics: {sum(counted.values())} restores counted in {len(counted)} series; "
          f"histogram total count {got[('daoflow_restore_duration_seconds_count', (('stage', 'total'),))]:.0f}")
