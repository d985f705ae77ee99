"""PID 1 of the real node's private namespaces: `python -m daoflow_operator.localcluster.nodeinit SPEC`.

The launcher starts this under `unshare --mount --net --pid --fork --propagation private`,
so every mount, network device, sysctl write and process of the node lives in namespaces
that vanish when this process exits. Inside them it:

1. mounts a fresh /proc (the new pid namespace) and plain files over the sysctls the
   kubelet writes, so the host's values are never changed;
2. gives the node its own /run (tmpfs) and write-through overlays over /var/lib, /var/log
   and /opt, for the host paths that containerd, the kubelet and CNI write regardless of
   their configured folders: the writes land in the node's own folder;
3. brings up loopback and the pod bridge with the node's IP;
4. starts containerd, imports the node's images, then starts the kubelet;
5. reaps orphans (it is PID 1), and on SIGTERM stops the kubelet, then containerd, and
   exits: the kernel then kills every container left in the pid namespace.

Progress goes to stdout as one line per step, which the launcher logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Sysctls the kubelet sets at start (container_manager_linux.go: setupKernelTunables).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
)
# Host folders written by containerd, the kubelet and CNI whatever their settings say:
# /var/lib/kubelet/device-plugins, /var/log/containers, /var/lib/cni, /opt/containerd ...
OVERLAID = ("/var/lib", "/var/log", "/opt")


def say(msg: str) -> None:
    print(f"nodeinit: {msg}", flush=True)


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nodeinit: {' '.join(cmd)} failed: {proc.stderr.strip()}")


def private_mounts(root: Path) -> None:
    run("mount", "--make-rprivate", "/")
    run("mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc")
    sysctl_dir = root / "sysctl"
    sysctl_dir.mkdir(parents=True, exist_ok=True)
    for name in KUBELET_SYSCTLS:
        target = Path("/proc/sys") / name
        if not target.exists():
            continue
        stand_in = sysctl_dir / name.replace("/", ".")
        stand_in.write_text(target.read_text())
        run("mount", "--bind", str(stand_in), str(target))
    run("mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "tmpfs", "/run")
    for folder in OVERLAID:
        if not os.path.isdir(folder):
            continue
        layer = root / "overlay" / folder.strip("/").replace("/", "-")
        (layer / "upper").mkdir(parents=True, exist_ok=True)
        (layer / "work").mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={folder},upperdir={layer / 'upper'},workdir={layer / 'work'}", folder)


def network(spec: dict) -> None:
    run("ip", "link", "set", "lo", "up")
    bridge = spec["bridge"]
    run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "addr", "add", f"{spec['nodeIP']}/{spec['podPrefix']}", "dev", bridge)
    run("ip", "link", "set", bridge, "up")
    # The `kubernetes` Service's ClusterIP, local to the node: the pods' traffic to it (their gateway
    # is this namespace) is delivered to the relay that listens there, with no kube-proxy or iptables.
    if spec.get("serviceIP"):
        run("ip", "addr", "add", f"{spec['serviceIP']}/32", "dev", "lo")


def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise SystemExit(f"nodeinit: containerd exited with code {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"nodeinit: containerd did not create {path} within {timeout:.0f}s")


def start(cmd: list[str], log: str) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_term)

    started = time.monotonic()
    private_mounts(root)
    network(spec)
    say(f"namespaces ready ({time.monotonic() - started:.2f}s)")
    (root / "netns-ready").write_text(str(os.getppid()))

    containerd = start(spec["containerd"], spec["containerdLog"])
    wait_for_socket(spec["containerdSocket"], containerd)
    say(f"containerd ready ({time.monotonic() - started:.2f}s)")
    for archive in spec["images"]:
        t = time.monotonic()
        run(*spec["ctr"], "images", "import", "--no-unpack=false", archive)
        say(f"imported {os.path.basename(archive)} ({time.monotonic() - t:.2f}s)")
    kubelet = start(spec["kubelet"], spec["kubeletLog"])
    say(f"kubelet started ({time.monotonic() - started:.2f}s)")
    (root / "node-started").write_text("ok")

    children = {containerd.pid: "containerd", kubelet.pid: "kubelet"}
    code = 0
    while not stop:
        # PID 1 of the namespace: reap every orphan (containerd's shims re-parent here).
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid and pid in children:
            say(f"{children[pid]} exited ({os.waitstatus_to_exitcode(status)}); stopping the node")
            code = 1
            break
        if not pid:
            time.sleep(0.2)
    for proc in (kubelet, containerd):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    say("stopped")
    # Exiting as PID 1 makes the kernel kill what is left in the namespace (shims, containers).
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
