"""What tests need of a cluster, the same whether it is the local control plane or an existing one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import kubernetes


def kubectl_binary() -> str:
    from daoflow_operator import dev

    return dev.kubectl_path()


def docker_engine_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def wait_until(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    """Polls until predicate() is truthy and returns its value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled again until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def audit_entries(audit_log: Path, offset: int = 0) -> list[dict]:
    """The local API server's audit events from byte `offset` of its log on. The line the server
    may still be writing (no line break yet) is left for a later read."""
    with open(audit_log, "rb") as f:
        f.seek(offset)
        data = f.read()
    return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines() if line.strip()]


def audit_user(entry: dict) -> str:
    """Who sent an audited request; empty for one that was never authenticated (its event has
    no username)."""
    return (entry.get("user") or {}).get("username", "")


def audit_extra(entry: dict, key: str) -> list[str]:
    """One of the authenticator's extra values of an audited request's user (its pod, its token)."""
    return ((entry.get("user") or {}).get("extra") or {}).get(key, [])


class ThrottledRelay:
    """A TCP relay on the host's 127.0.0.1 to a local service, whose answers flow at most
    `bytes_per_second`: a slow link on demand, so that a real restore (through `Cluster.forward`)
    runs long enough to be watched or deleted mid-way, without faking any part of it."""

    def __init__(self, target_port: int, bytes_per_second: int):
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                relay._serve(self.request)

        self.target_port, self.rate = target_port, bytes_per_second
        self.flowing = threading.Event()  # cleared: the answers are held (a stalled link), see pause()
        self.flowing.set()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            def requests():
                with contextlib.suppress(OSError):
                    while data := client.recv(65536):
                        upstream.sendall(data)
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)

            threading.Thread(target=requests, daemon=True).start()
            chunk = max(1, self.rate // 20)  # twenty sends a second: smooth, not bursts
            with contextlib.suppress(OSError):
                while data := upstream.recv(chunk):
                    self.flowing.wait()
                    client.sendall(data)
                    time.sleep(len(data) / self.rate)

    def pause(self) -> None:
        """Holds every answer until resume(): connections stay open, nothing flows."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "ThrottledRelay":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


@dataclass
class Cluster:
    kubeconfig: Path
    local: object | None = None  # LocalCluster when the tests started the control plane

    @classmethod
    def local(cls, local_cluster) -> "Cluster":
        return cls(kubeconfig=local_cluster.kubeconfig, local=local_cluster)

    @classmethod
    def existing(cls, kubeconfig: Path) -> "Cluster":
        return cls(kubeconfig=kubeconfig)

    # -- the real node ---------------------------------------------------------------------

    @property
    def real_node(self) -> bool:
        """True when the local control plane runs a real node (kubelet, containerd, runc)."""
        return self.local is not None and self.local.real_node

    @property
    def runner_image(self) -> str:
        """The image built from the project's Dockerfile, present on the real node."""
        return self.local.runner_image if self.real_node else "daoflow-operator:test"

    def forward(self, port: int) -> str:
        """host:port at which pods reach a service listening on the host's 127.0.0.1:port."""
        if not self.real_node:
            return f"127.0.0.1:{port}"
        return self.local.node.forward(port)

    def volume_dir(self, name: str) -> Path:
        """The host folder behind a hostPath PersistentVolume: inside the cluster's own folder."""
        base = self.local.workdir / "volumes" if self.local is not None else Path("/var/tmp/daoflow-test-volumes")
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- identities ------------------------------------------------------------------------

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig of an unprivileged user.

        On the local control plane that is a user of the token file. On an existing cluster,
        which has no such users, it is a ServiceAccount of that name with a fresh token.
        """
        if self.local is not None and user in self.local.tokens:
            return self.local.user_kubeconfig(user)
        ns = "daoflow-test-users"
        self.kubectl("create", "namespace", ns, check=False)
        self.kubectl("create", "serviceaccount", user, "-n", ns, check=False)
        token = self.kubectl("create", "token", user, "-n", ns, "--duration=2h").stdout.strip()
        return self.token_kubeconfig(f"sa-{user}", token)

    def user_name(self, user: str) -> str:
        """The name RBAC subjects use for user_kubeconfig(user)."""
        if self.local is not None and user in self.local.tokens:
            return user
        return f"system:serviceaccount:daoflow-test-users:{user}"

    def token_kubeconfig(self, name: str, token: str) -> Path:
        if self.local is not None:
            return self.local.token_kubeconfig(name, token)
        from daoflow_operator import dev

        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"daoflow-kubeconfig-{name}"
        return dev.token_kubeconfig(str(self.kubeconfig), name, token, out)

    # -- calls -----------------------------------------------------------------------------

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [kubectl_binary(), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict | str, kubeconfig: Path | None = None, check: bool = True):
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, kubeconfig=kubeconfig, check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        return json.loads(self.kubectl(*args).stdout)

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def wait_for_default_serviceaccount(self, namespace: str) -> None:
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
            timeout=60, what=f"the default ServiceAccount in {namespace}",
        )
