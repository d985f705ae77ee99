from pathlib import Path

from daoflow_operator.localcluster import build, versions

KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
)
"""

ETCD_GOMOD = """\
module go.etcd.io/etcd/server/v3

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgithub.com/example/fork v1.2.0 => github.com/example/fork2 v1.3.0
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def test_staging_paths_become_published_versions():
    gomod = build.wrapper_gomod("kubernetes", "k8s.io/kubernetes", "v1.36.3", KUBERNETES_GOMOD)
    assert "require k8s.io/kubernetes v1.36.3" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in gomod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in gomod
    assert "godebug default=go1.26" in gomod


def test_sibling_modules_keep_the_server_version_and_forbidden_ones_are_dropped():
    gomod = build.wrapper_gomod("etcd", "go.etcd.io/etcd/server/v3", "v3.6.16", ETCD_GOMOD)
    assert "\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16" in gomod
    assert "\tgithub.com/example/fork => github.com/example/fork2 v1.3.0" in gomod
    assert "FORBIDDEN" not in gomod and "go.etcd.io/etcd =>" not in gomod


def test_kubernetes_binaries_are_stamped_with_their_version():
    flags = build.ldflags("kubernetes", "v1.36.3")
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in flags
    assert "-X k8s.io/component-base/version.gitMinor=36" in flags


def test_the_cache_folder_changes_with_any_pinned_version(monkeypatch):
    monkeypatch.setenv("DAOFLOW_CACHE_DIR", "/tmp/x")
    before = build.bin_dir()
    monkeypatch.setattr(versions, "ETCD", "v3.6.99")
    assert build.bin_dir() != before


def test_pinning_a_tool_never_moves_the_control_planes_cache(monkeypatch):
    monkeypatch.setenv("DAOFLOW_CACHE_DIR", "/tmp/x")
    before = build.bin_dir()
    monkeypatch.setattr(versions, "HELM", "v3.99.0")
    monkeypatch.setitem(versions.TOOLS, "helm", {**versions.TOOLS["helm"], "version": "v3.99.0"})
    assert build.bin_dir() == before
    assert build.tool_path("helm") == Path("/tmp/x/helm-v3.99.0/bin/helm")


def test_helm_is_stamped_with_its_version():
    assert f"-X helm.sh/helm/v3/internal/version.version={versions.HELM}" in build.ldflags("helm", versions.HELM)


def test_kustomize_is_pinned_as_a_tool_and_stamped_with_its_version():
    assert versions.TOOLS["kustomize"]["version"] == versions.KUSTOMIZE
    assert f"-X sigs.k8s.io/kustomize/api/provenance.version={versions.KUSTOMIZE}" in \
        build.ldflags("kustomize", versions.KUSTOMIZE)
    assert build.go_binary_name(versions.TOOLS["kustomize"]["packages"]["kustomize"]) == "kustomize"


def test_binary_names_follow_go_build():
    assert build.go_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert build.go_binary_name("k8s.io/kubernetes/cmd/kubectl") == "kubectl"


def test_a_warm_cache_builds_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("DAOFLOW_CACHE_DIR", str(tmp_path))
    dest = build.bin_dir()
    dest.mkdir(parents=True)
    for name in versions.BINARIES:
        (dest / name).write_text("#!/bin/sh\n")
        (dest / name).chmod(0o755)

    def no_build(*args, **kwargs):
        raise AssertionError("a cached binary was built again")

    monkeypatch.setattr(build, "build_group", no_build)
    assert build.ensure_binaries() == dest


def test_a_build_failure_names_the_module_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("DAOFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(versions, "MODULES", {"etcd": {**versions.MODULES["etcd"], "version": "v3.6.999"}})
    try:
        build.build_group("etcd", tmp_path / "bin")
    except build.BuildError as exc:
        assert "go.etcd.io/etcd/server/v3@v3.6.999" in str(exc)
    else:
        raise AssertionError("a build of a version that does not exist succeeded")
