"""Builds the upstream control-plane binaries from their Go modules.

`go install k8s.io/kubernetes/cmd/...@v` refuses to build because the
kubernetes go.mod replaces its staging modules with local paths. So each group
of binaries is built from a small wrapper module that requires the upstream
module and turns every path replacement into a version replacement. That list
is generated from the upstream go.mod itself, never written by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import versions


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    explicit = os.environ.get("DAOFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "daoflow-operator"


def bin_dir() -> Path:
    return cache_root() / versions.cache_key() / "bin"


_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(v\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


def parse_replaces(gomod: str) -> list[tuple[str, str, str | None]]:
    """(module, target, target_version) for each replace directive of a go.mod."""
    out = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        stripped = line.strip()
        if stripped == "replace (":
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if in_block or stripped.startswith("replace "):
            m = _REPLACE_LINE.match(stripped)
            if m:
                out.append((m.group(1), m.group(3), m.group(4)))
    return out


def sibling_version(module: str, version: str) -> str:
    """The version of a module that upstream replaces with a path in its own repo.

    Kubernetes publishes its staging modules as v0.MINOR.PATCH beside v1.MINOR.PATCH;
    etcd publishes its sibling modules at the same version as the server.
    """
    if module == "k8s.io/kubernetes":
        return "v0." + version.split(".", 1)[1]
    return version


def wrapper_gomod(group: str, module: str, version: str, upstream_gomod: str) -> str:
    """The go.mod of the wrapper module for one upstream module (pure)."""
    lines = [f"module daoflow.dev/localcluster/{group}", "", "go 1.26.0", ""]
    for raw in upstream_gomod.splitlines():
        if raw.startswith("godebug "):
            lines.append(raw)
    lines += ["", f"require {module} {version}", "", "replace ("]
    for name, target, target_version in parse_replaces(upstream_gomod):
        if target.startswith("./") or target.startswith("../"):
            # etcd points modules it forbids at a directory that does not exist.
            if "FORBIDDEN" in target:
                continue
            lines.append(f"\t{name} => {name} {sibling_version(module, version)}")
        else:
            lines.append(f"\t{name} => {target} {target_version or ''}".rstrip())
    lines += [")", ""]
    return "\n".join(lines)


def go_binary_name(package: str) -> str:
    """The file name `go build -o dir/` gives a main package: its last path element, not a /vN suffix."""
    parts = package.rstrip("/").split("/")
    return parts[-2] if re.fullmatch(r"v[0-9]+", parts[-1]) and len(parts) > 1 else parts[-1]


def ldflags(group: str, version: str) -> str:
    flags = ["-s", "-w"]
    if group == "kubernetes":
        major, minor = version.lstrip("v").split(".")[:2]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
            ]
    elif group == "kwok":
        flags.append(f"-X sigs.k8s.io/kwok/pkg/consts.Version={version}")
    elif group == "containerd":
        flags.append(f"-X github.com/containerd/containerd/v2/version.Version={version}")
    elif group == "helm":
        # `helm version` and the chart's kubeVersion checks read it; unset, it says v3.x-dev.
        flags.append(f"-X helm.sh/helm/v3/internal/version.version={version}")
    elif group == "kustomize":
        # `kustomize version` reads it; unset, it says (devel).
        flags.append(f"-X sigs.k8s.io/kustomize/api/provenance.version={version}")
    return " ".join(flags)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def build_group(group: str, dest: Path, log=print) -> None:
    build_module(group, versions.MODULES[group], dest, log=log)


def build_module(group: str, spec: dict, dest: Path, log=print) -> None:
    """Builds one wrapper module's binaries into dest; `group` names its work folder."""
    module, version = spec["module"], spec["version"]
    what = f"building {module}@{version}"
    if not shutil.which("go"):
        raise BuildError(f"{what}: the `go` command is not on PATH")
    work = cache_root() / "src" / f"{group}-{version}" if group in versions.TOOLS \
        else cache_root() / versions.cache_key() / "src" / group
    work.mkdir(parents=True, exist_ok=True)
    info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"], work, what))
    upstream = Path(info["GoMod"]).read_text()
    (work / "go.mod").write_text(wrapper_gomod(group, module, version, upstream))
    (work / "go.sum").touch()
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.monotonic()
    log(f"{what} ({', '.join(spec['packages'])}) ...")
    _run(
        ["go", "build", "-trimpath", *(["-tags", ",".join(spec["tags"])] if spec.get("tags") else []),
         "-ldflags", ldflags(group, version), "-o", str(out) + "/", *spec["packages"].values()],
        work,
        what,
    )
    dest.mkdir(parents=True, exist_ok=True)
    for name, pkg in spec["packages"].items():
        built = out / go_binary_name(pkg)
        if not built.exists():
            raise BuildError(f"{what}: no binary produced for {pkg}")
        os.replace(built, dest / name)
    log(f"{what}: done in {time.monotonic() - started:.0f}s")


def missing_groups(dest: Path) -> list[str]:
    return [
        group for group, spec in versions.MODULES.items()
        if not all(os.access(dest / name, os.X_OK) for name in spec["packages"])
    ]


def ensure_binaries(log=print) -> Path:
    """Builds whatever binaries the cache lacks and returns the cache's bin folder."""
    dest = bin_dir()
    for group in missing_groups(dest):
        build_group(group, dest, log=log)
    return dest


def tool_path(name: str) -> Path:
    spec = versions.TOOLS[name]
    return cache_root() / f"{name}-{spec['version']}" / "bin" / name


def ensure_tool(name: str, log=print) -> Path:
    """Builds a pinned tool (such as the tests' S3 server) once, and returns its path."""
    path = tool_path(name)
    if not os.access(path, os.X_OK):
        build_module(name, versions.TOOLS[name], path.parent, log=log)
    return path


def helm_path(log=print) -> Path:
    """The pinned helm binary (built once into its own cache folder): renders and lints the chart."""
    return ensure_tool("helm", log=log)


def kustomize_path(log=print) -> Path:
    """The pinned kustomize binary (its own cache folder): builds manifests/, the kustomize base."""
    return ensure_tool("kustomize", log=log)


def promtool_path(log=print) -> Path:
    """The pinned promtool (built once into its own cache folder): checks and tests the alert rules."""
    return ensure_tool("promtool", log=log)


def main() -> int:
    started = time.monotonic()
    try:
        dest = ensure_binaries()
        tools = [ensure_tool(name) for name in versions.TOOLS]
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"binaries ready in {dest} and {', '.join(str(t) for t in tools)} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
