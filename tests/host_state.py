"""What the real node must never change on the shared host, read the same way before and after."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
           "net/ipv6/conf/all/forwarding", "net/bridge/bridge-nf-call-iptables")
# Folders that containerd, the kubelet and CNI write by default.
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/nri",
              "/opt/containerd", "/run/containerd", "/run/netns", "/var/lib/containerd", "/etc/cni",
              "/var/lib/containers", "/run/containers")


def _run(*cmd: str) -> str:
    if not shutil.which(cmd[0]):
        return f"{cmd[0]}: not installed"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.stdout + proc.stderr


def _rules(text: str) -> list[str]:
    # Comments carry timestamps and chain headers carry packet counters: neither is a change.
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]


def host_state(launcher_pid: int | None = None) -> dict:
    """The host's state; cgroups are those of nodes started by `launcher_pid` (default: this
    process), so another session's node running beside this one is not counted as a change."""
    state: dict = {}
    for name in SYSCTLS:
        path = Path("/proc/sys") / name
        state[f"sysctl {name}"] = path.read_text().strip() if path.exists() else None
    state["links"] = sorted(re.sub(r"^\d+: ", "", line).split("<")[0]
                            for line in _run("ip", "-o", "link", "show").splitlines())
    state["addresses"] = sorted(" ".join(line.split()[1:4]) for line in _run("ip", "-o", "addr", "show").splitlines())
    state["iptables"] = _rules(_run("iptables-save"))
    state["ip6tables"] = _rules(_run("ip6tables-save"))
    state["mounts"] = sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    state["paths"] = {p: os.path.exists(p) for p in HOST_PATHS}
    owner = launcher_pid or os.getpid()
    state["cgroups"] = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/daoflow-node-{owner}-*"))
    return state


def differences(before: dict, after: dict) -> list[str]:
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]
