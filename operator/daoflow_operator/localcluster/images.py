"""Builds the OCI image archives that the local containerd node imports.

Nothing is pulled from a registry:

- the runner image is the project's Dockerfile, built by buildah over a base image made with
  `debootstrap` from this machine's Debian mirror (`--build-arg BASE_IMAGE=...`);
- the pause image is Kubernetes' own `build/pause/linux/pause.c`, from the Go module cache,
  compiled statically with gcc;
- the busybox image is Debian's `busybox-static`.

Each archive is an OCI image layout in a tar file that `ctr -n k8s.io images import <file>`
stores under `Image.name` (containerd reads the `io.containerd.image.name` annotation of the
index, else a full reference in `org.opencontainers.image.ref.name`). Archives are cached under
`build.cache_root()/images`, keyed by the content they are made from (docs/images.md).

buildah keeps all its state in that folder too (storage, run state, temporary files, its
configuration files), runs steps with `--isolation chroot`, and leaves nothing mounted.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import build, versions

# Bump to rebuild the base image (e.g. after changing how the rootfs is made).
BASE_VERSION = 1
# What the Dockerfile's stages need from the base: `python` (>= 3.11), `python -m venv`, pip's TLS
# roots; apt-get, groupadd and useradd are in every minbase.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_REPOSITORY = "localhost/daoflow-base"
# Bump to rebuild the runner image when the way it is built changes.
RUNNER_BUILD_VERSION = 1
RUNNER_REPOSITORY = "localhost/daoflow-operator"
# What the Dockerfile builds from: the files that change the runner image. The tree under
# operator/ is filtered by .dockerignore, as the build context is.
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_TREES = ("operator",)
# Kubernetes v1.36.3's pause (build/pause/Makefile TAG, kubeadm's PauseVersion).
PAUSE_VERSION = "3.10.2"
PAUSE_NAME = f"localhost/pause:{PAUSE_VERSION}-daoflow"
BUSYBOX_NAME = "localhost/busybox:daoflow"
# Bump when the OCI writer's output changes.
SMALL_IMAGES_VERSION = 1
# buildah's storage driver: overlay (each step's container is a mount, not a copy of the base:
# 0.2 s against vfs's 4 s per step here), mounted only inside buildah's private mount namespace.
STORAGE_DRIVER = os.environ.get("DAOFLOW_BUILDAH_DRIVER", "overlay")
# Runner archives kept in the cache (the newest ones).
KEEP_RUNNER_ARCHIVES = 3
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    name: str      # the full image reference, e.g. "localhost/daoflow-operator:dev-0123456789ab"
    archive: Path  # an archive that `ctr -n k8s.io images import <archive>` imports under `name`


def images_dir() -> Path:
    return build.cache_root() / "images"


def node_images_available() -> str | None:
    """None when this machine can build the node images, else a one-line reason."""
    if os.geteuid() != 0:
        return "building the node images needs root (debootstrap, buildah --isolation chroot)"
    for tool in ("buildah", "debootstrap", "gcc"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (Debian package {tool})"
    return None


# --- apt configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_os_codename(text: str) -> str:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    codename = values.get("VERSION_CODENAME")
    if not codename:
        raise ImageBuildError("reading /etc/os-release: no VERSION_CODENAME")
    return codename


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The `deb` entries of a .sources file (deb822), skipping `Enabled: no` stanzas."""
    out = []
    stanzas, fields, last = [], {}, None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, None
            continue
        if raw[0] in " \t" and last:
            fields[last] += " " + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if sep:
            last = key.strip().lower()
            fields[last] = value.strip()
    for fields in stanzas:
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri.rstrip("/"), suites, components))
    return out


def parse_one_line_sources(text: str) -> list[AptSource]:
    """The `deb` lines of a sources.list file (`deb [options] uri suite component...`)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        parts = line.split()
        if len(parts) >= 2:
            out.append(AptSource(parts[0].rstrip("/"), (parts[1],), tuple(parts[2:])))
    return out


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled `deb` source of this machine's apt configuration, in apt's file order."""
    out = []
    main = etc_apt / "sources.list"
    if main.exists():
        out += parse_one_line_sources(main.read_text())
    folder = etc_apt / "sources.list.d"
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.suffix == ".list":
            out += parse_one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            out += parse_deb822_sources(path.read_text())
    return out


def release_sources(sources: list[AptSource], codename: str) -> list[AptSource]:
    """The sources of the release itself: suite `codename` or `codename-*` (updates, security)."""
    out = []
    for src in sources:
        suites = tuple(s for s in src.suites if s == codename or s.startswith(codename + "-"))
        if suites:
            out.append(AptSource(src.uri, suites, src.components or ("main",)))
    return out


def release_mirror(sources: list[AptSource], codename: str) -> str:
    for src in sources:
        if codename in src.suites:
            return src.uri
    raise ImageBuildError(f"reading apt sources: no `deb` source for suite {codename!r}")


def sources_list(sources: list[AptSource]) -> str:
    """One-line apt sources for the base image (main components only: Debian's own images)."""
    lines = []
    for src in sources:
        for suite in src.suites:
            lines.append(f"deb {src.uri} {suite} {' '.join(src.components)}")
    return "\n".join(lines) + "\n"


def host_codename() -> str:
    return parse_os_codename(Path("/etc/os-release").read_text())


def oci_arch(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


# --- cache keys ---------------------------------------------------------------------------------

def base_key(codename: str, packages=BASE_PACKAGES, arch: str | None = None) -> str:
    spec = json.dumps({"version": BASE_VERSION, "packages": sorted(packages), "arch": arch or oci_arch()})
    return f"{codename}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher's translation: `*` and `?` stop at `/`, `**` spans folders."""
    out, i, n = "^", 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 == n else "(.*/)?"
            else:
                out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def parse_dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    """(exclude, regex) per line, in order; the last pattern that matches a path decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = True
        if line.startswith("!"):
            exclude, line = False, line[1:].strip()
        line = os.path.normpath(line).replace(os.sep, "/")
        if len(line) > 1 and line.startswith("/"):
            line = line.lstrip("/")
        if line == ".":
            continue
        rules.append((exclude, _dockerignore_regex(line)))
    return rules


def dockerignored(rules: list[tuple[bool, re.Pattern]], path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with `/`) out of the build context.

    A pattern that matches one of the path's parent folders matches the path (Docker's rule).
    """
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = exclude
    return excluded


def context_files(repo: Path) -> list[str]:
    """The files of the build context that the Dockerfile copies, sorted, relative to repo."""
    ignore = repo / ".dockerignore"
    rules = parse_dockerignore(ignore.read_text()) if ignore.exists() else []
    out = []
    for tree in CONTEXT_TREES:
        for folder, dirs, files in os.walk(repo / tree):
            dirs.sort()
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), repo).replace(os.sep, "/")
                if not dockerignored(rules, rel):
                    out.append(rel)
    return sorted(out)


def runner_key(repo: Path, base: str) -> str:
    """sha256 over the Dockerfile, the package metadata, the package's files and the base key."""
    digest = hashlib.sha256(f"runner-v{RUNNER_BUILD_VERSION}\0base={base}\0".encode())
    for rel in [f for f in CONTEXT_FILES if (repo / f).exists()] + context_files(repo):
        path = repo / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            content, kind = os.readlink(path).encode(), "l"
        else:
            content, kind = path.read_bytes(), "x" if st.st_mode & 0o111 else "f"
        digest.update(f"{rel}\0{kind}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def runner_tag(key: str) -> str:
    return f"{RUNNER_REPOSITORY}:dev-{key[:12]}"


# --- the OCI writer -----------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_config(layer_diff_ids: list[str], config: dict, arch: str | None = None) -> dict:
    return {
        "architecture": arch or oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in layer_diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "daoflow_operator.localcluster.images"}
                    for _ in layer_diff_ids],
    }


def oci_documents(name: str, config_blob: bytes, layers: list[tuple[str, int, str]],
                  arch: str | None = None) -> tuple[bytes, bytes, bytes]:
    """(manifest, index.json, oci-layout) for one image; layers are (sha256 hex, size, media type).

    The index names the image twice: `io.containerd.image.name` with the full reference (what
    containerd's import uses first, and what its own export writes) and
    `org.opencontainers.image.ref.name` with the full reference too, which containerd's import
    keeps as it is when the first annotation is missing (only a bare tag gets an `import-` prefix).
    """
    manifest = _json_bytes({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest(),
                   "size": len(config_blob)},
        "layers": [{"mediaType": media, "digest": f"sha256:{digest}", "size": size}
                   for digest, size, media in layers],
    })
    index = _json_bytes({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "size": len(manifest),
            "platform": {"architecture": arch or oci_arch(), "os": "linux"},
            "annotations": {ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: name},
        }],
    })
    return manifest, index, _json_bytes({"imageLayoutVersion": "1.0.0"})


def write_oci_archive(dest: Path, name: str, layer_tars: list[Path], config: dict, *, compress: bool = True,
                      arch: str | None = None) -> None:
    """Writes a one-image OCI layout tar: oci-layout, index.json and blobs/sha256/<digest>.

    `layer_tars` are uncompressed layer tars, base first; `config` is the image config's
    `config` object (Env, Entrypoint, Cmd, User, ...).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    layers, diff_ids, blob_files = [], [], []
    try:
        for layer in layer_tars:
            diff_ids.append(_sha256_file(layer))
            if compress:
                gz = tmp.with_name(f"{tmp.name}.{len(blob_files)}.gz")
                with open(layer, "rb") as src, open(gz, "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                blob, media = gz, MEDIA_LAYER_GZIP
            else:
                blob, media = layer, MEDIA_LAYER
            digest = _sha256_file(blob)
            layers.append((digest, blob.stat().st_size, media))
            blob_files.append((digest, blob))
        config_blob = _json_bytes(image_config(diff_ids, config, arch))
        manifest, index, layout = oci_documents(name, config_blob, layers, arch)

        def add_bytes(tar, arcname, data):
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", layout)
            add_bytes(tar, "index.json", index)
            for folder in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for digest, blob in blob_files:
                info = tarfile.TarInfo(f"blobs/sha256/{digest}")
                info.size, info.mode = blob.stat().st_size, 0o644
                with open(blob, "rb") as f:
                    tar.addfile(info, f)
            for data in (config_blob, manifest):
                add_bytes(tar, f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        for _, blob in blob_files:
            if blob.name.endswith(".gz"):
                blob.unlink(missing_ok=True)


def tar_tree(root: Path, dest: Path, skip_contents=("dev", "proc", "sys")) -> None:
    """An uncompressed layer tar of a root filesystem: numeric owners, hard links kept, device
    nodes and sockets left out; the folders in `skip_contents` are kept empty."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
            if rel_folder.split("/")[0] in skip_contents:
                dirs[:] = []
                continue
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(folder, name)
                rel = name if rel_folder == "." else f"{rel_folder}/{name}"
                info = tar.gettarinfo(path, arcname=rel)
                if info is None or info.ischr() or info.isblk() or info.isfifo():
                    continue
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def read_oci_archive(path: Path) -> dict:
    """index, manifest and config of a one-image OCI archive (for checks and tests)."""
    with tarfile.open(path) as tar:
        def blob(digest):
            return json.load(tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}"))
        layout = json.load(tar.extractfile("oci-layout"))
        index = json.load(tar.extractfile("index.json"))
        manifest = blob(index["manifests"][0]["digest"])
        config = blob(manifest["config"]["digest"])
        names = set(tar.getnames())
    return {"layout": layout, "index": index, "manifest": manifest, "config": config, "names": names}


def containerd_import_name(annotations: dict, prefix: str | None = None) -> str | None:
    """The name `ctr images import <file>` (no --base-name) gives a manifest of an OCI index.

    As containerd v2.3 does it (core/transfer/image/imagestore.go imageName(),
    core/images/archive/reference.go refTranslator(), the same in client/import.go for --local):
    `io.containerd.image.name` when it is a full reference (else nothing, never the other
    annotation); otherwise `org.opencontainers.image.ref.name`, kept as it is when it holds a
    `/`, `:` or `@`, and a bare tag becomes `import-<yyyy-MM-dd>:<tag>`.
    """
    prefix = prefix or time.strftime("import-%Y-%m-%d")
    full = re.compile(r"[/:@]")
    name = annotations.get(ANNOTATION_CONTAINERD_NAME)
    if name:
        return name if full.search(name) else None
    ref = annotations.get(ANNOTATION_REF_NAME)
    if ref:
        return ref if full.search(ref) else f"{prefix}:{ref}"
    return None


def check_archive(image: Image) -> dict:
    """Validates an image archive and returns its image config: the OCI layout version, one
    manifest that containerd imports under image.name, every blob's digest and size, the
    platform, one diff_id per layer. Raises ImageBuildError naming what is wrong."""
    def fail(why):
        raise ImageBuildError(f"checking {image.archive}: {why}")

    with tarfile.open(image.archive) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

        def read(name):
            if name not in members:
                fail(f"{name} is missing")
            return tar.extractfile(members[name]).read()

        def blob(desc, parse=True):
            algo, _, hexdigest = desc["digest"].partition(":")
            path = f"blobs/{algo}/{hexdigest}"
            if path not in members:
                fail(f"blob {desc['digest']} is missing")
            if members[path].size != desc["size"]:
                fail(f"blob {desc['digest']}: size {members[path].size}, descriptor says {desc['size']}")
            h = hashlib.sha256()
            f = tar.extractfile(members[path])
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            if algo != "sha256" or h.hexdigest() != hexdigest:
                fail(f"blob {desc['digest']}: content digest is sha256:{h.hexdigest()}")
            return json.loads(tar.extractfile(members[path]).read()) if parse else None

        if json.loads(read("oci-layout")).get("imageLayoutVersion") != "1.0.0":
            fail("oci-layout is not version 1.0.0")
        index = json.loads(read("index.json"))
        manifests = index.get("manifests") or []
        if index.get("schemaVersion") != 2 or len(manifests) != 1:
            fail(f"index.json: schemaVersion 2 with one manifest expected, got {index!r:.200}")
        imported = containerd_import_name(manifests[0].get("annotations") or {})
        if imported != image.name:
            fail(f"containerd would import it as {imported!r}, not {image.name!r}")
        if manifests[0].get("mediaType") != MEDIA_MANIFEST:
            fail(f"manifest media type {manifests[0].get('mediaType')!r}")
        manifest = blob(manifests[0])
        if manifest.get("config", {}).get("mediaType") != MEDIA_CONFIG:
            fail("the manifest's config is not an OCI image config")
        config = blob(manifest["config"])
        for layer in manifest.get("layers", []):
            if layer.get("mediaType") not in (MEDIA_LAYER, MEDIA_LAYER_GZIP):
                fail(f"layer media type {layer.get('mediaType')!r}")
            blob(layer, parse=False)
    if (config.get("os"), config.get("architecture")) != ("linux", oci_arch()):
        fail(f"platform {config.get('os')}/{config.get('architecture')}, not linux/{oci_arch()}")
    if len(config.get("rootfs", {}).get("diff_ids", [])) != len(manifest.get("layers", [])):
        fail("the config's diff_ids do not match the manifest's layers")
    return config


def smoke_test_runner(image: Image, log=print) -> dict[str, str]:
    """Runs the runner image's rootfs with buildah (chroot): its user, python, pg_restore and the
    runner's --help. Removes the working container and the image it loaded."""
    config = check_archive(image)
    user = str(config.get("config", {}).get("User", ""))
    if user.split(":")[0] != "65532":
        raise ImageBuildError(f"checking {image.name}: the image's user is {user!r}, not 65532")
    policy = str(_buildah_setup()[2])
    container = buildah(["from", "--signature-policy", policy, "--quiet", f"oci-archive:{image.archive}"],
                        f"loading {image.name} (buildah from)").strip().splitlines()[-1]
    image_id = buildah(["inspect", "--format", "{{.FromImageID}}", container], "", check=False).strip()
    results = {"config user": user}
    try:
        for label, cmd in (("uid", ["id", "-u"]), ("python", ["python", "--version"]),
                           ("pg_restore", ["pg_restore", "--version"]),
                           ("runner", ["python", "-m", "daoflow_operator.runner", "--help"])):
            out = buildah(["run", "--isolation", "chroot", container, "--", *cmd], f"running `{' '.join(cmd)}` in {image.name}")
            results[label] = out.strip().splitlines()[0] if out.strip() else ""
            log(f"images:   {image.name}: {' '.join(cmd)} -> {results[label]}")
    finally:
        buildah(["rm", container], "", check=False)
        if image_id:
            buildah(["rmi", image_id], "", check=False)
    if results["uid"] != "65532":
        raise ImageBuildError(f"checking {image.name}: runs as uid {results['uid']!r}, not 65532")
    return results


# --- running commands ---------------------------------------------------------------------------

def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], what: str, *, env: dict | None = None, cwd: Path | None = None,
         log_file: Path | None = None, progress=None) -> str:
    """Runs cmd, streaming its output to log_file; raises ImageBuildError with the output's tail.

    `progress(line)` is called for every output line (to log a build's steps as they happen).
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    out: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as exc:
        raise ImageBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    sink = open(log_file, "a") if log_file else contextlib.nullcontext()
    try:
        with sink as f:
            if f:
                f.write(f"$ {' '.join(cmd)}\n")
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if log_file:
                    f.write(line)
                else:
                    out.append(line)
                if progress:
                    progress(line.rstrip("\n"))
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        where = f" (full log: {log_file})" if log_file else ""
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}){where}:\n" + "\n".join(tail))
    return "".join(out) if not log_file else "\n".join(tail)


@contextlib.contextmanager
def _locked(name: str):
    """One builder at a time per image kind, across processes."""
    path = images_dir() / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (point + "/").startswith(prefix):
                out.append(point)
    return sorted(out, key=len, reverse=True)


def _unmount_under(folder: Path) -> None:
    """Unmounts what a failed debootstrap left mounted in its own target (nothing else)."""
    for point in _mounts_under(folder):
        subprocess.run(["umount", "-l", point], capture_output=True)


# --- buildah ------------------------------------------------------------------------------------

def buildah_dir() -> Path:
    return images_dir() / "buildah" / STORAGE_DRIVER


# buildah 1.28 writes its blob-info cache to /var/lib/containers/cache when run as root (no flag
# moves it), so each buildah runs in a private mount namespace where /var/lib is an overlay whose
# writes land in the cache folder and /var/tmp is the cache's tmp folder. Mounts made in that
# namespace (the overlay driver's too) vanish with it; the host sees none.
_PRIVATE_MOUNTS = (
    'mount -t overlay daoflow-buildah -o "lowerdir=/var/lib,upperdir=$1,workdir=$2" /var/lib'
    ' && mount --bind "$3" /var/tmp && shift 3 && exec "$@"'
)


def _buildah_setup() -> tuple[list[str], dict[str, str], Path]:
    """(command prefix, environment, signature policy) that keep buildah's state in the cache."""
    home = buildah_dir()
    root, runroot, tmp, conf = home / "root", home / "runroot", home / "tmp", home / "conf"
    upper, work = home / "varlib" / "upper", home / "varlib" / "work"
    for folder in (root, runroot, tmp, conf, conf / "registries.d", conf / "cni", upper, work):
        folder.mkdir(parents=True, exist_ok=True)
    files = {
        "storage.conf": f'[storage]\ndriver = "{STORAGE_DRIVER}"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n',
        # Only fully qualified local names are used; no search registries, no aliases.
        "registries.conf": "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        # network_config_dir: buildah's network setup otherwise creates /etc/cni/net.d/cni.lock.
        "containers.conf": f'[engine]\nimage_copy_tmp_dir = "{tmp}"\n\n[network]\nnetwork_config_dir = "{conf / "cni"}"\n',
        # Local transports only: anything that would reach a registry is refused.
        "policy.json": json.dumps({
            "default": [{"type": "reject"}],
            "transports": {t: {"": [{"type": "insecureAcceptAnything"}]}
                           for t in ("containers-storage", "oci-archive", "oci", "dir", "docker-archive")},
        }, indent=2) + "\n",
    }
    for name, text in files.items():
        path = conf / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    env = dict(os.environ)
    env.update({
        "BUILDAH_ISOLATION": "chroot",
        "TMPDIR": str(tmp),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
        "CONTAINERS_CONF": str(conf / "containers.conf"),
    })
    prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PRIVATE_MOUNTS, "sh",
              str(upper), str(work), str(tmp),
              "buildah", "--root", str(root), "--runroot", str(runroot), "--storage-driver", STORAGE_DRIVER,
              "--registries-conf", str(conf / "registries.conf"), "--registries-conf-dir", str(conf / "registries.d"),
              "--short-name-alias-conf", str(conf / "shortnames.conf")]
    return prefix, env, conf / "policy.json"


def buildah(args: list[str], what: str, *, log_file: Path | None = None, progress=None, check=True) -> str:
    prefix, env, _ = _buildah_setup()
    if not check:
        proc = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return proc.stdout if proc.returncode == 0 else ""
    return _run([*prefix, *args], what, env=env, log_file=log_file, progress=progress)


def _buildah_has_image(name: str) -> bool:
    return bool(buildah(["images", "--quiet", "--filter", f"reference={name}"], "", check=False).strip())


def _buildah_image_names(repository: str) -> list[str]:
    out = buildah(["images", "--format", "{{.Name}}:{{.Tag}}"], "", check=False)
    return [n for n in out.split() if n.startswith(repository + ":")]


def _require_tools() -> None:
    reason = node_images_available()
    if reason:
        raise ImageBuildError(reason)


# --- the base image -----------------------------------------------------------------------------

def base_archive(key: str) -> Path:
    return images_dir() / "base" / f"daoflow-base-{key}.tar"


def _prepare_rootfs(rootfs: Path, sources: list[AptSource]) -> None:
    """Makes a debootstrap tree look like a container base: apt's caches and lists emptied, the
    release's sources (with updates and security) in sources.list, no host resolv.conf."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "var/log/bootstrap.log", "var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    (rootfs / "etc/apt/sources.list").write_text(sources_list(sources))
    for name in ("etc/resolv.conf", "etc/hostname"):
        path = rootfs / name
        if path.exists() or path.is_symlink():
            path.unlink()
            path.write_text("")


def ensure_base(log=print) -> str:
    """The base image's name in buildah's storage, made (debootstrap) or loaded if needed."""
    codename = host_codename()
    key = base_key(codename)
    name = f"{BASE_REPOSITORY}:{key}"
    archive = base_archive(key)
    if _buildah_has_image(name):
        return name
    with _locked("base"):
        if not archive.exists():
            _build_base_archive(codename, key, archive, log)
        started = time.monotonic()
        log(f"images: loading the base image {name} into buildah's storage ...")
        pulled = buildah(["pull", "--signature-policy", str(_buildah_setup()[2]), "--quiet", f"oci-archive:{archive}"],
                         "loading the base image (buildah pull)")
        image_id = pulled.strip().splitlines()[-1].strip()
        buildah(["tag", image_id, name], "tagging the base image")
        for old in _buildah_image_names(BASE_REPOSITORY):
            if old != name:
                buildah(["rmi", old], "", check=False)
        log(f"images: base image loaded in {time.monotonic() - started:.1f}s")
    return name


def _build_base_archive(codename: str, key: str, archive: Path, log) -> None:
    _require_tools()
    sources = release_sources(host_apt_sources(), codename)
    mirror = release_mirror(sources, codename)
    work = images_dir() / "base" / f"{key}.work"
    logs = images_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"base-{key}.log"
    log_file.write_text("")
    if work.exists():
        _unmount_under(work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    try:
        started = time.monotonic()
        log(f"images: debootstrap --variant=minbase {codename} from {mirror} ({', '.join(BASE_PACKAGES)}) ...")
        # In a private mount namespace: the /proc and /sys it mounts in the target never show on the
        # host and go away with it, even if it is killed.
        _run(["unshare", "--mount", "--propagation", "private", "--",
              "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
              f"--arch={oci_arch()}", codename, str(rootfs), mirror],
             "making the base root filesystem (debootstrap)", log_file=log_file)
        log(f"images: debootstrap done in {time.monotonic() - started:.0f}s")
        started = time.monotonic()
        _prepare_rootfs(rootfs, sources)
        layer = work / "layer.tar"
        tar_tree(rootfs, layer)
        write_oci_archive(archive, f"{BASE_REPOSITORY}:{key}", [layer], {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["/bin/bash"],
        }, compress=False)
        log(f"images: base archive {archive.name} ({archive.stat().st_size / 1e6:.0f} MB) written in "
            f"{time.monotonic() - started:.1f}s")
        _drop_old(archive.parent, "daoflow-base-*.tar", 2)
    finally:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


# --- the runner image ---------------------------------------------------------------------------

def runner_archive(key: str) -> Path:
    return images_dir() / "runner" / f"daoflow-operator-dev-{key[:12]}.tar"


def runner_image(repo: Path, log=print) -> Image:
    """The project's image from its Dockerfile, built over the Debian base (or the cached one)."""
    repo = Path(repo).resolve()
    key = runner_key(repo, base_key(host_codename()))
    image = Image(runner_tag(key), runner_archive(key))
    if image.archive.exists():
        return image
    _require_tools()
    with _locked("runner"):
        if image.archive.exists():
            return image
        total = time.monotonic()
        base = ensure_base(log)
        logs = images_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"runner-{key[:12]}.log"
        log_file.write_text("")
        prefix, env, policy = _buildah_setup()
        volumes = []
        if HOST_CA_BUNDLE.exists():
            # pip and apt in RUN steps trust what this machine trusts; a bind mount, never a layer.
            volumes = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        started = time.monotonic()
        log(f"images: building {image.name} from {repo / 'Dockerfile'} over {base} ...")

        def progress(line: str) -> None:
            if re.match(r"^(\[\d+/\d+\] )?STEP \d+", line):
                log(f"images:   {line[:120]}  (+{time.monotonic() - started:.0f}s)")

        try:
            _run([*prefix, "bud", "--isolation", "chroot", "--pull=never", "--signature-policy", str(policy),
                  "--layers=false", "--force-rm", "--format", "oci", *volumes,
                  "--build-arg", f"BASE_IMAGE={base}", "-t", image.name, "-f", str(repo / "Dockerfile"), str(repo)],
                 "building the runner image (buildah bud)", env=env, log_file=log_file, progress=progress)
            log(f"images: Dockerfile built in {time.monotonic() - started:.0f}s")
            started = time.monotonic()
            tmp = image.archive.with_name(image.archive.name + ".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            _run([*prefix, "push", "--signature-policy", str(policy), "--quiet", image.name,
                  f"oci-archive:{tmp}:{image.name}"],
                 "exporting the runner image (buildah push oci-archive)", env=env, log_file=log_file)
            os.replace(tmp, image.archive)
        finally:
            buildah(["rmi", image.name], "", check=False)
            buildah(["rmi", "--prune"], "", check=False)
        log(f"images: {image.archive.name} ({image.archive.stat().st_size / 1e6:.0f} MB) exported in "
            f"{time.monotonic() - started:.0f}s; {image.name} ready in {time.monotonic() - total:.0f}s")
        _drop_old(image.archive.parent, "daoflow-operator-dev-*.tar", KEEP_RUNNER_ARCHIVES)
        _drop_old(logs, "runner-*.log", 10)
    return image


def _drop_old(folder: Path, pattern: str, keep: int) -> None:
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files[keep:]:
        path.unlink(missing_ok=True)


# --- pause and busybox --------------------------------------------------------------------------

def pause_source() -> Path:
    """build/pause/linux/pause.c of the pinned Kubernetes module (downloaded if needed)."""
    env = dict(os.environ, GOFLAGS="", GOTOOLCHAIN="local")
    rel = Path("build/pause/linux/pause.c")
    gopath = (os.environ.get("GOPATH") or os.path.expanduser("~/go")).split(os.pathsep)[0]
    guess = Path(os.environ.get("GOMODCACHE") or os.path.join(gopath, "pkg", "mod"))
    path = guess / f"k8s.io/kubernetes@{versions.KUBERNETES}" / rel
    if path.exists():  # where the control plane's build left it, without running `go`
        return path
    if not shutil.which("go"):
        raise ImageBuildError("building the pause image: the `go` command is not on PATH")
    modcache = _run(["go", "env", "GOMODCACHE"], "finding the Go module cache", env=env).strip()
    path = Path(modcache) / f"k8s.io/kubernetes@{versions.KUBERNETES}" / rel
    if path.exists():
        return path
    work = images_dir() / "pause"
    work.mkdir(parents=True, exist_ok=True)
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{versions.KUBERNETES}"],
                           "downloading k8s.io/kubernetes for pause.c", env=env, cwd=work))
    path = Path(info["Dir"]) / rel
    if not path.exists():
        raise ImageBuildError(f"building the pause image: {path} does not exist")
    return path


def _small_image_key(*parts: str) -> str:
    return hashlib.sha256("\0".join((f"v{SMALL_IMAGES_VERSION}", oci_arch(), *parts)).encode()).hexdigest()[:12]


def _one_file_layer(dest: Path, entries: list[tuple[str, str, object]]) -> None:
    """A layer tar from (path, kind, value) entries: kind "dir" (mode), "file" (a Path, mode 0755),
    "symlink" (target), "text" (content, mode 0644)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, value in entries:
            info = tarfile.TarInfo(path)
            info.uid = info.gid = 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, value
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, value, 0o777
                tar.addfile(info)
            elif kind == "text":
                data = value.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                info.size, info.mode = value.stat().st_size, 0o755
                with open(value, "rb") as f:
                    tar.addfile(info, f)


def pause_image(log=print) -> Image:
    """Kubernetes' pause, compiled statically from the pinned module's pause.c: the node's sandbox image."""
    key = _small_image_key("pause", PAUSE_VERSION, versions.KUBERNETES)
    image = Image(PAUSE_NAME, images_dir() / "pause" / f"pause-{PAUSE_VERSION}-{key}.tar")
    if image.archive.exists():
        return image
    if not shutil.which("gcc"):
        raise ImageBuildError("building the pause image: `gcc` is not installed")
    with _locked("pause"):
        if image.archive.exists():
            return image
        started = time.monotonic()
        source = pause_source()
        work = images_dir() / "pause" / f"{key}.work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            binary = work / "pause"
            # As build/pause/Makefile does: CFLAGS = -Os -Wall -Werror -static -DVERSION=v$(TAG)-$(REV)
            _run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-{versions.KUBERNETES}",
                  "-o", str(binary), str(source)], "compiling pause.c (gcc -static)")
            if shutil.which("strip"):
                _run(["strip", str(binary)], "stripping pause")
            layer = work / "layer.tar"
            _one_file_layer(layer, [("pause", "file", binary)])
            # build/pause/Dockerfile: USER 65535:65535, ENTRYPOINT ["/pause"]
            write_oci_archive(image.archive, image.name, [layer],
                              {"User": "65535:65535", "Entrypoint": ["/pause"]})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"images: {image.name} built from {source} in {time.monotonic() - started:.1f}s "
            f"({image.archive.stat().st_size / 1e3:.0f} kB)")
    return image


def _busybox_binary(work: Path) -> Path:
    """Debian's static busybox: the installed one, else extracted from `apt-get download busybox-static`."""
    installed = Path("/bin/busybox")
    if installed.exists():
        text = _run(["file", "-L", str(installed)], "checking /bin/busybox") if shutil.which("file") else ""
        if "statically linked" in text or "static-pie linked" in text:
            return installed
    _run(["apt-get", "download", "busybox-static"], "downloading busybox-static (apt-get download)", cwd=work)
    debs = sorted(work.glob("busybox-static_*.deb"))
    if not debs:
        raise ImageBuildError("downloading busybox-static: no .deb file")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(work / "x")], "unpacking busybox-static")
    return work / "x/bin/busybox"


def busybox_image(log=print) -> Image:
    """A tiny image for test pods: Debian's busybox-static, with its applets linked in /bin."""
    key = _small_image_key("busybox", host_codename())
    image = Image(BUSYBOX_NAME, images_dir() / "busybox" / f"busybox-{key}.tar")
    if image.archive.exists():
        return image
    with _locked("busybox"):
        if image.archive.exists():
            return image
        started = time.monotonic()
        work = images_dir() / "busybox" / f"{key}.work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            binary = _busybox_binary(work)
            applets = _run([str(binary), "--list"], "listing busybox applets").split()
            entries = [("bin", "dir", 0o755), ("bin/busybox", "file", binary),
                       ("etc", "dir", 0o755), ("tmp", "dir", 0o1777),
                       ("etc/passwd", "text", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
                       ("etc/group", "text", "root:x:0:\nnogroup:x:65534:\n")]
            entries += [(f"bin/{a}", "symlink", "busybox") for a in sorted(set(applets)) if a != "busybox" and "/" not in a]
            layer = work / "layer.tar"
            _one_file_layer(layer, entries)
            write_oci_archive(image.archive, image.name, [layer],
                              {"Env": ["PATH=/bin"], "Cmd": ["sh"]})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"images: {image.name} built in {time.monotonic() - started:.1f}s "
            f"({image.archive.stat().st_size / 1e3:.0f} kB)")
    return image


def main(argv: list[str] | None = None) -> int:
    """`python -m daoflow_operator.localcluster.images [--check] [runner|pause|busybox]...`

    Builds (or finds in the cache) the images and prints their names and archives; --check also
    validates each archive and runs the runner image's smoke test.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    which = [a for a in args if a != "--check"] or ["runner", "pause", "busybox"]
    repo = Path(__file__).resolve().parents[3]
    reason = node_images_available()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    builders = {"runner": lambda: runner_image(repo), "pause": pause_image, "busybox": busybox_image}
    try:
        for kind in which:
            started = time.monotonic()
            image = builders[kind]()
            print(f"{image.name} {image.archive} ({image.archive.stat().st_size / 1e6:.1f} MB, "
                  f"{time.monotonic() - started:.2f}s)", flush=True)
            if check:
                if kind == "runner":
                    smoke_test_runner(image)
                else:
                    check_archive(image)
                print(f"{image.name}: checked", flush=True)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
