"""`make run`: the operator on the local control plane, or on the cluster of KUBECONFIG.

With no KUBECONFIG, the local control plane and its real node are started (and built,
the first time). Then the CRDs, the operator's RBAC, the scope ClusterRoles, the policy that
holds the operator's Jobs to their shape (for the image it runs) and the demo objects are
applied, and the operator runs in the foreground as its own ServiceAccount,
with exactly the RBAC that ships in manifests/.

On the local control plane the demo is real: its volumes live in the cluster's folder, the
backups volume holds a real tar+zstd artifact of a small folder tree, and the BackupRun
records that artifact's real sha256 and size. Restores then run the image built from the
Dockerfile on the real node. Without a real node they run on the simulated node, and
`make run` says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE, SERVICE_ACCOUNT = "daoflow-system", "daoflow-operator"


def kubectl_path() -> str:
    """The cached kubectl of the local control plane, else KUBEBUILDER_ASSETS', else PATH's."""
    from .localcluster import build

    candidates = [build.bin_dir() / "kubectl"]
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / "kubectl")
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        raise SystemExit("kubectl not found: build the local binaries (make binaries) or put kubectl on PATH")
    return found


def kubectl(kubeconfig: str, *args: str, input: str | None = None, capture: bool = False) -> str:
    proc = subprocess.run([kubectl_path(), f"--kubeconfig={kubeconfig}", *args], input=input, text=True,
                          capture_output=capture)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed" + (f": {proc.stderr.strip()}" if capture else ""))
    return proc.stdout if capture else ""


SAMPLES = REPO / "manifests" / "samples"
DEMO_ARTIFACT = "app-data/2026-11-27.tar.zst"  # the path in samples/status/backuprun-status.json
RUNNER_UID = 65532


def demo_tree() -> dict[str, bytes]:
    """The demo application's data: a few real files, the same bytes on every run."""
    rows = "".join(f"{i},customer-{i:04d},{(i * 7919) % 1000}.{i % 100:02d}\n" for i in range(1, 2001))
    return {
        "config/app.yaml": b"replicas: 2\nfeatures:\n  invoices: true\n",
        "data/customers.csv": ("id,name,balance\n" + rows).encode(),
        "data/uploads/logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n',
        "data/uploads/empty.txt": b"",
        "README.txt": "Données de démonstration: restored by daoflow-operator.\n".encode(),
    }


def write_demo_artifact(out: Path) -> dict:
    """A tar+zstd artifact of demo_tree(); returns the artifact's real format, size and sha256."""
    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({str(Path(p).parent) for p in demo_tree()} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_764_000_000
            tar.addfile(info)
        for path, data in sorted(demo_tree().items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_764_000_000
            tar.addfile(info, io.BytesIO(data))
    data = zstandard.ZstdCompressor(level=3).compress(raw.getvalue())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return {"format": "tar+zstd", "sizeBytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def demo_volumes(volume_root: Path) -> tuple[str, dict]:
    """The sample manifests with their hostPath volumes moved into `volume_root`, and the real
    artifact written into the backups volume. Returns (manifests, BackupRun status)."""
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "PersistentVolume":
                folder = volume_root / doc["metadata"]["name"]
                folder.mkdir(parents=True, exist_ok=True)
                # hostPath volumes are not chowned by the kubelet; the runner writes as its own uid.
                os.chown(folder, RUNNER_UID, RUNNER_UID)
                doc["spec"]["hostPath"] = {"path": str(folder)}
            if doc:
                docs.append(doc)
    status = json.loads((SAMPLES / "status" / "backuprun-status.json").read_text())
    destination = next(d for d in docs if d["kind"] == "BackupDestination")["spec"]["persistentVolumeClaim"]
    backups = volume_root / "daoflow-demo-backups" / destination.get("subPath", "")
    status["status"]["artifact"].update(write_demo_artifact(backups / DEMO_ARTIFACT))
    return yaml.safe_dump_all(docs), status


OPERATOR_LIMITS = REPO / "manifests" / "operator-limits.yaml"


def operator_limits(runner_image: str) -> str:
    """manifests/operator-limits.yaml with `runner_image` as the one image the operator's Jobs may run
    (what the chart does from its values). Pure."""
    # A reference has no quote or backslash, so it is a CEL string literal as it is.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", runner_image):
        raise ValueError(f"not an image reference: {runner_image!r}")
    docs = [d for d in yaml.safe_load_all(OPERATOR_LIMITS.read_text()) if d]
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    next(v for v in policy["spec"]["variables"] if v["name"] == "runnerImage")["expression"] = f"'{runner_image}'"
    return yaml.safe_dump_all(docs, sort_keys=False)


def install(kubeconfig: str, samples: bool = True, volume_root: Path | None = None,
            runner_image: str | None = None) -> None:
    """CRDs, RBAC, scopes, the limits of the operator's Jobs and (optionally) the demo objects, ready to use.

    `runner_image` is the image the operator will run its Jobs with (DAOFLOW_RUNNER_IMAGE, else the
    default of Config). With `volume_root` (the local control plane), the demo's volumes live there
    and the BackupRun records a real artifact; else the samples are applied as they are."""
    from .config import Config

    kubectl(kubeconfig, "apply", "-f", str(REPO / "manifests" / "crds"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            *(f"crd/{p}.backup.daoflow.dev" for p in ("backupruns", "backupdestinations", "backuprestores", "restoreapprovals")))
    kubectl(kubeconfig, "apply", "-f", str(REPO / "manifests" / "rbac.yaml"), "-f", str(REPO / "manifests" / "scopes.yaml"),
            "-f", str(REPO / "manifests" / "pod-trust.yaml"), "-f", str(REPO / "manifests" / "approvals.yaml"),
            "-f", str(REPO / "manifests" / "require-approval.yaml"))
    image = runner_image or os.environ.get("DAOFLOW_RUNNER_IMAGE") or Config().runner_image
    kubectl(kubeconfig, "apply", "-f", "-", input=operator_limits(image))
    if samples:
        if volume_root is None:
            kubectl(kubeconfig, "apply", "-f", str(SAMPLES))
            patch = ["--patch-file", str(SAMPLES / "status" / "backuprun-status.json")]
        else:
            manifests, status = demo_volumes(volume_root)
            kubectl(kubeconfig, "apply", "-f", "-", input=manifests)
            patch = ["-p", json.dumps(status)]
        kubectl(kubeconfig, "patch", "backuprun", "app-data-nightly", "-n", "daoflow-demo", "--subresource=status",
                "--type=merge", *patch)


def serviceaccount_kubeconfig(kubeconfig: str, out: Path, duration: str = "24h") -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount, for the same server."""
    for _ in range(50):
        probe = subprocess.run([kubectl_path(), f"--kubeconfig={kubeconfig}", "get", "serviceaccount",
                                SERVICE_ACCOUNT, "-n", NAMESPACE], capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(0.2)
    token = kubectl(kubeconfig, "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={duration}",
                    capture=True).strip()
    return token_kubeconfig(kubeconfig, SERVICE_ACCOUNT, token, out, namespace=NAMESPACE)


def token_kubeconfig(kubeconfig: str, user: str, token: str, out: Path, namespace: str | None = None) -> Path:
    """A kubeconfig for the same server and CA as `kubeconfig`, authenticating with a bearer token."""
    cfg = json.loads(kubectl(kubeconfig, "config", "view", "--minify", "--raw", "-o", "json", capture=True))
    cfg["users"] = [{"name": user, "user": {"token": token}}]
    cfg["contexts"][0]["context"]["user"] = user
    if namespace:
        cfg["contexts"][0]["context"]["namespace"] = namespace
    out.write_text(json.dumps(cfg, indent=2))
    out.chmod(0o600)
    return out


def run() -> int:
    kubeconfig = os.environ.get("KUBECONFIG")
    env = dict(os.environ)
    volume_root = None
    if not kubeconfig:
        from .localcluster.__main__ import state_dir, up

        if up(state_dir()) != 0:
            return 1
        kubeconfig = str(state_dir() / "kubeconfig")
        print(f"using the local control plane: export KUBECONFIG={kubeconfig}")
        cluster_state = json.loads((state_dir() / "state.json").read_text())
        volume_root = state_dir() / "volumes"
        if cluster_state.get("realNode"):
            env["DAOFLOW_RUNNER_IMAGE"] = cluster_state["runnerImage"]
            print(f"restores run {cluster_state['runnerImage']}, built from the Dockerfile, on the real node; "
                  f"the demo's volumes are in {volume_root}")
        else:
            print(f"NOTE: no real node ({cluster_state.get('nodeUnavailable')}). Restores are SIMULATED: "
                  "KWOK's node completes their Jobs without running the runner, and nothing is restored.")
    install(kubeconfig, volume_root=volume_root, runner_image=env.get("DAOFLOW_RUNNER_IMAGE"))
    state = Path(os.environ.get("DAOFLOW_CACHE_DIR") or Path.home() / ".cache" / "daoflow-operator")
    state.mkdir(parents=True, exist_ok=True)
    sa_config = serviceaccount_kubeconfig(kubeconfig, state / "operator.kubeconfig")
    print(f"running the operator as system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT} (Ctrl-C stops it)")
    env["KUBECONFIG"] = str(sa_config)
    return subprocess.call([sys.executable, "-m", "daoflow_operator"], env=env)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["install"]:
        install(os.environ["KUBECONFIG"])
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
