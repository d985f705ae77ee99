"""Progress of a real restore in its status, and a stall that shows and clears.

The real runner, in a real pod on the real node, reads a 16 MiB artifact from the real S3 server
through a throttled relay (about a minute), and prints its progress lines; the operator reads them
from the pod's log and writes status.progress at most once per interval. The API server's audit log
counts the operator's status writes.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from backups import condition, events, large_run, restore, restore_status, snapshot, throttled_s3_destination
from cluster_helpers import audit_entries, audit_user, wait_until
from daoflow_operator import progress

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]

RATE = 256 << 10  # bytes a second from S3 to the runner: 16 MiB take about a minute
INTERVAL = 4.0  # the operator's progress write interval in these tests
STALL = 8.0
OPERATOR = "system:serviceaccount:daoflow-system:daoflow-operator"


@pytest.fixture
def relay(cluster, namespace, s3):
    """A BackupDestination slow-s3 on the real S3 server, reached by pods through a throttled relay."""
    with throttled_s3_destination(cluster, namespace, s3, RATE) as r:
        yield r


def slow_restore(cluster, namespace, s3, tmp_path):
    """A restore of a 16 MiB artifact into an empty claim; returns (name, target folder, source tree, size)."""
    tree, artifact = large_run(cluster, namespace, s3, tmp_path, "slow-s3")
    target = cluster.volume_dir(f"{namespace}-app-data")  # the empty claim backup_run made
    return restore(cluster, namespace), target, tree, artifact["sizeBytes"]


def status_writes(audit_log, offset: int, name: str) -> list[float]:
    """The times (seconds) of the operator's status writes of one restore, from the audit log."""
    return [datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            for e in audit_entries(audit_log, offset)
            if audit_user(e) == OPERATOR and e["verb"] == "patch" and e.get("stage") == "ResponseComplete"
            and e["objectRef"].get("subresource") == "status" and e["objectRef"].get("name") == name]


def test_a_long_real_restore_shows_rising_progress_never_100_percent_before_it_succeeded(
        cluster, namespace, start_operator, s3, relay, tmp_path):
    start_operator(DAOFLOW_PROGRESS_WRITE_INTERVAL_SECONDS=str(INTERVAL))
    audit_offset = cluster.local.audit_log.stat().st_size if cluster.local else None
    name, target, tree, size = slow_restore(cluster, namespace, s3, tmp_path)
    seen: list[tuple[str, dict]] = []  # (phase, progress) at each change
    started = time.monotonic()

    def watch():
        st = restore_status(cluster, namespace, name)
        snap = (st.get("phase"), st.get("progress"))
        if snap[1] and (not seen or seen[-1] != snap):
            seen.append(snap)
        return st if st.get("completionTime") else None

    final = wait_until(watch, timeout=300, interval=0.25, what="the restore to end")
    took = time.monotonic() - started
    assert final["phase"] == "Succeeded", final
    assert snapshot(target) == snapshot(tree)  # the restored bytes are the source's

    running = [p for phase, p in seen if phase == "Running"]
    done = [p["bytesDone"] for p in running]
    assert len(set(done)) >= 3 and done == sorted(done), running
    assert all(p["percent"] < 100 and p["bytesTotal"] == size for p in running), running
    assert all(p.get("throughputBytesPerSecond", 0) > 0 for p in running[1:]), running
    last = final["progress"]
    assert (last["percent"], last["bytesDone"], last["bytesTotal"]) == (100, size, size)
    assert condition(final, progress.PROGRESSING)["reason"] == progress.ENDED

    if audit_offset is not None:
        # At most one progress write per interval: all status writes of the restore while it ran, its
        # transitions included, stay within one per interval plus the few transitions.
        writes = status_writes(cluster.local.audit_log, audit_offset, name)
        span = writes[-1] - writes[0]
        assert len(writes) <= span / INTERVAL + 6, (len(writes), span)
        gaps = sorted(b - a for a, b in zip(writes, writes[1:]))
        print(f"\nprogress: {took:.0f} s restore, {len(running)} progress values seen while Running, "
              f"{len(writes)} status writes in {span:.0f} s (interval {INTERVAL:g} s); "
              f"smallest gaps {[round(g, 1) for g in gaps[:6]]}")


def test_a_stalled_restore_is_marked_with_a_warning_and_clears_when_it_resumes(
        cluster, namespace, start_operator, s3, relay, tmp_path):
    start_operator(DAOFLOW_PROGRESS_WRITE_INTERVAL_SECONDS=str(INTERVAL), DAOFLOW_STALL_TIMEOUT_SECONDS=str(STALL))
    name, target, tree, _ = slow_restore(cluster, namespace, s3, tmp_path)
    wait_until(lambda: (restore_status(cluster, namespace, name).get("progress") or {}).get("bytesDone", 0) > 1 << 20,
               timeout=120, interval=0.25, what="the restore to make progress")
    relay.pause()
    paused = time.monotonic()
    try:
        def stalled():
            st = restore_status(cluster, namespace, name)
            return st if condition(st, progress.PROGRESSING).get("reason") == progress.STALLED else None

        st = wait_until(stalled, timeout=45, interval=0.25, what="the restore to be marked Stalled")
        noticed = time.monotonic() - paused
        assert condition(st, progress.PROGRESSING)["status"] == "False" and st["phase"] == "Running"
        warnings = [e for e in events(cluster, namespace, name) if e["reason"] == progress.STALLED]
        assert [e["type"] for e in warnings] == ["Warning"]
    finally:
        relay.resume()

    def resumed():
        st = restore_status(cluster, namespace, name)
        return st if condition(st, progress.PROGRESSING).get("status") == "True" else None

    wait_until(resumed, timeout=60, interval=0.25, what="the stall to clear")
    assert progress.RESUMED in [e["reason"] for e in events(cluster, namespace, name)]
    final = wait_until(lambda: (s := restore_status(cluster, namespace, name)).get("completionTime") and s,
                       timeout=300, interval=0.5, what="the restore to end")
    assert final["phase"] == "Succeeded", final
    assert snapshot(target) == snapshot(tree)
    print(f"\nstall: marked {noticed:.1f} s after the link stopped (threshold {STALL:g} s, interval {INTERVAL:g} s)")
