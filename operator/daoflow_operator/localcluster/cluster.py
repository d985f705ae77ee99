"""Starts a real Kubernetes control plane as plain processes on loopback, with a real node.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as
children of this process, on free loopback ports. Where the machine allows it
(root, runc, CNI plugins), a real node joins them: kubelet, containerd and runc in
private namespaces (node.py), running the image built from the project's own
Dockerfile. KWOK manages one simulated node, tainted `daoflow.dev/simulated` while
the real node exists, for what a real node cannot do on demand: injected failures,
long runs and pods by the thousand. One launcher serves both the pytest fixture
and `make cluster` / `make run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import build

# Users of the token file. `admin` is in system:masters; the others start with no
# RBAC at all, so tests can show 403 and then grant access.
TEST_USERS = ("alice", "bob", "carol")
NODE_NAME = "kwok-node-0"
# While the real node exists, only pods that tolerate this land on the simulated one.
SIMULATED_TAINT = {"key": "daoflow.dev/simulated", "value": "true", "effect": "NoSchedule"}
SIMULATED_TOLERATION = {"key": "daoflow.dev/simulated", "operator": "Equal", "value": "true",
                        "effect": "NoSchedule"}
SIMULATED_NODE_SELECTOR = {"type": "kwok"}

_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    pass


class PortClash(ClusterError):
    pass


def _die_with_parent() -> None:
    # Children are killed if the launcher dies, even by SIGKILL: nothing is left behind. SIGKILL,
    # because a kube-apiserver told to stop gracefully can wait a long time for a dead etcd.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_binaries(log=print) -> dict[str, Path]:
    """Binaries from KUBEBUILDER_ASSETS where present there; the rest from the build cache.

    envtest's asset folders hold only etcd, kube-apiserver and kubectl; the other
    binaries are then built (once) into the cache.
    """
    found: dict[str, Path] = {}
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        for name in build.versions.BINARIES:
            candidate = Path(assets) / name
            if os.access(candidate, os.X_OK):
                found[name] = candidate
    missing = [n for n in build.versions.BINARIES if n not in found]
    if missing:
        dest = build.bin_dir()
        for group in build.missing_groups(dest):
            if any(n in missing for n in build.versions.MODULES[group]["packages"]):
                build.build_group(group, dest, log=log)
        for name in missing:
            found[name] = dest / name
    return found


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1, and the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=daoflow-local-ca", cwd=pki)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.96.0.1,IP:10.88.0.1\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "apiserver.crt", "-days", "3650", "-extfile", "san.ext", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig_text(server: str, ca_path: Path, user: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "daoflow-local", "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@daoflow-local", "context": {"cluster": "daoflow-local", "user": user}}],
        "current-context": f"{user}@daoflow-local",
    }, indent=2)


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Writes of an approval's status with their body: the log shows who wrote a decision.
  - level: Request
    verbs: [update, patch]
    resources:
      - group: backup.daoflow.dev
        resources: [restoreapprovals/status]
  # Requests on the project's own kinds only: tests count the operator's writes from this log.
  - level: Metadata
    resources:
      - group: backup.daoflow.dev
  # Writes of Jobs, Leases and Events too: a standby operator must write none of them.
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
    resources:
      - group: batch
        resources: [jobs]
      - group: coordination.k8s.io
        resources: [leases]
      - group: ""
        resources: [events]
  - level: None
"""


@dataclass
class Component:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None


@dataclass
class LocalCluster:
    workdir: Path
    log: object = print
    binaries: dict[str, Path] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    server: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    # "auto": a real node where the machine can run one, else only the simulated node;
    # "kwok": only the simulated node. DAOFLOW_NODE=kwok forces the latter.
    node_mode: str = "auto"
    node: object = None  # node.RealNode while it runs
    node_unavailable: str | None = None  # why there is no real node, when there is none
    runner_image: str = ""  # the image built from the Dockerfile, present on the real node

    @property
    def real_node(self) -> bool:
        return self.node is not None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig for one of the token users (admin, alice, bob, carol)."""
        path = self.workdir / f"kubeconfig-{user}"
        path.write_text(kubeconfig_text(self.server, self.ca_path, user, self.tokens[user]))
        return path

    def token_kubeconfig(self, name: str, token: str) -> Path:
        """A kubeconfig for any bearer token, e.g. a ServiceAccount's."""
        path = self.workdir / f"kubeconfig-{name}"
        path.write_text(kubeconfig_text(self.server, self.ca_path, name, token))
        return path

    # -- start -----------------------------------------------------------------------------

    def start(self, attempts: int = 3, timeout: float = 120.0) -> Path:
        if not self.binaries:
            self.binaries = resolve_binaries(log=self.log)
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_pki(self.workdir / "pki")
        self._prepare_node()
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return self.kubeconfig
            except PortClash as exc:
                self.log(f"port clash ({exc}); retrying with new ports ({attempt}/{attempts})")
                self.stop()
        raise ClusterError(f"could not find free ports after {attempts} attempts")

    def _prepare_node(self) -> None:
        """Decides whether a real node runs, and builds what it needs (binaries, images) once."""
        from . import node as node_

        reason = "the simulated node was asked for" if self.node_mode == "kwok" else node_.unavailable_reason()
        images = []
        if reason is None:
            from . import images as images_

            reason = images_.node_images_available()
            if reason is None:
                started = time.monotonic()
                repo = Path(__file__).resolve().parents[3]
                runner = images_.runner_image(repo, log=self.log)
                pause = images_.pause_image(log=self.log)
                busybox = images_.busybox_image(log=self.log)
                images = [runner, pause, busybox]
                self.runner_image = runner.name
                self.log(f"node images ready in {time.monotonic() - started:.1f}s: "
                         + ", ".join(i.name for i in images))
        if reason is not None:
            self.node_unavailable = reason
            self.log(f"no real node: {reason}. Restores run on the simulated node only.")
            return
        self.node = node_.RealNode(self.workdir / "node", self.workdir / "pki", self.binaries, 0,
                                   [i.archive for i in images], pause.name, log=self.log)
        self.node.prepare(free_port)

    def _start_once(self, timeout: float) -> None:
        w = self.workdir
        (w / "logs").mkdir(exist_ok=True)
        etcd_port, peer_port, api_port, kwok_port = (free_port() for _ in range(4))
        self.server = f"https://127.0.0.1:{api_port}"
        if not self.tokens:
            self.tokens = {u: secrets.token_hex(16) for u in ("admin", *TEST_USERS)}
        (w / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,uid-admin,"system:masters"\n'
            + "".join(f"{self.tokens[u]},{u},uid-{u}\n" for u in TEST_USERS)
        )
        (w / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.kubeconfig.write_text(kubeconfig_text(self.server, self.ca_path, "admin", self.tokens["admin"]))
        pki = w / "pki"
        b = self.binaries

        etcd = Component("etcd", [
            str(b["etcd"]), "--name=local", f"--data-dir={w / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=4294967296",
        ], w / "logs" / "etcd.log")
        apiserver = Component("kube-apiserver", [
            str(b["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={w / 'tokens.csv'}",
            # Node: the real kubelet reads and writes only what its pods need.
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,ValidatingAdmissionPolicy,NodeRestriction",
            # The node-lifecycle controller that would lift the not-ready taint is off (KWOK
            # sends no heartbeats), so new nodes are not tainted in the first place.
            "--disable-admission-plugins=TaintNodesByCondition",
            "--allow-privileged=true", "--profiling=false", "--endpoint-reconciler-type=none",
            f"--audit-policy-file={w / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=100",
            *(self.node.apiserver_flags() if self.node else []),
        ], w / "logs" / "kube-apiserver.log")

        self._launch(etcd)
        self._wait_tcp(etcd_port, etcd, timeout)
        self._launch(apiserver)
        self._wait_ready(apiserver, timeout)

        controller_manager = Component("kube-controller-manager", [
            str(b["kube-controller-manager"]), f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            # Each controller as its own ServiceAccount, as kubeadm runs it: the Job controller is
            # system:serviceaccount:kube-system:job-controller (manifests/pod-trust.yaml admits it alone).
            "--use-service-account-credentials=true",
            # Controllers for real nodes and cloud volumes have nothing to do next to KWOK.
            "--controllers=*,-node-ipam-controller,-node-lifecycle-controller,-taint-eviction-controller,"
            "-persistentvolume-attach-detach-controller,-persistentvolume-expander-controller,-ttl-controller",
            "--concurrent-job-syncs=10",
        ], w / "logs" / "kube-controller-manager.log")
        scheduler = Component("kube-scheduler", [
            str(b["kube-scheduler"]), f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
        ], w / "logs" / "kube-scheduler.log")
        (w / "kwok.yaml").write_text(kwok_config())
        kwok = Component("kwok", [
            str(b["kwok"]), f"--kubeconfig={self.kubeconfig}", f"--config={w / 'kwok.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1", f"--server-address=127.0.0.1:{kwok_port}",
        ], w / "logs" / "kwok.log")
        for comp in (controller_manager, scheduler, kwok):
            self._launch(comp)
        self._create_node()
        self._wait_node_ready(NODE_NAME, timeout)
        if self.node is not None:
            self.node.api_port = api_port
            started = time.monotonic()
            self.node.start(timeout)
            from .node import NODE_NAME as REAL_NODE

            self._wait_node_ready(REAL_NODE, timeout)
            self.log(f"real node {REAL_NODE} Ready in {time.monotonic() - started:.1f}s")
        self._write_state()

    def _launch(self, comp: Component) -> None:
        out = open(comp.log, "ab")
        comp.proc = subprocess.Popen(
            comp.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, cwd=self.workdir,
            # kwok would also read ~/.kwok/kwok.yaml; keep it to this cluster's own folder.
            env={**os.environ, "KWOK_WORKDIR": str(self.workdir / "kwok")},
        )
        out.close()
        self.components.append(comp)

    def _check_alive(self, comp: Component) -> None:
        if comp.proc and comp.proc.poll() is not None:
            tail = comp.log.read_text(errors="replace")[-3000:]
            if "address already in use" in tail:
                raise PortClash(f"{comp.name}: address already in use")
            raise ClusterError(f"{comp.name} exited with code {comp.proc.returncode}; log {comp.log}:\n{tail}")

    def _wait_tcp(self, port: int, comp: Component, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(comp)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.1)
        raise ClusterError(f"{comp.name} did not listen on port {port} within {timeout:.0f}s")

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def api(self, method: str, path: str, body: dict | None = None, user: str = "admin") -> dict:
        """A minimal API call with the standard library; the launcher needs no client package."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.tokens[user]}", "Content-Type": "application/json",
        })
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
            payload = resp.read()
        return json.loads(payload) if payload.startswith(b"{") else {"raw": payload.decode()}

    def _wait_ready(self, comp: Component, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive(comp)
            try:
                if self.api("GET", "/readyz").get("raw", "").strip() == "ok":
                    return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterError(f"{comp.name} not ready within {timeout:.0f}s (last: {last})")

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64"},
            },
            "spec": {"taints": [SIMULATED_TAINT]} if self.node is not None else {},
            "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                       "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"}},
        }
        try:
            self.api("POST", "/api/v1/nodes", node)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def _wait_node_ready(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for comp in self.components:
                self._check_alive(comp)
            if self.node is not None and name != NODE_NAME:
                self.node.check_alive()
            try:
                node = self.api("GET", f"/api/v1/nodes/{name}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                time.sleep(0.2)
                continue
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True":
                # Pods need the default ServiceAccount, which the controller manager creates.
                with contextlib.suppress(urllib.error.HTTPError):
                    self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
                    return
            time.sleep(0.2)
        raise ClusterError(f"node {name} did not become Ready within {timeout:.0f}s (see {self.workdir}/logs)")

    def _write_state(self) -> None:
        state = {
            "server": self.server, "kubeconfig": str(self.kubeconfig), "launcher": os.getpid(),
            "pids": {c.name: c.proc.pid for c in self.components if c.proc},
            "nodePids": self.node.pids() if self.node is not None else {},
            "realNode": self.node is not None, "nodeUnavailable": self.node_unavailable,
            "runnerImage": self.runner_image,
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    # -- stop ------------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Stops every process this launcher started, in reverse order, and waits for each."""
        if self.node is not None:
            self.node.stop()
        for comp in reversed(self.components):
            if comp.proc and comp.proc.poll() is None:
                comp.proc.terminate()
                try:
                    comp.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    comp.proc.kill()
                    comp.proc.wait()
        self.components.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "state.json").unlink()

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kwok_config() -> str:
    return (Path(__file__).with_name("kwok.yaml")).read_text()
