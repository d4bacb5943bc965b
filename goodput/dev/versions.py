"""Pinned versions of the control-plane binaries, built from Go modules.

The versions are part of every cache key, so bumping one here rebuilds exactly that component.
Kubernetes is pinned to v1.36.4 rather than the proxy's newest v1.36.5 because the checksum
database does not (yet) know v1.36.5's go.mod, and we never build with verification turned off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GoComponent:
    """One Go module and the commands we build from it.

    ``wrapper`` names a go.mod template in ``goodput/dev/gomod/`` for modules that
    ``go install pkg@version`` refuses (their go.mod has ``replace`` directives); ``None`` means a
    plain ``go install`` works.
    """

    name: str
    module: str
    version: str
    commands: dict[str, str]  # binary name -> Go package path
    ldflags: tuple[str, ...] = ()
    wrapper: str | None = None

    @property
    def key(self) -> str:
        """Directory name in the binary cache: a version bump gives a new, empty directory."""
        return f"{self.name}-{self.version}"


KUBERNETES_VERSION = "v1.36.4"
# k8s.io/api, k8s.io/client-go, ... are published as v0.<minor>.<patch> of the same release.
KUBERNETES_STAGING_VERSION = "v0" + KUBERNETES_VERSION[2:]
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"


def _kubernetes_ldflags() -> tuple[str, ...]:
    # The same variables Kubernetes' own hack/lib/version.sh stamps, so `kubectl version` and the
    # API server's /version report the real release instead of v0.0.0-master.
    major, minor = KUBERNETES_VERSION[1:].split(".")[:2]
    values = {"gitVersion": KUBERNETES_VERSION, "gitMajor": major, "gitMinor": minor}
    values["gitTreeState"] = "clean"
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{var}={value}" for var, value in values.items()]
    return tuple(flags)


KUBERNETES = GoComponent(
    name="kubernetes",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    commands={
        name: f"k8s.io/kubernetes/cmd/{name}"
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    },
    ldflags=_kubernetes_ldflags(),
    wrapper="kubernetes.go.mod.tmpl",
)

# The real node's kubelet: the same release and build as the control plane, in a component of its
# own so adding it (or bumping only it) does not rebuild the control plane. Its wrapper module
# needs a few more dependencies than the control plane's (the CRI streaming server, hnslib,
# OpenTelemetry exporters), which `go mod tidy` resolves.
KUBELET = GoComponent(
    name="kubelet",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    commands={"kubelet": "k8s.io/kubernetes/cmd/kubelet"},
    ldflags=_kubernetes_ldflags(),
    wrapper="kubelet.go.mod.tmpl",
)

ETCD = GoComponent(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    version=ETCD_VERSION,
    # The server module's root package is etcd's main package.
    commands={"etcd": "go.etcd.io/etcd/server/v3"},
    wrapper="etcd.go.mod.tmpl",
)

KWOK = GoComponent(
    name="kwok",
    module="sigs.k8s.io/kwok",
    version=KWOK_VERSION,
    commands={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
)

HELM = GoComponent(
    name="helm",
    module="helm.sh/helm/v4",
    version=HELM_VERSION,
    commands={"helm": "helm.sh/helm/v4/cmd/helm"},
    ldflags=(f"-X helm.sh/helm/v4/internal/version.version={HELM_VERSION}",),
)

# Build order: one at a time, the biggest first so a failure shows up early.
COMPONENTS: tuple[GoComponent, ...] = (KUBERNETES, ETCD, KWOK, HELM, KUBELET)
