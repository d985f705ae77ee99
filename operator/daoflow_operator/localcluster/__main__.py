"""`python -m daoflow_operator.localcluster`: build, start and stop the local control plane.

  build        build the pinned upstream binaries into the cache (a no-op when cached)
  up           start the control plane in the background and print how to use it
  down         stop the control plane that `up` started
  serve        start it in the foreground until interrupted (what `up` runs detached)
  env          print `export KUBECONFIG=...` for the running control plane
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import build
from .cluster import ClusterError, LocalCluster


def state_dir() -> Path:
    return Path(os.environ.get("DAOFLOW_CLUSTER_DIR") or build.cache_root() / "cluster")


def _running_state(folder: Path) -> dict | None:
    path = folder / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["launcher"], 0)
    except ProcessLookupError:
        return None
    return state


def serve(folder: Path, ready_file: Path | None = None) -> int:
    cluster = LocalCluster(folder)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        started = time.monotonic()
        cluster.start()
        print(f"control plane ready in {time.monotonic() - started:.1f}s; KUBECONFIG={cluster.kubeconfig}", flush=True)
        if ready_file:
            ready_file.write_text("ok")
        while not stop.wait(1.0):
            for comp in cluster.components:
                if comp.proc and comp.proc.poll() is not None:
                    print(f"{comp.name} exited with code {comp.proc.returncode}; stopping", flush=True)
                    stop.set()
        return 0
    except (ClusterError, build.BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if ready_file:
            ready_file.write_text(f"error: {exc}")
        return 1
    finally:
        cluster.stop()


def up(folder: Path, timeout: float = 3600) -> int:
    state = _running_state(folder)
    if state:
        print(f"already running; export KUBECONFIG={state['kubeconfig']}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready"
    ready.unlink(missing_ok=True)
    log = open(folder / "launcher.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daoflow_operator.localcluster", "serve", "--ready-file", str(ready)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "DAOFLOW_CLUSTER_DIR": str(folder)},
    )
    print(f"starting the local control plane (the first run builds the binaries; log: {folder / 'launcher.log'})")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            text = ready.read_text()
            if text.startswith("error"):
                print(text, file=sys.stderr)
                return 1
            print(f"ready. Point kubectl at it with:\n  export KUBECONFIG={folder / 'kubeconfig'}\n"
                  f"kubectl is at {build.bin_dir() / 'kubectl'}; stop it with `make cluster-down`.")
            return 0
        if proc.poll() is not None:
            print(f"the launcher exited with code {proc.returncode}; see {folder / 'launcher.log'}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print("timed out waiting for the control plane", file=sys.stderr)
    return 1


def down(folder: Path, timeout: float = 30) -> int:
    state = _running_state(folder)
    if not state:
        print("not running")
        return 0
    os.kill(state["launcher"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state["launcher"], 0)
        except ProcessLookupError:
            print("stopped")
            return 0
        time.sleep(0.2)
    os.kill(state["launcher"], signal.SIGKILL)
    print("stopped (killed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daoflow-localcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "up", "down", "serve", "env"])
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    folder = state_dir()
    if args.command == "build":
        return build.main()
    if args.command == "up":
        return up(folder)
    if args.command == "down":
        return down(folder)
    if args.command == "serve":
        return serve(folder, args.ready_file)
    state = _running_state(folder)
    if not state:
        print("not running", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
