"""The pure parts of localcluster.images: apt sources, cache keys, .dockerignore, the OCI writer.

Nothing here runs buildah, debootstrap or gcc.
"""

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from daoflow_operator.localcluster import images

ROOT = Path(__file__).resolve().parents[2]

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security/
Suites: bookworm-security
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://packages.example.com/apt cloud-sdk-bookworm main
deb http://ftp.example.org/debian/ bookworm main contrib  # trailing comment
deb-src http://ftp.example.org/debian bookworm main
"""


def test_deb822_sources_skip_sources_disabled_stanzas_and_continuation_lines():
    sources = images.parse_deb822_sources(DEB822)
    assert sources == [
        images.AptSource("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"), ("main",)),
        images.AptSource("http://deb.debian.org/debian-security", ("bookworm-security",), ("main", "contrib")),
    ]


def test_one_line_sources_drop_options_comments_and_deb_src():
    assert images.parse_one_line_sources(ONE_LINE) == [
        images.AptSource("https://packages.example.com/apt", ("cloud-sdk-bookworm",), ("main",)),
        images.AptSource("http://ftp.example.org/debian", ("bookworm",), ("main", "contrib")),
    ]


def test_the_release_sources_mirror_and_sources_list():
    sources = images.parse_one_line_sources(ONE_LINE) + images.parse_deb822_sources(DEB822)
    release = images.release_sources(sources, "bookworm")
    # The third-party suite `cloud-sdk-bookworm` is not the release's.
    assert [s.suites for s in release] == [("bookworm",), ("bookworm", "bookworm-updates"), ("bookworm-security",)]
    assert images.release_mirror(release, "bookworm") == "http://ftp.example.org/debian"
    assert images.sources_list(release[1:]).splitlines() == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main contrib",
    ]
    with pytest.raises(images.ImageBuildError, match="trixie"):
        images.release_mirror(release, "trixie")


def test_host_apt_sources_reads_list_and_sources_files_only(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://a.example/debian bookworm main\n")
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text(DEB822)
    (folder / "extra.list").write_text("deb http://b.example/debian bookworm-backports main\n")
    (folder / "nodesource.sources.disabled-by-farm").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
    uris = [s.uri for s in images.host_apt_sources(tmp_path)]
    assert uris == ["http://a.example/debian", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security",
                    "http://b.example/debian"]


def test_os_release_codename():
    text = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n'
    assert images.parse_os_codename(text) == "bookworm"
    with pytest.raises(images.ImageBuildError):
        images.parse_os_codename("ID=debian\n")


def test_the_base_key_follows_suite_packages_and_architecture():
    key = images.base_key("bookworm", arch="amd64")
    assert key.startswith("bookworm-") and key == images.base_key("bookworm", arch="amd64")
    assert images.base_key("trixie", arch="amd64") != key
    assert images.base_key("bookworm", packages=images.BASE_PACKAGES + ("curl",), arch="amd64") != key
    assert images.base_key("bookworm", arch="arm64") != key
    # The order of the list does not matter.
    assert images.base_key("bookworm", packages=tuple(reversed(images.BASE_PACKAGES)), arch="amd64") == key


@pytest.mark.parametrize("path, ignored", [
    ("pyproject.toml", False),
    ("README.md", False),
    ("operator/daoflow_operator/runner/__init__.py", False),
    ("operator/daoflow_operator/localcluster/kwok.yaml", False),
    ("operator/daoflow_operator/__pycache__/cli.cpython-311.pyc", True),
    ("operator/daoflow_operator/stray.pyc", True),
    ("operator/daoflow_operator.egg-info/PKG-INFO", True),
    ("tests/unit/test_images.py", True),
    (".venv/bin/python", True),
    ("Dockerfile", True),
])
def test_the_projects_dockerignore(path, ignored):
    rules = images.parse_dockerignore((ROOT / ".dockerignore").read_text())
    assert images.dockerignored(rules, path) is ignored


def test_dockerignore_patterns_follow_docker():
    rules = images.parse_dockerignore("# comment\n/docs/**\n!docs/keep.md\n*.log\na?c\n[xy].txt\n")
    assert images.dockerignored(rules, "docs/a/b.md")
    assert not images.dockerignored(rules, "docs/keep.md")
    assert images.dockerignored(rules, "build.log")
    assert not images.dockerignored(rules, "sub/build.log")  # `*` stops at `/`
    assert images.dockerignored(rules, "abc") and not images.dockerignored(rules, "abbc")
    assert images.dockerignored(rules, "x.txt") and not images.dockerignored(rules, "z.txt")


@pytest.fixture
def repo(tmp_path):
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pkg = tmp_path / "operator" / "daoflow_operator"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("print('runner')\n")
    (pkg / "__pycache__" / "runner.cpython-311.pyc").write_bytes(b"\x00")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    return tmp_path


def test_the_context_holds_the_package_files_without_caches(repo):
    assert images.context_files(repo) == ["operator/daoflow_operator/__init__.py", "operator/daoflow_operator/runner.py"]


def test_the_runner_key_changes_with_the_package_and_not_with_ignored_files(repo):
    key = images.runner_key(repo, "bookworm-abc")
    assert images.runner_key(repo, "bookworm-abc") == key
    assert images.runner_tag(key) == f"localhost/daoflow-operator:dev-{key[:12]}"

    (repo / "operator/daoflow_operator/__pycache__/runner.cpython-311.pyc").write_bytes(b"\x01")
    (repo / "operator/daoflow_operator/__pycache__/new.cpython-311.pyc").write_bytes(b"\x02")
    (repo / "tests/test_x.py").write_text("changed")
    (repo / "LICENSE").write_text("not in the context")
    assert images.runner_key(repo, "bookworm-abc") == key

    assert images.runner_key(repo, "trixie-abc") != key
    (repo / "operator/daoflow_operator/runner.py").write_text("print('changed')\n")
    changed = images.runner_key(repo, "bookworm-abc")
    assert changed != key
    (repo / "operator/daoflow_operator/new_module.py").write_text("")
    assert images.runner_key(repo, "bookworm-abc") not in (key, changed)


@pytest.mark.parametrize("name", ["Dockerfile", "pyproject.toml", "README.md", ".dockerignore"])
def test_the_runner_key_changes_with_the_build_files(repo, name):
    key = images.runner_key(repo, "base")
    with open(repo / name, "a") as f:
        f.write("\n# changed\n")
    assert images.runner_key(repo, "base") != key


@pytest.mark.parametrize("annotations, name", [
    ({"io.containerd.image.name": "localhost/pause:3.10.2", "org.opencontainers.image.ref.name": "3.10.2"},
     "localhost/pause:3.10.2"),
    ({"org.opencontainers.image.ref.name": "localhost/daoflow-operator:dev-0123456789ab"},
     "localhost/daoflow-operator:dev-0123456789ab"),
    ({"org.opencontainers.image.ref.name": "latest"}, "import-2026-01-02:latest"),
    ({"io.containerd.image.name": "bare", "org.opencontainers.image.ref.name": "localhost/x:y"}, None),
    ({}, None),
])
def test_the_name_containerd_imports(annotations, name):
    assert images.containerd_import_name(annotations, prefix="import-2026-01-02") == name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _layer(tmp_path) -> Path:
    path = tmp_path / "layer.tar"
    images._one_file_layer(path, [("bin", "dir", 0o755), ("bin/tool", "text", "#!/bin/sh\n"),
                                  ("bin/alias", "symlink", "tool")])
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_the_oci_archive_shape(tmp_path, compress):
    layer = _layer(tmp_path)
    dest = tmp_path / "out" / "image.tar"
    name = "localhost/tool:1"
    images.write_oci_archive(dest, name, [layer], {"Entrypoint": ["/bin/tool"], "User": "65535:65535"},
                             compress=compress, arch="amd64")
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert names[:2] == ["oci-layout", "index.json"]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for path, data in files.items():
        if path.startswith("blobs/sha256/"):
            assert path == f"blobs/sha256/{_sha256(data)}"

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == images.MEDIA_INDEX
    [entry] = index["manifests"]
    assert entry["mediaType"] == images.MEDIA_MANIFEST
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["annotations"] == {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    manifest_bytes = files[f"blobs/sha256/{entry['digest'].split(':')[1]}"]
    assert entry["size"] == len(manifest_bytes)

    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == images.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == images.MEDIA_CONFIG
    [layer_desc] = manifest["layers"]
    blob = files[f"blobs/sha256/{layer_desc['digest'].split(':')[1]}"]
    assert layer_desc["size"] == len(blob)
    assert layer_desc["mediaType"] == (images.MEDIA_LAYER_GZIP if compress else images.MEDIA_LAYER)
    uncompressed = gzip.decompress(blob) if compress else blob
    assert uncompressed == layer.read_bytes()

    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{_sha256(uncompressed)}"]}
    assert config["config"] == {"Entrypoint": ["/bin/tool"], "User": "65535:65535"}
    assert len(config["history"]) == 1


def test_the_writer_is_reproducible_and_check_archive_accepts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "oci_arch", lambda machine=None: "amd64")
    layer = _layer(tmp_path)
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    for dest in (first, second):
        images.write_oci_archive(dest, "localhost/tool:1", [layer], {"Cmd": ["sh"]})
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))
    config = images.check_archive(images.Image("localhost/tool:1", first))
    assert config["config"] == {"Cmd": ["sh"]}
    with pytest.raises(images.ImageBuildError, match="would import it as"):
        images.check_archive(images.Image("localhost/tool:2", first))


def test_check_archive_finds_a_corrupt_blob(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "oci_arch", lambda machine=None: "amd64")
    good = tmp_path / "good.tar"
    images.write_oci_archive(good, "localhost/tool:1", [_layer(tmp_path)], {})
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and data.startswith(b"\x1f\x8b"):  # the gzip layer
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(member, None if data is None else io.BytesIO(data))
    with pytest.raises(images.ImageBuildError, match="content digest"):
        images.check_archive(images.Image("localhost/tool:1", bad))


def test_tar_tree_keeps_special_folders_empty_and_owners_numeric(tmp_path):
    root = tmp_path / "rootfs"
    for folder in ("dev/pts", "proc/1", "usr/bin", "etc"):
        (root / folder).mkdir(parents=True)
    (root / "dev/null").write_text("")
    (root / "proc/1/status").write_text("")
    (root / "usr/bin/python3").write_text("#!")
    (root / "usr/bin/python").symlink_to("python3")
    (root / "etc/hosts").write_text("")
    (root / "usr/bin/hardlink").hardlink_to(root / "usr/bin/python3")
    dest = tmp_path / "layer.tar"
    images.tar_tree(root, dest)
    with tarfile.open(dest) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"dev", "proc", "usr", "usr/bin", "usr/bin/python3", "usr/bin/python", "usr/bin/hardlink",
                            "etc", "etc/hosts"}
    assert members["usr/bin/python"].issym() and members["usr/bin/python"].linkname == "python3"
    assert members["usr/bin/hardlink"].islnk() or members["usr/bin/python3"].islnk()
    assert all(m.uname == "" and m.gname == "" for m in members.values())
