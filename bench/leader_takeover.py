"""Leader election: how long the operator is without a leader.

- takeover: the holder is killed (SIGKILL: no release), and a standby takes the Lease once it has
  not been renewed for the lease duration;
- handover: the holder is stopped (SIGTERM), releases the Lease, and a standby takes it at its next
  retry.
Two operators run as the operator's ServiceAccount on the local control plane (started here, unless
KUBECONFIG is set and DAOFLOW_BENCH_EXISTING_CLUSTER=1), with the chart's default timing (15 s lease,
10 s renew deadline, 2 s retry). The baseline of the same run is the lease duration: takeover / lease
duration says how much of the worst case a kill costs, and a handover should be a fraction of it.

    python bench/leader_takeover.py [--kills 10] [--stops 10]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kubernetes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from benchlib import start_control_plane  # noqa: E402
from daoflow_operator import dev  # noqa: E402
from daoflow_operator.config import Config  # noqa: E402

NAMESPACE = "daoflow-bench"
LEASE, LEASE_NAMESPACE = "daoflow-operator", "daoflow-system"


class Candidate:
    def __init__(self, kubeconfig: Path, n: int):
        self.log = Path(tempfile.gettempdir()) / f"daoflow-bench-election-{n}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DAOFLOW_WATCH_NAMESPACES": NAMESPACE,
               "DAOFLOW_LEADER_ELECTION_LEASE": LEASE, "DAOFLOW_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "daoflow_operator"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.identity = wait(lambda: (m := re.search(r"waiting for the Lease \S+ as (\S+)", self.log.read_text(
            errors="replace"))) and m.group(1), 60, "the election to start")


def wait(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--stops", type=int, default=10)
    args = parser.parse_args()

    kubeconfig, cluster = start_control_plane()
    running: list[Candidate] = []
    try:
        dev.install(kubeconfig, samples=False)
        subprocess.run([dev.kubectl_path(), f"--kubeconfig={kubeconfig}", "create", "namespace", NAMESPACE],
                       capture_output=True)
        sa = dev.serviceaccount_kubeconfig(kubeconfig, Path(tempfile.mkdtemp()) / "operator.kubeconfig", "2h")
        api = kubernetes.client.CoordinationV1Api(kubernetes.config.new_client_from_config(config_file=kubeconfig))

        def holder() -> str | None:
            try:
                return api.read_namespaced_lease(LEASE, LEASE_NAMESPACE).spec.holder_identity
            except kubernetes.client.exceptions.ApiException:
                return None

        def leader_and_standby() -> tuple[Candidate, Candidate]:
            while len(running) < 2:
                running.append(Candidate(sa, len(running) + 100 * int(time.time())))
            lead = wait(lambda: next((c for c in running if c.identity == holder()), None), 60, "a leader")
            standby = next(c for c in running if c is not lead)
            time.sleep(3)  # the standby has read the Lease as held, as a long-standing standby would have
            return lead, standby

        results: dict[str, list[float]] = {"kill": [], "stop": []}
        for kind, count in (("kill", args.kills), ("stop", args.stops)):
            for _ in range(count):
                lead, standby = leader_and_standby()
                t0 = time.monotonic()
                if kind == "kill":
                    lead.proc.kill()
                else:
                    lead.proc.terminate()
                wait(lambda: holder() == standby.identity, 60, "the standby to take over")
                results[kind].append(time.monotonic() - t0)
                lead.proc.wait(30)
                running.remove(lead)

        duration = Config().lease_duration_seconds
        print(f"\nleader election, lease duration {duration}s, renew deadline {Config().renew_deadline_seconds}s, "
              f"retry period {Config().retry_period_seconds}s")
        print(f"{'no leader after':<34}{'n':>4}{'min s':>8}{'median s':>10}{'max s':>8}{'median / lease':>16}")
        for kind, label in (("kill", "kill -9 of the holder (takeover)"), ("stop", "SIGTERM of the holder (handover)")):
            values = results[kind]
            if values:
                print(f"{label:<34}{len(values):>4}{min(values):>8.2f}{statistics.median(values):>10.2f}"
                      f"{max(values):>8.2f}{statistics.median(values) / duration:>16.2f}")
        return 0
    finally:
        for c in running:
            c.proc.kill()
            c.proc.wait()
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
