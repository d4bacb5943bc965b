"""A real local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok.

Everything listens on 127.0.0.1 at ports fixed per cluster name, so the dev cluster and the test
cluster coexist. State (PKI, etcd data, kubeconfigs, pidfiles, logs) lives in
``~/.cache/goodput/clusters/<name>/``. ``up()`` reuses a healthy cluster started by an identical
configuration and otherwise clears whatever a crashed run left behind before starting afresh;
``down()`` stops every process of the cluster, including ones whose pidfiles were lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from goodput.dev import pki
from goodput.dev.binaries import BinaryCache, go_environment
from goodput.dev.fleet import (
    KWOK_ANNOTATION,
    KWOK_ANNOTATION_VALUE,
    Fleet,
    FleetApplier,
    RealNode,
    list_fleet_nodes,
    node_ready,
)
from goodput.dev.images import node_images
from goodput.dev.node import LocalNode, NodeNetwork
from goodput.dev.paths import cache_root, repo_root
from goodput.dev.processes import (
    ProcessSpec,
    Supervisor,
    port_free,
    port_owner,
    process_alive,
    start_ticks,
)

Progress = Callable[[str], None]

# Ports below the Linux ephemeral range (32768+), one block of ten per cluster name. A name's
# block is derived from the name; if another program holds it, the next free block is taken and
# recorded in the state dir, so the name keeps its ports from then on.
_PORT_BASE = 21000
_PORT_BLOCKS = 1100
_PORT_BLOCK_SIZE = 10
_KWOK_CONFIG = Path(__file__).parent / "kwok" / "config.yaml"
# Kubernetes' internal (service) network and kwok's fictional pod network; never routed.
_POD_CIDR = "10.244.0.0/16"
_NODE_LEASE_SECONDS = 120
# Control-plane components in start order; `down()` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The cluster could not be started or is not healthy; the message says where to look."""


@dataclass(frozen=True)
class ClusterPorts:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    operator_metrics: int
    kubelet: int
    kubelet_healthz: int

    @classmethod
    def block(cls, index: int) -> ClusterPorts:
        base = _PORT_BASE + (index % _PORT_BLOCKS) * _PORT_BLOCK_SIZE
        return cls(*range(base, base + 9))

    @classmethod
    def for_name(cls, name: str) -> ClusterPorts:
        """The block a name prefers: the same cluster comes back on the same ports."""
        return cls.block(zlib.crc32(name.encode()))

    @property
    def index(self) -> int:
        return (self.etcd_client - _PORT_BASE) // _PORT_BLOCK_SIZE

    def all(self) -> list[int]:
        return list(asdict(self).values())


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    log: Path


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    state_dir: Path
    server: str
    kubeconfig: Path
    components: tuple[ComponentStatus, ...]
    ready: bool
    nodes: int | None
    ready_nodes: int | None

    @property
    def running(self) -> bool:
        return all(c.running for c in self.components if c.name in COMPONENTS)


class LocalCluster:
    """One named local control plane with a simulated GPU fleet."""

    def __init__(
        self,
        name: str = "goodput-dev",
        *,
        state_root: Path | None = None,
        binaries: BinaryCache | None = None,
    ) -> None:
        if not name.replace("-", "").isalnum() or name != name.lower():
            raise ValueError(f"cluster name must be lower-case alphanumerics and '-': {name!r}")
        self.name = name
        self.state_dir = (state_root or cache_root() / "clusters") / name
        self.binaries = binaries or BinaryCache()
        self.ports = self._recorded_ports() or ClusterPorts.for_name(name)
        self.supervisor = Supervisor(self.state_dir)
        self.pki = pki.ClusterPKI(self.state_dir / "pki")

    # ----- paths and clients ---------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate in ``system:masters``)."""
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """Directory with kubectl, helm, etcd, kube-*, kwok: put it on ``PATH``."""
        return self.binaries.bin_dir

    @property
    def network(self) -> NodeNetwork:
        """The private bridge of this cluster's real node (derived from its port block)."""
        return NodeNetwork(self.ports.index)

    def real_node(self, spec: RealNode) -> LocalNode:
        """This cluster's real node as ``spec`` describes it (started by ``up``)."""
        return LocalNode(
            self,
            spec,
            self.network,
            kubelet=self.binaries.path("kubelet"),
            kubelet_port=self.ports.kubelet,
            healthz_port=self.ports.kubelet_healthz,
        )

    def _component_kubeconfig(self, identity: pki.Identity) -> Path:
        return self.state_dir / "kubeconfigs" / f"{identity.file_stem}.kubeconfig"

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> str:
        """Run kubectl against this cluster and return its stdout."""
        return self._run_tool(
            "kubectl", ["--kubeconfig", str(self.kubeconfig), *args], check, timeout, stdin
        )

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """Run Helm against this cluster, with Helm's caches kept in the cluster's state dir."""
        return self._run_tool("helm", ["--kubeconfig", str(self.kubeconfig), *args], check, timeout)

    def _run_tool(
        self, tool: str, args: list[str], check: bool, timeout: float, stdin: str | None = None
    ) -> str:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.state_dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.state_dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.state_dir / "helm" / "data"),
        }
        result = subprocess.run(
            [str(self.binaries.path(tool)), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} failed (exit {result.returncode}): "
                + result.stderr.strip()
            )
        return result.stdout

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user (import kept lazy: it is slow)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = 32
        return client.ApiClient(configuration)

    # ----- lifecycle ---------------------------------------------------------------------

    def up(
        self,
        fleet: Fleet | str | None = "default",
        progress: Progress | None = None,
        real_node: bool = True,
    ) -> None:
        """Start (or reuse) the control plane, make the simulated nodes match ``fleet``, and
        start the fleet's real node (unless ``real_node`` is False)."""
        say = progress or (lambda _message: None)
        with self._lock():
            if self._reusable():
                say(f"reusing running cluster {self.name} at {self.server}")
            else:
                self._start(say)
            self._wait_for_defaults(say)
            if fleet is not None:
                loaded = Fleet.load(fleet) if isinstance(fleet, str) else fleet
                self.apply_fleet(loaded, say)
                if real_node and loaded.real_node is not None:
                    self._start_real_node(loaded.real_node, say)

    @contextmanager
    def shared(
        self, fleet: Fleet | str | None = "default", keep: bool = False
    ) -> Iterator[LocalCluster]:
        """Use the cluster for a while, alongside other processes doing the same.

        Test sessions of several checkouts may run at once on one machine and share the test
        cluster: each registers itself, and the last one to leave stops (and purges) the
        cluster unless ``keep``.
        """
        users = self.state_dir / "users"
        me = users / f"{os.getpid()}-{start_ticks(os.getpid())}"
        with self._lock():
            users.mkdir(parents=True, exist_ok=True)
            me.touch()
        try:
            self.up(fleet=fleet)
            yield self
        finally:
            with self._lock():
                me.unlink(missing_ok=True)
                others = [u for u in users.iterdir() if _user_alive(u.name)]
            if not others and not keep:
                self.down(purge=True)

    def down(self, purge: bool = False) -> None:
        """Stop every process of this cluster; ``purge`` also deletes its state (etcd data, PKI)."""
        with self._lock():
            node = self._running_real_node()
            if node is not None:
                node.purge() if purge else node.down()
            self.supervisor.stop_all()
            (self.state_dir / "cluster.json").unlink(missing_ok=True)
            if purge:
                for child in self.state_dir.iterdir() if self.state_dir.exists() else ():
                    if child.name not in ("lock", "users"):
                        shutil.rmtree(child) if child.is_dir() else child.unlink()

    def restart(self, component: str, down_s: float = 0.0) -> None:
        """Stop one control-plane component (SIGTERM), keep it down ``down_s`` seconds, start it
        again with the same arguments and wait until it is healthy: the fault a client of the
        cluster must ride out (an API server upgrade or crash)."""
        specs = {spec.name: spec for spec in self._specs()}
        probes: dict[str, Callable[[], bool]] = {
            "etcd": lambda: _http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"),
            "kube-apiserver": self._readyz,
        }
        with self._lock():
            self.supervisor.stop(component)
            time.sleep(down_s)
            self.supervisor.start(specs[component])
            self._wait(
                component, probes.get(component, lambda: self.supervisor.alive(component)), 120
            )

    def _start_real_node(self, spec: RealNode, say: Progress) -> None:
        node = self.real_node(spec)
        node.dir.mkdir(parents=True, exist_ok=True)
        (node.dir / "spec.json").write_text(spec.model_dump_json(by_alias=True))
        node.up(images=node_images(say), say=say)

    def _running_real_node(self) -> LocalNode | None:
        """The real node this cluster last started, if any (its spec is kept in its state)."""
        try:
            text = (self.state_dir / "node" / "spec.json").read_text()
        except OSError:
            return None
        return self.real_node(RealNode.model_validate_json(text))

    def status(self) -> ClusterStatus:
        components = tuple(
            ComponentStatus(
                name=name,
                running=self.supervisor.alive(name),
                pid=(record.pid if (record := self.supervisor.record(name)) else None),
                log=self.supervisor.log(name),
            )
            # The control plane, then whatever else runs beside it (the operator of `dev up`).
            for name in dict.fromkeys([*COMPONENTS, *(r.name for r in self.supervisor.records())])
        )
        ready = all(c.running for c in components if c.name in COMPONENTS) and self._readyz()
        nodes = ready_nodes = None
        if ready:
            try:
                items = json.loads(self.kubectl("get", "nodes", "-o", "json", timeout=30))["items"]
            except (ClusterError, subprocess.TimeoutExpired, ValueError):
                items = None
            if items is not None:
                nodes = len(items)
                ready_nodes = sum(1 for node in items if node_ready(node))
        return ClusterStatus(
            self.name,
            self.state_dir,
            self.server,
            self.kubeconfig,
            components,
            ready,
            nodes,
            ready_nodes,
        )

    def apply_fleet(
        self, fleet: Fleet, progress: Progress | None = None, timeout: float | None = None
    ) -> None:
        """Create/replace/delete simulated nodes to match ``fleet``; wait until all are Ready."""
        say = progress or (lambda _message: None)
        if timeout is None:  # kwok readies a few dozen nodes a second on two busy cores
            timeout = 120 + 0.25 * fleet.node_count
        from kubernetes import client

        api = self.api_client()
        try:
            core = client.CoreV1Api(api)
            say(f"applying fleet {fleet.name}: {fleet.node_count} nodes, {fleet.gpu_count} GPUs")
            started = time.monotonic()
            counts = FleetApplier(core).apply(fleet)
            say(
                f"nodes: {counts['created']} created, {counts['deleted']} deleted, "
                f"{counts['unchanged']} unchanged ({time.monotonic() - started:.1f}s)"
            )
            self._wait_nodes_ready(core, fleet.node_count, timeout, say)
        finally:
            api.close()

    # ----- internals ---------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down across processes (two test sessions may share the test cluster)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _specs(self) -> list[ProcessSpec]:
        state = self.state_dir
        p = self.ports
        b = self.binaries.path
        loopback = "127.0.0.1"
        etcd = ProcessSpec(
            "etcd",
            [
                str(b("etcd")),
                f"--name={self.name}",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls=http://{loopback}:{p.etcd_client}",
                f"--advertise-client-urls=http://{loopback}:{p.etcd_client}",
                f"--listen-peer-urls=http://{loopback}:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://{loopback}:{p.etcd_peer}",
                f"--initial-cluster={self.name}=http://{loopback}:{p.etcd_peer}",
                "--initial-cluster-state=new",
                # A dev cluster trades durability for speed: no fsync per write.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        apiserver = ProcessSpec(
            "kube-apiserver",
            [
                str(b("kube-apiserver")),
                f"--etcd-servers=http://{loopback}:{p.etcd_client}",
                # All addresses: loopback for us, the real node's bridge for its pods (their
                # in-cluster clients are pointed there; docs/dev-cluster.md).
                "--bind-address=0.0.0.0",
                f"--advertise-address={loopback}",
                f"--secure-port={p.apiserver}",
                f"--cert-dir={state / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.server_cert}",
                f"--tls-private-key-file={self.pki.server_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--service-account-key-file={self.pki.service_account_public_key}",
                f"--service-account-signing-key-file={self.pki.service_account_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # Kubelets are dialled by IP, never by a name looked up in the machine's DNS.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={self.pki.client_cert(pki.KUBELET_CLIENT)}",
                f"--kubelet-client-key={self.pki.client_key(pki.KUBELET_CLIENT)}",
                f"--kubelet-certificate-authority={self.pki.ca_cert}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        controller_manager = ProcessSpec(
            "kube-controller-manager",
            [
                str(b("kube-controller-manager")),
                *self._component_auth(pki.CONTROLLER_MANAGER),
                f"--bind-address={loopback}",
                f"--secure-port={p.controller_manager}",
                f"--cert-dir={state / 'kube-controller-manager-certs'}",
                f"--service-account-private-key-file={self.pki.service_account_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                f"--cluster-signing-cert-file={self.pki.ca_cert}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
                f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--concurrent-gc-syncs=10",
                f"--node-monitor-grace-period={_NODE_LEASE_SECONDS + 60}s",
                # Client rate limits sized for thousands of nodes (defaults: 20/30).
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
                "--v=1",
            ],
        )
        scheduler = ProcessSpec(
            "kube-scheduler",
            [
                str(b("kube-scheduler")),
                *self._component_auth(pki.SCHEDULER),
                f"--bind-address={loopback}",
                f"--secure-port={p.scheduler}",
                f"--cert-dir={state / 'kube-scheduler-certs'}",
                "--leader-elect=false",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
                "--v=1",
            ],
        )
        kwok = ProcessSpec(
            "kwok",
            [
                str(b("kwok")),
                f"--kubeconfig={self._component_kubeconfig(pki.KWOK)}",
                f"--config={state / 'kwok' / 'config.yaml'}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
                f"--server-address={loopback}:{p.kwok}",
                f"--node-ip={loopback}",
                f"--cidr={_POD_CIDR}",
                # Leases are the simulated kubelets' heartbeat: renewed every duration/4. 120 s
                # keeps a 2,560-node fleet at ~85 writes/s instead of ~256 with the kubelet's 40 s.
                f"--node-lease-duration-seconds={_NODE_LEASE_SECONDS}",
            ],
            # kwok also reads ~/.kwok/kwok.yaml when present; a private HOME keeps it hermetic.
            env={"HOME": str(state / "kwok" / "home")},
        )
        return [etcd, apiserver, controller_manager, scheduler, kwok]

    def _component_auth(self, identity: pki.Identity) -> list[str]:
        kubeconfig = self._component_kubeconfig(identity)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]

    def _fingerprint(self) -> str:
        """Identifies the configuration: a running cluster is reused only if it matches."""
        parts = [json.dumps([list(s.argv) for s in self._specs()])]
        parts += [c.key for c in self.binaries.components]
        parts.append(_KWOK_CONFIG.read_text())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _reusable(self) -> bool:
        try:
            recorded = json.loads((self.state_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return False
        if recorded.get("fingerprint") != self._fingerprint():
            return False
        return all(self.supervisor.alive(name) for name in COMPONENTS) and self._readyz()

    def _start(self, say: Progress) -> None:
        say(f"starting cluster {self.name} (state in {self.state_dir})")
        self.supervisor.stop_all()
        (self.state_dir / "cluster.json").unlink(missing_ok=True)
        self._claim_ports(say)
        missing = self.binaries.missing()
        if missing:
            say(
                "building "
                + ", ".join(f"{c.name} {c.version}" for c in missing)
                + " from Go modules (first run only; see docs/dev-cluster.md)"
            )
        self.binaries.ensure(progress=say)
        self._write_config()
        specs = {spec.name: spec for spec in self._specs()}
        started = time.monotonic()

        self.supervisor.start(specs["etcd"])
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"))
        self.supervisor.start(specs["kube-apiserver"])
        self._wait("kube-apiserver", self._readyz, timeout=120)
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self.supervisor.start(specs[name])
        self._wait(
            "kube-controller-manager",
            lambda: _https_ok(f"https://127.0.0.1:{self.ports.controller_manager}/healthz"),
        )
        self._wait(
            "kube-scheduler", lambda: _https_ok(f"https://127.0.0.1:{self.ports.scheduler}/healthz")
        )
        self._wait("kwok", lambda: _http_ok(f"http://127.0.0.1:{self.ports.kwok}/healthz"))
        record = {"fingerprint": self._fingerprint(), "ports": asdict(self.ports)}
        (self.state_dir / "cluster.json").write_text(json.dumps(record, indent=2))
        say(f"control plane up in {time.monotonic() - started:.1f}s at {self.server}")

    @property
    def _ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    def _recorded_ports(self) -> ClusterPorts | None:
        try:
            return ClusterPorts(**json.loads(self._ports_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _claim_ports(self, say: Progress, settle: float = 15) -> None:
        """Keep our ports if free, else move to the next free block (and remember it)."""
        # Sockets of just-killed processes can hold a port for a moment while they close.
        deadline = time.monotonic() + settle
        busy = [port for port in self.ports.all() if not port_free(port)]
        while busy and time.monotonic() < deadline:
            time.sleep(0.5)
            busy = [port for port in busy if not port_free(port)]
        if busy:
            owners = ", ".join(f"{port}: {port_owner(port)}" for port in busy)
            candidates = (ClusterPorts.block(self.ports.index + step) for step in range(1, 100))
            free = next((c for c in candidates if all(port_free(p) for p in c.all())), None)
            if free is None:
                raise ClusterError(f"ports of cluster {self.name} are taken ({owners})")
            say(f"ports of {self.name} are taken ({owners}); using {free.etcd_client}+")
            self.ports = free
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ports_file.write_text(json.dumps(asdict(self.ports)))

    def _write_config(self) -> None:
        self.pki.server_ips = (self.network.address,)
        self.pki.ensure()
        self.pki.write_kubeconfig(self.kubeconfig, pki.ADMIN, self.server, self.name)
        for identity in (pki.CONTROLLER_MANAGER, pki.SCHEDULER, pki.KWOK):
            self.pki.write_kubeconfig(
                self._component_kubeconfig(identity), identity, self.server, self.name
            )
        kwok_dir = self.state_dir / "kwok"
        (kwok_dir / "home").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_KWOK_CONFIG, kwok_dir / "config.yaml")

    def _wait(self, name: str, probe: Callable[[], bool], timeout: float = 60) -> None:
        self.supervisor.await_healthy(name, probe, timeout, ClusterError)

    def _log_tail(self, name: str, lines: int = 25) -> str:
        return self.supervisor.tail(name, lines)

    def _readyz(self) -> bool:
        if not self.pki.client_cert(pki.ADMIN).exists():
            return False
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(
            str(self.pki.client_cert(pki.ADMIN)), str(self.pki.client_key(pki.ADMIN))
        )
        try:
            response = httpx.get(f"{self.server}/readyz", verify=context, timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _wait_for_defaults(self, say: Progress, timeout: float = 90) -> None:
        """Pods can only be created once the `default` ServiceAccount exists (admission)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            if result.strip():
                return
            time.sleep(0.5)
        raise ClusterError(
            "the default ServiceAccount did not appear (is kube-controller-manager healthy?):\n"
            + self._log_tail("kube-controller-manager")
        )

    def _wait_nodes_ready(self, core: Any, expected: int, timeout: float, say: Progress) -> None:
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            nodes = list_fleet_nodes(core)
            ready = sum(1 for node in nodes if node_ready(node))
            if ready >= expected and len(nodes) == expected:
                say(f"{ready}/{expected} simulated nodes Ready")
                return
            time.sleep(1)
        raise ClusterError(
            f"only {ready}/{expected} simulated nodes became Ready in {timeout:.0f}s:\n"
            + self._log_tail("kwok")
        )


def _user_alive(entry: str) -> bool:
    pid, _, ticks = entry.partition("-")
    return pid.isdigit() and ticks.lstrip("-").isdigit() and process_alive(int(pid), int(ticks))


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _https_ok(url: str) -> bool:
    # Controller-manager and scheduler serve /healthz unauthenticated with a self-signed
    # certificate generated at start; the probe only asks "is it up" on loopback.
    try:
        return httpx.get(url, timeout=2, verify=False).status_code == 200
    except httpx.HTTPError:
        return False


def tool_environment(cluster: LocalCluster) -> dict[str, str]:
    """Environment for running kubectl/helm by hand against ``cluster``."""
    env = go_environment()
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env["PATH"] = os.pathsep.join([str(cluster.bin_dir), env["PATH"]])
    return env


def checkout_cluster_name(prefix: str) -> str:
    """``<prefix>-<hash of this checkout's path>``: one cluster per checkout.

    Test sessions of different checkouts run different code (a different configuration would
    restart a shared cluster under the other session's feet) and would compete for its GPUs.
    """
    digest = hashlib.sha256(str(repo_root()).encode()).hexdigest()[:6]
    return f"{prefix}-{digest}"
