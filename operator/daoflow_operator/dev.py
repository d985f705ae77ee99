"""`make run`: the operator on the local control plane, or on the cluster of KUBECONFIG.

With no KUBECONFIG, the local control plane is started (and built, the first time).
Then the CRDs, the operator's RBAC, the scope ClusterRoles and the demo objects are
applied, and the operator runs in the foreground as its own ServiceAccount, with
exactly the RBAC that ships in manifests/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def install(kubeconfig: str, samples: bool = True) -> None:
    """CRDs, RBAC, scopes and (optionally) the demo objects, ready to use."""
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            *(f"crd/{p}.backup.daoflow.dev" for p in ("backupruns", "backupdestinations", "backuprestores")))
    kubectl(kubeconfig, "apply", "-f", str(REPO / "manifests" / "rbac.yaml"), "-f", str(REPO / "manifests" / "scopes.yaml"))
    if samples:
        kubectl(kubeconfig, "apply", "-f", str(REPO / "manifests" / "samples"))
        kubectl(kubeconfig, "patch", "backuprun", "app-data-nightly", "-n", "daoflow-demo", "--subresource=status",
                "--type=merge", "--patch-file", str(REPO / "manifests" / "samples" / "status" / "backuprun-status.json"))


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
    if not kubeconfig:
        from .localcluster.__main__ import state_dir, up

        if up(state_dir()) != 0:
            return 1
        kubeconfig = str(state_dir() / "kubeconfig")
        print(f"using the local control plane: export KUBECONFIG={kubeconfig}")
    install(kubeconfig)
    state = Path(os.environ.get("DAOFLOW_CACHE_DIR") or Path.home() / ".cache" / "daoflow-operator")
    state.mkdir(parents=True, exist_ok=True)
    sa_config = serviceaccount_kubeconfig(kubeconfig, state / "operator.kubeconfig")
    print(f"running the operator as system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT} (Ctrl-C stops it)")
    env = {**os.environ, "KUBECONFIG": str(sa_config)}
    return subprocess.call([sys.executable, "-m", "daoflow_operator"], env=env)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["install"]:
        install(os.environ["KUBECONFIG"])
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
