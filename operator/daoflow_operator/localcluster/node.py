"""A real node for the local control plane: kubelet, containerd, runc and CNI, in private namespaces.

The kubelet and containerd are built from their pinned Go modules (versions.py); runc and
the CNI plugins come from Debian's packages. Everything runs under one `unshare` with new
mount, network and pid namespaces (nodeinit.py is its PID 1), so:

- the sysctls the kubelet writes land on plain files mounted over /proc/sys in that
  namespace, and the host's values never change;
- the pod bridge, the pods' veths, ip_forward and any iptables rule live in the node's own
  network namespace; the host's network is never touched;
- host folders that containerd, the kubelet and CNI write anyway are overlaid, so their
  writes land in this node's folder;
- stopping the node ends the pid namespace, which kills every container and shim, and the
  namespaces and their mounts vanish with the last process.

The only host state created is a cgroup subtree (`cgroupRoot`) in each hierarchy, removed
on stop (and by the next start, if a killed launcher left one behind).

Traffic between the host and the node crosses through netns.Relays: the kubelet reaches the
API server at 127.0.0.1 inside the node; pods reach host services (S3, PostgreSQL) at the
node's IP; the API server reaches the kubelet through an HTTP CONNECT proxy on a Unix
socket (its egress selector), whose dials are made inside the node's namespace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE_NAME = "daoflow-node"
NODE_IP = "10.88.0.1"
POD_SUBNET = "10.88.0.0/16"
# The first address of the API server's --service-cluster-ip-range: the `kubernetes` Service, whose
# address in-cluster clients (an operator in a pod) read from KUBERNETES_SERVICE_HOST. In its certificate.
KUBERNETES_SERVICE_IP = "10.96.0.1"
BRIDGE = "cni0"
CGROUP_PREFIX = "daoflow-node-"
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
CGROUP_MOUNTS = "/sys/fs/cgroup"


class NodeError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why this machine cannot run the real node (None when it can)."""
    if os.geteuid() != 0:
        return "the real node needs root (containerd, runc and private namespaces)"
    for tool, hint in ((RUNC, "Debian's runc"), (f"{CNI_BIN}/bridge", "Debian's containernetworking-plugins"),
                       ("/usr/bin/unshare", "util-linux"), ("/usr/sbin/ip", "iproute2")):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (install {hint}: hack/install-node.sh)"
    if not os.path.isdir(CGROUP_MOUNTS) or not os.listdir(CGROUP_MOUNTS):
        return "no cgroup hierarchy is mounted at /sys/fs/cgroup"
    if os.environ.get("DAOFLOW_NODE", "").lower() in ("kwok", "simulated", "0", "off"):
        return "DAOFLOW_NODE asks for the simulated node only"
    return None


# -- cgroups -----------------------------------------------------------------------------

def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, and v2)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0] if right else ""
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(left.split()[4]))
    return found


def create_cgroup_root(name: str) -> None:
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
            parent, child = hierarchy / knob, path / knob
            if parent.exists() and child.exists() and not child.read_text().strip():
                child.write_text(parent.read_text())


def _kill_cgroup_tree(root: Path) -> None:
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroup_root(name: str, timeout: float = 15.0) -> list[str]:
    """Kills what is left in the subtree and removes it, deepest first; returns what stayed."""
    left = []
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / name
        if not root.exists():
            continue
        deadline = time.monotonic() + timeout
        while root.exists():
            _kill_cgroup_tree(root)
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            busy = False
            for d in [*dirs, root]:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise
                    busy = True
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if root.exists():
            left.append(str(root))
    return left


def stale_cgroup_roots() -> list[str]:
    """Subtrees of nodes whose launcher is gone (the name carries the launcher's pid)."""
    stale = set()
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            for entry in hierarchy.iterdir():
                m = re.fullmatch(CGROUP_PREFIX + r"(\d+)-[0-9a-f]+", entry.name)
                if m and entry.is_dir() and not Path(f"/proc/{m.group(1)}").exists():
                    stale.add(entry.name)
    return sorted(stale)


# -- certificates ------------------------------------------------------------------------

def _openssl(pki: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=pki, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NodeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def issue_cert(pki: Path, name: str, subject: str, extensions: str) -> None:
    """A key and a certificate for `subject`, signed by the cluster CA in pki/."""
    if (pki / f"{name}.crt").exists():
        return
    _openssl(pki, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject)
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(pki, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")


def node_pki(pki: Path) -> None:
    # The kubelet's client identity: the Node authorizer and NodeRestriction know it by name.
    issue_cert(pki, "kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
               "extendedKeyUsage=clientAuth\n")
    issue_cert(pki, "kubelet-serving", f"/CN={NODE_NAME}",
               f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n")
    # The API server's identity towards kubelets (logs, exec).
    issue_cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
               "extendedKeyUsage=clientAuth\n")


def apiserver_flags(pki: Path, egress_config: Path) -> list[str]:
    return [
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--egress-selector-config-file={egress_config}",
    ]


def egress_selector_config(socket_path: Path) -> str:
    return json.dumps({
        "apiVersion": "apiserver.k8s.io/v1beta1", "kind": "EgressSelectorConfiguration",
        "egressSelections": [{"name": "cluster", "connection": {
            "proxyProtocol": "HTTPConnect", "transport": {"uds": {"udsName": str(socket_path)}}}}],
    }, indent=2)


# -- configuration files (pure) ----------------------------------------------------------

def containerd_config(root: Path, socket: Path, sandbox_image: str) -> str:
    q = json.dumps  # TOML basic strings share JSON's escaping for these paths
    return f"""\
version = 3
root = {q(str(root / 'containerd' / 'root'))}
state = '/run/containerd'
imports = []
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing', 'io.containerd.nri.v1.nri',
]

[grpc]
  address = {q(str(socket))}

[ttrpc]
  address = {q(str(socket) + '.ttrpc')}

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {q(sandbox_image)}

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # The VM's bounding set lacks CAP_SYS_RESOURCE: a negative oom_score_adj would be refused.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = {q(RUNC)}
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{q(CNI_BIN)}]
      conf_dir = {q(str(root / 'cni' / 'net.d'))}

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.internal.v1.opt']
    path = {q(str(root / 'containerd' / 'opt'))}
"""


def cni_config(root: Path) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "daoflow",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                     # Pods have no default route; this one (through the node, their gateway) reaches
                     # the `kubernetes` Service's relay, for an operator in a pod.
                     "routes": [{"dst": f"{KUBERNETES_SERVICE_IP}/32"}],
                     "dataDir": str(root / "cni" / "ipam")},
        }],
    }, indent=2)


def kubelet_config(root: Path, pki: Path, socket: Path, cgroup_root: str, port: int, healthz_port: int) -> str:
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # The machine has cgroup v1 (hybrid); the kubelet refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/" + cgroup_root,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "makeIPTablesUtilChains": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "podLogsDir": str(root / "pod-logs"),
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        # The disk is shared and may be busy: evict and collect images only when it is really full.
        "evictionHard": {"memory.available": "64Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": str(root / "resolv.conf"),
        "clusterDomain": "cluster.local",
        # The attach-detach controller is off in the controller manager; local volumes need none.
        "enableControllerAttachDetach": False,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "maxPods": 110,
        "staticPodPath": "",
    }, indent=2)


def kubeconfig(server: str, pki: Path) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "kubelet", "user": {"client-certificate": str(pki / "kubelet-client.crt"),
                                               "client-key": str(pki / "kubelet-client.key")}}],
        "contexts": [{"name": "kubelet", "context": {"cluster": "local", "user": "kubelet"}}],
        "current-context": "kubelet",
    }, indent=2)


# -- the node ----------------------------------------------------------------------------

@dataclass
class RealNode:
    root: Path  # this node's own folder
    pki: Path   # the cluster's pki folder (CA, and the node certificates issued here)
    binaries: dict[str, Path]
    api_port: int
    images: list[Path]  # image archives imported into containerd before the kubelet starts
    sandbox_image: str
    log: object = print
    port: int = 0
    healthz_port: int = 0
    cgroup_root: str = ""
    proc: subprocess.Popen | None = None
    nodeinit_pid: int | None = None
    relays: object = None
    netns_fd: int | None = None
    forwarded: list[int] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def connect_socket(self) -> Path:
        return self.root / "egress.sock"

    def prepare(self, free_port) -> None:
        """Certificates and the egress socket path; needed before the API server starts."""
        self.root.mkdir(parents=True, exist_ok=True)
        node_pki(self.pki)
        self.port, self.healthz_port = free_port(), free_port()
        (self.root / "egress-selector.json").write_text(egress_selector_config(self.connect_socket))

    def apiserver_flags(self) -> list[str]:
        return apiserver_flags(self.pki, self.root / "egress-selector.json")

    def start(self, timeout: float = 120.0) -> None:
        from .netns import Relays

        for stale in stale_cgroup_roots():
            self.log(f"removing cgroups left by a killed node: {stale}")
            remove_cgroup_root(stale)
        self.cgroup_root = f"{CGROUP_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
        create_cgroup_root(self.cgroup_root)
        r = self.root
        for sub in ("cni/net.d", "cni/ipam", "containerd/opt", "kubelet", "pod-logs", "logs"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        for marker in ("netns-ready", "node-started"):
            (r / marker).unlink(missing_ok=True)
        (r / "resolv.conf").write_text("")
        (r / "containerd.toml").write_text(containerd_config(r, self.socket, self.sandbox_image))
        (r / "cni" / "net.d" / "10-daoflow.conflist").write_text(cni_config(r))
        (r / "kubelet.json").write_text(kubelet_config(r, self.pki, self.socket, self.cgroup_root, self.port,
                                                       self.healthz_port))
        (r / "kubelet.kubeconfig").write_text(kubeconfig(f"https://127.0.0.1:{self.api_port}", self.pki))
        b = self.binaries
        spec = {
            "root": str(r), "bridge": BRIDGE, "nodeIP": NODE_IP, "podPrefix": POD_SUBNET.split("/")[1],
            "serviceIP": KUBERNETES_SERVICE_IP,
            "containerd": [str(b["containerd"]), "--config", str(r / "containerd.toml")],
            "containerdLog": str(r / "logs" / "containerd.log"),
            "containerdSocket": str(self.socket),
            "ctr": [str(b["ctr"]), "--address", str(self.socket), "--namespace", "k8s.io"],
            "images": [str(p) for p in self.images],
            "kubelet": [str(b["kubelet"]), f"--config={r / 'kubelet.json'}",
                        f"--kubeconfig={r / 'kubelet.kubeconfig'}", f"--root-dir={r / 'kubelet'}",
                        f"--cert-dir={r / 'kubelet-pki'}", f"--hostname-override={NODE_NAME}",
                        f"--node-ip={NODE_IP}", "--node-labels=type=real,daoflow.dev/node=real", "--v=1"],
            "kubeletLog": str(r / "logs" / "kubelet.log"),
        }
        (r / "nodeinit.json").write_text(json.dumps(spec, indent=2))
        env = {**os.environ, "PATH": f"{b['containerd'].parent}:/usr/sbin:/usr/bin:/sbin:/bin",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = open(r / "logs" / "nodeinit.log", "ab")
        from .cluster import _die_with_parent

        # --kill-child: nodeinit gets SIGTERM when unshare dies for any reason (PR_SET_PDEATHSIG).
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--propagation", "private", "--kill-child=SIGTERM",
             sys.executable, "-m", "daoflow_operator.localcluster.nodeinit", str(r / "nodeinit.json")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=r,
            preexec_fn=_die_with_parent)
        out.close()
        started = time.monotonic()
        self._wait_file(r / "netns-ready", timeout)
        self.netns_fd = os.open(f"/proc/{self.proc.pid}/ns/net", os.O_RDONLY)
        self.nodeinit_pid = self._nodeinit_pid()
        self.relays = Relays(self.netns_fd)
        # The kubelet's way to the API server (and, at the node's IP, the pods').
        self.relays.into_node("127.0.0.1", self.api_port)
        self.relays.into_node(NODE_IP, self.api_port)
        self.relays.into_node(KUBERNETES_SERVICE_IP, 443, host_port=self.api_port)
        self.relays.connect_proxy(str(self.connect_socket))
        self._wait_file(r / "node-started", timeout)
        self.log(f"real node {NODE_NAME}: containerd up and images imported in {time.monotonic() - started:.1f}s")

    def forward(self, port: int) -> str:
        """Makes a service on the host's 127.0.0.1:port reachable from pods; returns the pods' address."""
        if port not in self.forwarded:
            self.relays.into_node(NODE_IP, port)
            self.forwarded.append(port)
        return f"{NODE_IP}:{port}"

    def pids(self) -> dict[str, int]:
        """Host pids of the node's processes: unshare, nodeinit, and what nodeinit started."""
        out = {"unshare": self.proc.pid} if self.proc else {}
        if self.nodeinit_pid:
            out["nodeinit"] = self.nodeinit_pid
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{self.nodeinit_pid}/task/{self.nodeinit_pid}/children").read_text().split()
                for pid in children:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    if comm in ("containerd", "kubelet"):
                        out[comm] = int(pid)
        return out

    def _nodeinit_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return int(children[0])
        return None

    def _wait_file(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return
            if self.proc.poll() is not None:
                tail = (self.root / "logs" / "nodeinit.log").read_text(errors="replace")[-3000:]
                raise NodeError(f"the real node exited with code {self.proc.returncode}:\n{tail}")
            time.sleep(0.05)
        raise NodeError(f"the real node did not get to {path.name} within {timeout:.0f}s "
                        f"(logs in {self.root / 'logs'})")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.root / "logs" / "nodeinit.log").read_text(errors="replace")[-2000:]
            raise NodeError(f"the real node exited with code {self.proc.returncode}:\n{tail}")

    def stop(self, grace: float = 20.0) -> None:
        if self.relays is not None:
            self.relays.close()
            self.relays = None
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()  # --kill-child passes SIGTERM on to nodeinit
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace)
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
            # unshare exits at once; wait for nodeinit itself, whose exit ends the pid namespace.
            deadline = time.monotonic() + grace
            while self.nodeinit_pid and Path(f"/proc/{self.nodeinit_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.nodeinit_pid and Path(f"/proc/{self.nodeinit_pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.nodeinit_pid, signal.SIGKILL)
            self.proc = None
        if self.cgroup_root:
            left = remove_cgroup_root(self.cgroup_root)
            if left:
                self.log(f"cgroups still busy after stopping the node: {left}")
            self.cgroup_root = ""
        with contextlib.suppress(FileNotFoundError):
            self.connect_socket.unlink()
