"""`make bench`: latency from applying a BackupRestore to its plan in status, and to its Job.

Runs on the local control plane (started here, unless KUBECONFIG is set and
DAOFLOW_BENCH_EXISTING_CLUSTER=1), with the operator as its ServiceAccount, like
the end-to-end tests. Restores are applied one at a time, so this measures latency,
not throughput. Each real restore has a target claim of its own: restores into one target run
one at a time (the target's Lease), and the wait for the previous one is not the operator's latency. Beside it, in the same run, the baseline: how long the API server
takes to show a created BackupRestore to a watch at all, with no operator involved.

    python bench/restore_latency.py [--count 60] [--gap 0.2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from benchlib import start_control_plane  # noqa: E402
from daoflow_operator import dev  # noqa: E402
from daoflow_operator.api import models  # noqa: E402

NAMESPACE = "daoflow-bench"
# The simulated node never pulls it; the Job-shape policy admits only this image (docs/security.md).
RUNNER_IMAGE = "daoflow-operator:bench"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Watcher(threading.Thread):
    """Records the first time each restore shows a plan, and each Job appears."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client = client
        self.seen: dict[str, float] = {}
        self.plan: dict[str, float] = {}
        self.job: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._restores, daemon=True), threading.Thread(target=self._jobs, daemon=True)]
        for t in threads:
            t.start()
        self.stop.wait()

    def _restores(self) -> None:
        try:
            self._watch_restores()
        except Exception:  # noqa: BLE001 - the stream ends when the cluster stops
            pass

    def _jobs(self) -> None:
        try:
            self._watch_jobs()
        except Exception:  # noqa: BLE001
            pass

    def _watch_restores(self) -> None:
        api = kubernetes.client.CustomObjectsApi(self.client)
        w = kubernetes.watch.Watch()
        for event in w.stream(api.list_namespaced_custom_object, models.GROUP, models.VERSION, NAMESPACE,
                              "backuprestores", timeout_seconds=3600):
            now = time.perf_counter()
            name = event["object"]["metadata"]["name"]
            self.seen.setdefault(name, now)
            if (event["object"].get("status") or {}).get("plan"):
                self.plan.setdefault(name, now)

    def _watch_jobs(self) -> None:
        api = kubernetes.client.BatchV1Api(self.client)
        w = kubernetes.watch.Watch()
        for event in w.stream(api.list_namespaced_job, NAMESPACE, timeout_seconds=3600):
            owner = (event["object"].metadata.owner_references or [None])[0]
            if owner is not None:
                self.job.setdefault(owner.name, time.perf_counter())


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="restores of each kind (at least 50 for p99)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between two restores")
    args = parser.parse_args()

    kubeconfig, cluster = start_control_plane()
    operator = None
    try:
        dev.install(kubeconfig, samples=False, runner_image=RUNNER_IMAGE)
        run = lambda *a, **kw: dev.kubectl(kubeconfig, *a, **kw)  # noqa: E731
        subprocess.run([dev.kubectl_path(), f"--kubeconfig={kubeconfig}", "create", "namespace", NAMESPACE],
                       capture_output=True)
        run("apply", "-f", "-", input=BENCH_OBJECTS + "".join(target_claim(i) for i in range(args.count)))
        run("patch", "backuprun", "nightly", "-n", NAMESPACE, "--subresource=status", "--type=merge", "-p",
            '{"status": {"phase": "Succeeded", "completionTime": "2026-11-27T02:00:00Z", "artifact": '
            '{"path": "a/b.tar.zst", "format": "tar+zstd", "sizeBytes": 1, "sha256": "' + "a" * 64 + '"}}}')
        sa = dev.serviceaccount_kubeconfig(kubeconfig, Path(tempfile.mkdtemp()) / "operator.kubeconfig", "2h")
        env = {**os.environ, "KUBECONFIG": str(sa), "DAOFLOW_WATCH_NAMESPACES": NAMESPACE,
               "DAOFLOW_RUNNER_IMAGE": RUNNER_IMAGE}
        log = open(Path(tempfile.gettempdir()) / "daoflow-bench-operator.log", "wb")
        operator = subprocess.Popen([sys.executable, "-m", "daoflow_operator"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        api = kubernetes.client.CustomObjectsApi(client)
        watcher = Watcher(client)
        watcher.start()
        time.sleep(3)  # the operator's watches are established

        def apply(name: str, dry_run: bool, i: int) -> float:
            body = {"apiVersion": models.API_VERSION, "kind": "BackupRestore",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"backupRunRef": {"name": "nightly"}, "dryRun": dry_run,
                             "target": {"persistentVolumeClaim": {"claimName": f"target-{i:03d}"}}}}
            t0 = time.perf_counter()
            api.create_namespaced_custom_object(models.GROUP, models.VERSION, NAMESPACE, "backuprestores", body)
            return t0

        results = {"baseline": [], "dry-plan": [], "real-plan": [], "real-job": []}
        for i in range(args.count):
            for dry in (True, False):
                name = f"{'dry' if dry else 'real'}-{i:03d}"
                t0 = apply(name, dry, i)
                if not wait_for(lambda: name in watcher.plan and (dry or name in watcher.job), 60):
                    print(f"timed out on {name}; see {log.name}")
                    return 1
                results["baseline"].append(watcher.seen[name] - t0)
                results["dry-plan" if dry else "real-plan"].append(watcher.plan[name] - t0)
                if not dry:
                    results["real-job"].append(watcher.job[name] - t0)
                time.sleep(args.gap)

        base50 = statistics.median(results["baseline"])
        print(f"\n{args.count} dry runs and {args.count} real restores, one at a time, {args.gap}s apart")
        print(f"{'latency from apply':<42}{'p50 ms':>9}{'p99 ms':>9}{'p50 / baseline':>16}")
        labels = {
            "baseline": "baseline: the restore reaches a watch",
            "dry-plan": "dry run: plan in status",
            "real-job": "real restore: Job created",
            "real-plan": "real restore: plan in status (Queued)",
        }
        for key, label in labels.items():
            values = results[key]
            p50, p99 = percentile(values, 50), percentile(values, 99)
            print(f"{label:<42}{p50 * 1000:>9.1f}{p99 * 1000:>9.1f}{p50 / base50:>15.1f}x")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(15)
        if cluster is not None:
            cluster.stop()


BENCH_OBJECTS = f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: bench-backups}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {{path: /var/tmp/bench-backups}}
  claimRef: {{namespace: {NAMESPACE}, name: backups}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: backups, namespace: {NAMESPACE}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: bench-backups
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: {models.API_VERSION}
kind: BackupDestination
metadata: {{name: shared, namespace: {NAMESPACE}}}
spec:
  persistentVolumeClaim: {{claimName: backups}}
---
apiVersion: {models.API_VERSION}
kind: BackupRun
metadata: {{name: nightly, namespace: {NAMESPACE}}}
spec:
  destinationRef: {{name: shared}}
  source:
    type: volume
    persistentVolumeClaim: {{claimName: backups}}
"""


def target_claim(i: int) -> str:
    """A claim per real restore, bound to a volume of its own, so its simulated pod schedules."""
    return f"""---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: bench-target-{i:03d}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {{path: /var/tmp/bench-target-{i:03d}}}
  claimRef: {{namespace: {NAMESPACE}, name: target-{i:03d}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: target-{i:03d}, namespace: {NAMESPACE}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: bench-target-{i:03d}
  resources: {{requests: {{storage: 1Gi}}}}
"""


if __name__ == "__main__":
    sys.exit(main())
