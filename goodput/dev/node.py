"""The real node beside the simulated fleet: a kubelet and containerd on this machine.

kwok's nodes never run a container, so nothing proved that a pod the operator writes can serve.
This node does: Kubernetes' own kubelet (built like the control plane) with Debian's containerd
and runc, pods on a private Linux bridge whose traffic can never leave the machine (the host
does not forward, and an iptables rule drops anything that would leave the bridge), images
imported locally (no registry), and the GPU-feature-discovery labels and fictional
``nvidia.com/gpu`` capacity of the product the fleet file names for the CPU engine, so the
operator places small models here through its normal placement path.

Everything is private to one cluster name: containerd's root, state, socket and runc root, the
kubelet's root dir and ports, a cgroup root of its own, a bridge and a /24 derived from the
cluster's port block. ``up()`` is idempotent; ``down()`` kills every container of the node (by
its cgroups), unmounts what the node mounted and leaves the images for the next start.
Facts behind each setting: ../shared/docs/real-node-facts.md and docs/dev-cluster.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tomli_w
import yaml

from goodput.api.images import PAUSE_IMAGE
from goodput.dev import host_packages, pki
from goodput.dev.fleet import (
    GPU_RESOURCE,
    REAL_NODE_LABEL,
    REAL_NODE_TAINT,
    RealNode,
    this_machine,
)
from goodput.dev.images import import_into_containerd
from goodput.dev.processes import ProcessSpec, Supervisor, command_lines

Progress = Callable[[str], None]

CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_FS = Path("/sys/fs/cgroup")
# Port 9 (discard) on loopback: nothing listens, so a pull fails at once.
_NO_REGISTRY = "http://127.0.0.1:9"
CONTAINERD_NAMESPACE = "k8s.io"


def platform_problem() -> str | None:
    """Why this machine cannot run the real node, or None if it can (root on Linux with cgroups,
    and a CPU that runs the vLLM CPU engine)."""
    from goodput.dev.engine import platform_problem as engine_problem

    if not CGROUP_FS.is_dir():
        return f"no cgroup file system at {CGROUP_FS}"
    if os.geteuid() != 0:
        return "the kubelet and containerd run as root (and manage a bridge and iptables)"
    return engine_problem()


class NodeError(RuntimeError):
    """The real node could not be started; the message says where to look."""


class ClusterHandle(Protocol):
    """What the node needs of its cluster (``LocalCluster`` provides it)."""

    name: str
    state_dir: Path
    pki: pki.ClusterPKI
    supervisor: Supervisor

    @property
    def server(self) -> str: ...

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> str: ...


@dataclass(frozen=True)
class NodeNetwork:
    """The node's private bridge and pod subnet: one /24 per cluster port block."""

    index: int

    @property
    def bridge(self) -> str:
        return f"gpbr{self.index}"  # interface names are at most 15 characters

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        # 172.20.0.0/14 holds 1,024 /24s; port blocks beyond that wrap (never two live at once).
        base = int(ipaddress.IPv4Address("172.20.0.0"))
        return ipaddress.IPv4Network((base + (self.index % 1024) * 256, 24))

    @property
    def address(self) -> str:
        """The bridge's (and so the node's) IP: the pods' gateway, reachable from the host."""
        return str(self.subnet.network_address + 1)

    @property
    def _egress_drop(self) -> list[str]:
        """Pods talk to each other and to this machine, never beyond it."""
        return ["FORWARD", "-i", self.bridge, "!", "-o", self.bridge, "-j", "DROP"]

    def up(self) -> None:
        """Create the bridge with its address and the egress drop (idempotent)."""
        if _run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        cidr = f"{self.address}/{self.subnet.prefixlen}"
        shown = _run(["ip", "-4", "-o", "addr", "show", "dev", self.bridge]).stdout
        if cidr not in shown:
            _run(["ip", "addr", "add", cidr, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        ipv6 = Path(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6")
        if ipv6.exists():
            ipv6.write_text("1\n")
        if _run(["iptables", "-C", *self._egress_drop], check=False).returncode != 0:
            _run(["iptables", "-I", *self._egress_drop])

    def down(self) -> None:
        while _run(["iptables", "-C", *self._egress_drop], check=False).returncode == 0:
            _run(["iptables", "-D", *self._egress_drop])
        _run(["ip", "link", "delete", self.bridge], check=False)


class LocalNode:
    """One real node of a local cluster: containerd + kubelet, started and stopped as a unit."""

    def __init__(
        self,
        cluster: ClusterHandle,
        spec: RealNode,
        network: NodeNetwork,
        kubelet: Path,
        kubelet_port: int,
        healthz_port: int,
    ) -> None:
        self.cluster = cluster
        self.spec = spec
        self.network = network
        self.kubelet_binary = kubelet
        self.kubelet_port = kubelet_port
        self.healthz_port = healthz_port
        self.dir = cluster.state_dir / "node"
        self.identity = pki.Identity(
            f"node-{spec.name}", f"system:node:{spec.name}", ("system:nodes",)
        )

    # ----- paths -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def containerd_address(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        """Images and snapshots: kept across restarts, so images are imported once."""
        return self.dir / "containerd-root"

    @property
    def containerd_state(self) -> Path:
        return self.dir / "containerd-state"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root: its own, so two clusters' kubelets never share pods'."""
        return f"/goodput-{self.cluster.name}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    # ----- lifecycle -------------------------------------------------------------------------

    def up(self, images: Sequence[Path] = (), say: Progress | None = None) -> None:
        """Start (or keep) containerd and the kubelet, import ``images``, wait for Ready."""
        progress = say or (lambda _message: None)
        host_packages.ensure(host_packages.CONTAINER_RUNTIME, "the real node")
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.network.up()
        self._write_containerd_config()
        supervisor = self.cluster.supervisor
        if not supervisor.alive("containerd"):
            self._clear_runtime_state()
            supervisor.start(self._containerd_spec())
        self._wait("containerd", self._containerd_ready, timeout=30)
        for archive in images:
            self.import_image(archive, progress)
        for controller in _cgroup_controllers():  # the kubelet refuses a missing cgroup root
            _make_cgroup(controller, self.cgroup_root)
        self._write_kubelet_config()
        self._bind_rbac()
        if not supervisor.alive("kubelet"):
            supervisor.start(self._kubelet_spec())
        self._wait("kubelet", self._registered, timeout=60)
        self._advertise()
        self._wait("kubelet", self._ready, timeout=60)
        progress(
            f"real node {self.name} Ready at {self.network.address} "
            f"({time.monotonic() - started:.1f}s)"
        )

    def down(self) -> None:
        """Stop the kubelet, kill the node's containers, stop containerd, release mounts."""
        supervisor = self.cluster.supervisor
        supervisor.stop("kubelet")
        _kill_cgroup_tree(self.cgroup_root)
        supervisor.stop("containerd")
        _kill_shims(self.containerd_address)
        self._clear_runtime_state()

    def purge(self) -> None:
        """Everything ``down`` does, and the bridge and cgroups too (the state dir is the
        cluster's to delete)."""
        self.down()
        _remove_cgroups(self.cgroup_root)
        self.network.down()

    def import_image(self, archive: Path, progress: Progress | None = None) -> None:
        """Import an OCI archive into the node's containerd: skipped if this archive was
        imported before and every image it names is still there (the kubelet may have
        garbage-collected one since, under disk pressure: the marker alone would then keep the
        node without it for good)."""
        marker = self.containerd_root / "goodput-imported" / (archive.name + ".json")
        stat = archive.stat()
        fingerprint = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
        try:
            if json.loads(marker.read_text()) == fingerprint and set(
                archive_references(archive)
            ) <= set(self.images()):
                return
        except (OSError, ValueError, KeyError):
            pass
        if progress is not None:
            progress(f"importing {archive.name} into the real node's containerd")
        import_into_containerd(archive, self.containerd_address, CONTAINERD_NAMESPACE)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(fingerprint))

    def provide_models(self, namespace: str, models: dict[str, Path], claim: str) -> None:
        """A PersistentVolumeClaim ``claim`` in ``namespace`` holding ``models`` (name -> local
        directory) at ``<name>/``: a hostPath PersistentVolume on this node (a copy of each
        model), bound to the claim by name, so an LLMDeployment loads them with
        ``source: pvc://CLAIM/NAME`` like weights on any cluster's shared storage."""
        root = self.dir / "models" / namespace
        for name, source in models.items():
            target = root / name
            if not target.exists():
                # A copy readable by the pods' non-root users (a cached model may be private to
                # its owner), renamed into place so a pod never sees half of it.
                staging = target.with_name(f".{name}.tmp")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(source, staging, copy_function=shutil.copyfile)
                for path in (staging, *staging.rglob("*")):
                    path.chmod(0o755 if path.is_dir() else 0o644)
                staging.rename(target)
        volume = f"goodput-models-{namespace}"
        existing = self.cluster.kubectl("get", "pv", volume, "-o", "json", check=False)
        if existing.strip() and json.loads(existing).get("status", {}).get("phase") == "Released":
            # Its claim is gone (a deleted namespace): a new claim of the same name cannot bind
            # to it while it remembers the old one's uid.
            self.cluster.kubectl("delete", "pv", volume, "--wait=true", "--timeout=60s")
        docs = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume, "labels": {REAL_NODE_LABEL: "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "claimRef": {"namespace": namespace, "name": claim},
                    "hostPath": {"path": str(root), "type": "Directory"},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchFields": [
                                        {
                                            "key": "metadata.name",
                                            "operator": "In",
                                            "values": [self.name],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
        self.cluster.kubectl(
            "apply", "--server-side", "--field-manager=goodput-dev", "-f", "-",
            stdin=yaml.safe_dump_all(docs),
        )  # fmt: skip

    @property
    def apiserver_port(self) -> int:
        port = urllib.parse.urlsplit(self.cluster.server).port
        assert port is not None, self.cluster.server
        return port

    def operator_env(self) -> dict[str, str]:
        """Serving-pod requests an operator needs for this node (``goodput operator run``'s
        environment): its defaults are sized for GPU servers, this node has a few cores. Each
        engine slot asks for half of its share of the cores (the rest is the gateways' and the
        machine's) and a quarter of its share of the memory, at least 2 GiB."""
        cores, memory_gib = this_machine()
        cpu = round(cores / (2 * self.spec.gpus), 2)
        memory = max(int(memory_gib / (4 * self.spec.gpus)), 2)
        return {
            "GOODPUT_ENGINE_CPU": f"{cpu:g}",
            "GOODPUT_ENGINE_MEMORY_GIB": str(memory),
            # Router pods need no GPU, but here only this node runs containers; and with no
            # kube-proxy they reach the API server at the bridge address, as the node does.
            "GOODPUT_ROUTER_NODE_SELECTOR": f"{REAL_NODE_LABEL}=true",
            "GOODPUT_ROUTER_TOLERATIONS": f"{REAL_NODE_TAINT.partition('=')[0]}:NoSchedule",
            "GOODPUT_POD_API_SERVER": f"{self.network.address}:{self.apiserver_port}",
        }

    def ctr(self, *args: str, timeout: float = 60) -> str:
        """Run containerd's ``ctr`` against this node's containerd, in the kubelet's namespace."""
        command = ["ctr", "--address", str(self.containerd_address), "-n", CONTAINERD_NAMESPACE]
        result = _run([*command, *args], check=False, timeout=timeout)
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").split()

    # ----- containerd ------------------------------------------------------------------------

    def _write_containerd_config(self) -> None:
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"goodput-{self.cluster.name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.network.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.network.subnet)}]],
                        "dataDir": str(cni / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        # containerd re-reads the directory on change: write atomically (a half-written file is
        # read as a broken network config).
        _write_atomic(cni / "net.d" / "10-goodput.conflist", json.dumps(conflist, indent=2))
        cri = {
            "sandbox_image": PAUSE_IMAGE,
            # root here lacks CAP_SYS_RESOURCE: lowering oom_score_adj (pause asks for -998)
            # would fail every sandbox.
            "restrict_oom_score_adj": True,
            "disable_apparmor": True,
            "enable_selinux": False,
            "netns_mounts_under_state_dir": True,
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {
                            "SystemdCgroup": False,
                            "Root": str(self.dir / "runc"),
                        },
                    }
                },
            },
            "cni": {"bin_dir": CNI_BIN_DIR, "conf_dir": str(cni / "net.d"), "max_conf_num": 1},
            # Every registry resolves to a closed loopback port: a pod naming an image that was
            # not imported fails at once, and no name is ever looked up outside this machine.
            "registry": {"config_path": str(self._write_registry_hosts())},
        }
        config = {
            "version": 2,
            "root": str(self.containerd_root),
            "state": str(self.containerd_state),
            "grpc": {"address": str(self.containerd_address)},
            "ttrpc": {"address": str(self.dir / "containerd.sock.ttrpc")},
            "debug": {"address": ""},
            "metrics": {"address": ""},
            "disabled_plugins": [
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.tracing.processor.v1.otlp",
            ],
            "plugins": {
                "io.containerd.grpc.v1.cri": cri,
                "io.containerd.internal.v1.opt": {"path": str(self.dir / "opt")},
            },
        }
        _write_atomic(self.dir / "containerd.toml", tomli_w.dumps(config))

    def _write_registry_hosts(self) -> Path:
        certs = self.dir / "certs.d"
        hosts = {
            "server": _NO_REGISTRY,
            "host": {_NO_REGISTRY: {"capabilities": ["pull", "resolve"]}},
        }
        _write_atomic(certs / "_default" / "hosts.toml", tomli_w.dumps(hosts))
        return certs

    def _containerd_spec(self) -> ProcessSpec:
        return ProcessSpec(
            "containerd", ["containerd", "--config", str(self.dir / "containerd.toml")]
        )

    def _containerd_ready(self) -> bool:
        if not self.containerd_address.exists():
            return False
        return (
            _run(
                ["ctr", "--address", str(self.containerd_address), "version"],
                check=False,
                timeout=10,
            ).returncode
            == 0
        )

    def _clear_runtime_state(self) -> None:
        """Unmount and forget what dead containers left (netns, rootfs mounts, IP leases)."""
        _unmount_under(self.dir)
        for path in (self.containerd_state, self.dir / "cni" / "ipam", self.dir / "runc"):
            _remove_tree(path)

    # ----- kubelet ---------------------------------------------------------------------------

    def _write_kubelet_config(self) -> None:
        self.cluster.pki.ensure_client(self.identity)
        serving_cert, serving_key = self.cluster.pki.ensure_serving(
            f"kubelet-{self.name}",
            self.identity.user,
            ips=(self.network.address,),
            dns_names=(self.name,),
        )
        self.cluster.pki.write_kubeconfig(
            self.kubeconfig, self.identity, self.cluster.server, self.cluster.name
        )
        # No cluster DNS, and the machine's resolver must never be asked from a pod: an empty
        # resolv.conf gives pods no nameserver at all.
        (self.dir / "resolv.conf").write_text("# goodput real node: no DNS for pods\n")
        config = self.kubelet_config(serving_cert, serving_key)
        _write_atomic(self.dir / "kubelet.yaml", yaml.safe_dump(config, sort_keys=False))

    def kubelet_config(self, serving_cert: Path, serving_key: Path) -> dict[str, Any]:
        """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of this node."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.network.address,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_address}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            # This host has cgroup v1 (hybrid); kubelet 1.35+ refuses it unless told otherwise.
            "failCgroupV1": False,
            "failSwapOn": False,
            "resolvConf": str(self.dir / "resolv.conf"),
            "clusterDomain": "cluster.local",
            "maxPods": 32,
            # Images come from local archives, never a registry: garbage collection would lose
            # them for good, and the shared disk's fill level is not the node's to judge.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "containerLogMaxSize": "10Mi",
            "containerLogMaxFiles": 3,
            "podPidsLimit": 4096,
        }

    def _kubelet_spec(self) -> ProcessSpec:
        labels = ",".join(f"{k}={v}" for k, v in self.spec.node_labels().items())
        return ProcessSpec(
            "kubelet",
            [
                str(self.kubelet_binary),
                f"--config={self.dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.network.address}",
                f"--node-labels={labels}",
                f"--register-with-taints={REAL_NODE_TAINT}",
                "--v=1",
            ],
        )

    def _bind_rbac(self) -> None:
        """The dev API server authorizes by RBAC alone: bind the node's user to ``system:node``
        and the API server's kubelet client to ``system:kubelet-api-admin``."""
        bindings = [
            (f"goodput:node:{self.name}", "system:node", self.identity.user),
            ("goodput:kube-apiserver-kubelet", "system:kubelet-api-admin", pki.KUBELET_CLIENT.user),
        ]
        docs = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            }
            for name, role, user in bindings
        ]
        self.cluster.kubectl(
            "apply", "--server-side", "--field-manager=goodput-dev", "-f", "-",
            stdin=yaml.safe_dump_all(docs),
        )  # fmt: skip

    def _node(self) -> dict[str, Any] | None:
        out = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        return json.loads(out) if out.strip() else None

    def _registered(self) -> bool:
        return self._node() is not None

    def _ready(self) -> bool:
        node = self._node()
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        allocatable = node.get("status", {}).get("allocatable", {})
        return ready and allocatable.get(GPU_RESOURCE) == str(self.spec.gpus)

    def _advertise(self) -> None:
        """The fictional GPUs: capacity and allocatable on the status subresource (no device
        plugin; the kubelet keeps them across its own restarts)."""
        key = GPU_RESOURCE.replace("/", "~1")
        count = str(self.spec.gpus)
        patch = [
            {"op": "add", "path": f"/status/capacity/{key}", "value": count},
            {"op": "add", "path": f"/status/allocatable/{key}", "value": count},
        ]
        self.cluster.kubectl(
            "patch", "node", self.name, "--subresource=status", "--type=json",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def _wait(self, name: str, probe: Callable[[], bool], timeout: float) -> None:
        self.cluster.supervisor.await_healthy(name, probe, timeout, NodeError)


# ----- host helpers ----------------------------------------------------------------------------


def _run(
    command: Sequence[str], check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _cgroup_controllers() -> list[Path]:
    """Each mounted cgroup v1 hierarchy (cpu, memory, pids, ..., the named systemd one)."""
    return [p for p in sorted(CGROUP_FS.iterdir()) if p.is_dir() and not p.is_symlink()]


def _make_cgroup(hierarchy: Path, root: str) -> None:
    path = hierarchy / root.lstrip("/")
    path.mkdir(exist_ok=True)
    if (path / "cpuset.cpus").exists():
        # A new cpuset admits no task until it has CPUs and memory nodes: inherit the parent's.
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (path / name).read_text().strip():
                (path / name).write_text((hierarchy / name).read_text())


def _cgroup_pids(root: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in _cgroup_controllers():
        base = hierarchy / root.lstrip("/")
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            try:
                pids.update(int(line) for line in procs.read_text().split())
            except OSError:
                continue
    return pids


def _kill_cgroup_tree(root: str, timeout: float = 10) -> None:
    """SIGKILL every process in the node's cgroups (its containers), until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := _cgroup_pids(root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _remove_cgroups(root: str) -> None:
    for hierarchy in _cgroup_controllers():
        base = hierarchy / root.lstrip("/")
        if not base.is_dir():
            continue
        for path in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir(path)
        _rmdir(base)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _kill_shims(address: Path) -> None:
    """containerd's runc shims outlive containerd by design; ours go with the node."""
    for pid, argv in command_lines():
        if argv and argv[0].endswith("containerd-shim-runc-v2") and str(address) in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + os.sep
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point.startswith(prefix):
            found.append(mount_point)
    return found


def _unmount_under(directory: Path) -> None:
    """Lazily unmount everything below ``directory``, deepest first."""
    for _ in range(3):
        mounts = _mounts_under(directory)
        if not mounts:
            return
        for mount_point in sorted(mounts, key=len, reverse=True):
            _run(["umount", "-l", mount_point], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def archive_references(archive: Path) -> list[str]:
    """The image references an OCI archive carries (its index's ``ref.name`` annotations)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise KeyError(f"{archive} has no index.json")
        index = json.load(member)
    return [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in index.get("manifests", [])
        if "org.opencontainers.image.ref.name" in (m.get("annotations") or {})
    ]
