"""Leader election on a coordination.k8s.io Lease: only the holder reconciles.

The elector is the kubernetes client's own (`kubernetes.leaderelection` with its LeaseLock), which is
thread-based and blocking: it runs in a daemon thread, and the asyncio side sees it through one
asyncio.Event, `leading`, that the work queue waits for before each pass. A standby therefore reads
the Lease every retry period and writes nothing. Two things the library lacks are added here:
- the lock's API client is the operator's (the library's LeaseLock builds one from the global config);
- `release()` on shutdown: renewals stop, and the Lease is written with no holder, so a standby takes
  it at its next retry instead of after the lease duration (client-go's ReleaseOnCancel does the same).
Losing the Lease (no renewal within the renew deadline) ends the process: a pass already running
finishes, and Jobs with fixed names and conditional status writes keep that overlap harmless.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """client-go's defaults scaled down: the Lease lasts 15 s, the holder must renew within 10 s."""

    lease_duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2

    def check(self) -> None:
        # The library's Config calls sys.exit on these, which in its thread would end only the thread.
        if not (self.lease_duration > self.renew_deadline > 1.2 * self.retry_period and self.retry_period >= 1):
            raise ValueError(f"leader election needs lease duration > renew deadline > 1.2 x retry period "
                             f"(>= 1 s), not {self}")


def identity() -> str:
    """The pod's name (its hostname) and a random suffix: a restarted pod is a new candidate."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class _Lock(LeaseLock):
    """The library's LeaseLock on the operator's API client, that writes nothing once released."""

    def __init__(self, api_client, name: str, namespace: str, identity: str):
        super().__init__(name, namespace, identity)
        self.api_instance = client.CoordinationV1Api(api_client)
        self.writes = threading.Lock()
        self.released = False

    def create(self, name, namespace, election_record):
        with self.writes:
            return not self.released and super().create(name, namespace, election_record)

    def update(self, name, namespace, updated_record):
        with self.writes:
            return not self.released and super().update(name, namespace, updated_record)


class Elector:
    def __init__(self, api_client, namespace: str, name: str, timing: Timing = Timing(),
                 on_lost: Callable[[], None] | None = None, candidate: str | None = None):
        timing.check()
        self.timing = timing
        self.lock = _Lock(api_client, name, namespace, candidate or identity())
        self.leading = asyncio.Event()
        self.on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def identity(self) -> str:
        return self.lock.identity

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = electionconfig.Config(self.lock, self.timing.lease_duration, self.timing.renew_deadline,
                                       self.timing.retry_period, self._started, self._stopped)
        threading.Thread(target=leaderelection.LeaderElection(config).run, name="leader-election",
                         daemon=True).start()
        log.info("waiting for the Lease %s/%s as %s", self.lock.namespace, self.lock.name, self.identity)

    def _started(self) -> None:
        log.info("holding the Lease %s/%s: reconciling", self.lock.namespace, self.lock.name)
        self._loop.call_soon_threadsafe(self.leading.set)

    def _stopped(self) -> None:
        if self.lock.released:
            return
        log.error("lost the Lease %s/%s: stopping", self.lock.namespace, self.lock.name)
        self._loop.call_soon_threadsafe(self._lost)

    def _lost(self) -> None:
        self.leading.clear()
        if self.on_lost:
            self.on_lost()

    def release(self) -> bool:
        """Stops renewing and, if this candidate holds the Lease, empties its holder. Blocking (API calls)."""
        api = self.lock.api_instance
        with self.lock.writes:
            self.lock.released = True
        for _ in range(3):
            try:
                lease = api.read_namespaced_lease(self.lock.name, self.lock.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return False
                now = datetime.now(timezone.utc)
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                lease.spec.renew_time = now
                lease.spec.acquire_time = now
                api.replace_namespaced_lease(self.lock.name, self.lock.namespace, lease)  # on its resourceVersion
                log.info("released the Lease %s/%s", self.lock.namespace, self.lock.name)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("could not release the Lease %s/%s: %s", self.lock.namespace, self.lock.name,
                                exc.reason)
                    return False
        return False
