"""The CLI follows a real restore on the real node: `status --wait` draws a live progress bar under a
pty and prints plain lines without one, `status --json` is the object, `logs` prints the runner's
lines; and the operator, started with --log-format json, writes one JSON object per line naming
the restore."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from backups import snapshot
from cluster_helpers import wait_until
from test_progress import relay, slow_restore  # noqa: F401 - relay is a fixture

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]


def cli(*args: str, kubeconfig) -> list[str]:
    return [sys.executable, "-m", "daoflow_operator.cli", *args], {**os.environ, "KUBECONFIG": str(kubeconfig)}


def under_pty(argv: list[str], env: dict) -> tuple[subprocess.Popen, list[bytes]]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)

    threading.Thread(target=read, daemon=True).start()
    return proc, chunks


def test_the_cli_follows_a_real_restore_with_a_bar_on_a_terminal_and_lines_without(
        cluster, namespace, start_operator, s3, relay, tmp_path):  # noqa: F811
    operator = start_operator(DAOFLOW_PROGRESS_WRITE_INTERVAL_SECONDS="2", DAOFLOW_LOG_FORMAT="json")
    name, target, tree, size = slow_restore(cluster, namespace, s3, tmp_path)
    argv, env = cli("backup", "restore", "status", name, "--wait", "-n", namespace, kubeconfig=cluster.kubeconfig)
    tty, chunks = under_pty(argv, env)
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert tty.wait(60) == 0 and plain.returncode == 0, plain.stderr
    wait_until(lambda: chunks and b"Succeeded" in b"".join(chunks), timeout=10, what="the pty's last output")
    screen = b"".join(chunks).decode(errors="replace")
    assert snapshot(target) == snapshot(tree)  # it did restore the bytes

    # Under a pty: a live bar (tqdm redraws it with carriage returns), its rate, and the phase lines.
    assert "\r" in screen and "%|" in screen and "B/s" in screen, screen[-2000:]
    assert "phase: Running" in screen and "phase: Succeeded" in screen
    assert "Succeeded: 100%|" in screen and "Running: 100%" not in screen  # full only once it succeeded
    # Without one: plain lines, no carriage return, rising bytes, and no 100% before the end.
    assert "\r" not in plain.stdout + plain.stderr
    lines = [line for line in plain.stdout.splitlines() if line.startswith("progress: ")]
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert len(set(done)) >= 3 and done == sorted(done), lines
    assert all("(100%)" not in line for line in lines[:-1]) and lines[-1].startswith(f"progress: {size}/{size} bytes (100%)")

    # status --json is the object, once it has settled (its finalizer removed).
    wait_until(lambda: not cluster.get("backuprestore", name, namespace)["metadata"].get("finalizers"),
               timeout=30, what="the finalizer to go")
    argv, env = cli("backup", "restore", "status", name, "--json", "-n", namespace, kubeconfig=cluster.kubeconfig)
    shown = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
    obj = cluster.get("backuprestore", name, namespace)
    obj["metadata"].pop("managedFields", None)
    assert shown == obj
    argv, env = cli("backup", "restore", "status", name, "-n", namespace, kubeconfig=cluster.kubeconfig)
    human = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    assert "Phase:         Succeeded" in human and f"{size}/{size} bytes (100%)" in human

    # logs prints the runner's own lines: its progress and its report.
    argv, env = cli("backup", "restore", "logs", name, "-n", namespace, kubeconfig=cluster.kubeconfig)
    logs = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert logs.returncode == 0, logs.stderr
    runner_lines = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
    assert any("progress" in r for r in runner_lines) and runner_lines[-1]["result"]["verified"] is True

    # The operator's log: every line one JSON object; those of this restore name it, with phase and reason.
    out = [line for line in operator.output().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in out]  # raises on any line that is not JSON
    mine = [p["restore"] for p in parsed if (p.get("restore") or {}).get("name") == name]
    assert mine and all(m["namespace"] == namespace and m["uid"] for m in mine)
    assert ("Succeeded", "RestoreSucceeded") in {(m["phase"], m["reason"]) for m in mine}
    print(f"\ncli: {len(lines)} plain progress lines, {screen.count(chr(13))} bar redraws; "
          f"{len(parsed)} JSON log lines, {len(mine)} about the restore")
