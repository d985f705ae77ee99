"""The one place where the local control plane's upstream versions are pinned.

Kubernetes v1.36.3, etcd v3.6.16 and kwok v0.8.0 are all served by the Go
module proxy. Changing a version here changes the cache folder, so an old build
is never mixed with a new one.
"""

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
KWOK = "v0.8.0"
# The real node's container runtime: containerd's release table lists 2.2+ for Kubernetes 1.36.
# runc and the CNI plugins come from Debian's packages (hack/install-node.sh).
CONTAINERD = "v2.3.7"
# The S3-compatible server of the runner's tests: Versity's S3 gateway, a production server
# with a POSIX backend. Kept in a cache folder of its own, so changing it rebuilds only it.
VERSITYGW = "v1.8.0"
# The chart's renderer and linter, for the tests that render helm/daoflow-operator. A tool too:
# its own cache folder, so pinning it never rebuilds the control plane.
# helm v3, not v4: v3 is what platform teams run today (v3.x keeps receiving fixes), and a chart
# that lints and installs under v3 installs under v4 too; the reverse is not true.
HELM = "v3.22.0"
# `kubectl kustomize manifests` renders the kustomize base; the standalone kustomize checks it the
# way CI and GitOps tools (Argo CD, Flux) build it.
# v5.8.2, not v5.8.3: v5.8.3 requires go >= 1.27, and the machine's toolchain is go 1.26.
KUSTOMIZE = "v5.8.2"
# promtool, which checks and unit-tests the chart's PrometheusRule: Prometheus 3.x is the Go module
# version v0.3xx (its own cache folder, like helm).
PROMETHEUS = "v0.316.0"

# Each group is one wrapper module: a go.mod that requires the upstream module
# and is built with a single `go build` so that packages are compiled once.
MODULES = {
    "kubernetes": {
        "module": "k8s.io/kubernetes",
        "version": KUBERNETES,
        "packages": {
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        },
    },
    "etcd": {
        "module": "go.etcd.io/etcd/server/v3",
        "version": ETCD,
        "packages": {"etcd": "go.etcd.io/etcd/server/v3"},
    },
    "kwok": {
        "module": "sigs.k8s.io/kwok",
        "version": KWOK,
        "packages": {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    },
    "containerd": {
        "module": "github.com/containerd/containerd/v2",
        "version": CONTAINERD,
        "packages": {
            "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
            "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
            "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        },
        # btrfs needs cgo headers; the node uses the overlayfs snapshotter.
        "tags": ["no_btrfs"],
    },
}

BINARIES = tuple(name for group in MODULES.values() for name in group["packages"])

TOOLS = {
    "versitygw": {
        "module": "github.com/versity/versitygw",
        "version": VERSITYGW,
        "packages": {"versitygw": "github.com/versity/versitygw/cmd/versitygw"},
    },
    "helm": {
        "module": "helm.sh/helm/v3",
        "version": HELM,
        "packages": {"helm": "helm.sh/helm/v3/cmd/helm"},
    },
    "kustomize": {
        "module": "sigs.k8s.io/kustomize/kustomize/v5",
        "version": KUSTOMIZE,
        "packages": {"kustomize": "sigs.k8s.io/kustomize/kustomize/v5"},
    },
    "promtool": {
        "module": "github.com/prometheus/prometheus",
        "version": PROMETHEUS,
        "packages": {"promtool": "github.com/prometheus/prometheus/cmd/promtool"},
    },
}


def cache_key() -> str:
    return f"k8s-{KUBERNETES}-etcd-{ETCD}-kwok-{KWOK}-containerd-{CONTAINERD}"
