"""The real node's configuration, checked without starting it: what each setting is there for
(docs/dev-cluster.md, ../shared/docs/real-node-facts.md) is asserted here, so a refactor cannot
drop one silently. The node itself runs in tests/e2e/test_real_node.py."""

from __future__ import annotations

import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from goodput.dev import pki
from goodput.dev.cluster import ClusterPorts, LocalCluster
from goodput.dev.fleet import GPU_RESOURCE, REAL_NODE_LABEL, REAL_NODE_TAINT, Fleet
from goodput.dev.node import LocalNode, NodeNetwork, archive_references


@pytest.fixture
def node(tmp_path: Path) -> LocalNode:
    spec = Fleet.load("default").real_node
    assert spec is not None
    return LocalCluster("unit-real-node", state_root=tmp_path).real_node(spec)


def test_each_cluster_gets_its_own_bridge_and_private_subnet() -> None:
    networks = [NodeNetwork(ClusterPorts.for_name(n).index) for n in ("goodput-dev", "goodput-t")]
    assert networks[0].bridge != networks[1].bridge
    assert not networks[0].subnet.overlaps(networks[1].subnet)
    for network in networks:
        assert len(network.bridge) <= 15, "Linux interface names"
        assert network.subnet.is_private and network.subnet.prefixlen == 24
        assert ipaddress.ip_address(network.address) == next(network.subnet.hosts())


def test_containerd_runs_privately_without_a_registry(node: LocalNode) -> None:
    node._write_containerd_config()
    config = tomllib.loads((node.dir / "containerd.toml").read_text())
    for path in (config["root"], config["state"], config["grpc"]["address"]):
        assert path.startswith(str(node.dir)), path
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
    assert cri["restrict_oom_score_adj"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["sandbox_image"].endswith("/pause:3.10")
    hosts = tomllib.loads(
        (Path(cri["registry"]["config_path"]) / "_default" / "hosts.toml").read_text()
    )
    assert ipaddress.ip_address(hosts["server"].split("//")[1].split(":")[0]).is_loopback
    conflist = json.loads((Path(cri["cni"]["conf_dir"]) / "10-goodput.conflist").read_text())
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == node.network.bridge and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": str(node.network.subnet)}]]


def test_the_kubelet_is_locked_down_and_fits_this_host(node: LocalNode, tmp_path: Path) -> None:
    config = node.kubelet_config(tmp_path / "c.crt", tmp_path / "c.key")
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/goodput-unit-real-node"
    assert config["address"] == node.network.address
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["imageGCHighThresholdPercent"] == 100, "local images cannot be pulled back"
    assert config["containerRuntimeEndpoint"] == f"unix://{node.containerd_address}"
    argv = node._kubelet_spec().argv
    assert f"--register-with-taints={REAL_NODE_TAINT}" in argv
    assert f"--node-ip={node.network.address}" in argv
    labels = dict(
        item.split("=", 1)
        for item in next(a for a in argv if a.startswith("--node-labels="))
        .split("=", 1)[1]
        .split(",")
    )
    assert labels["nvidia.com/gpu.product"] == node.spec.gpu.product
    assert labels[REAL_NODE_LABEL] == "true"


def test_dry_runs_see_the_real_node_as_registered() -> None:
    fleet = Fleet.load("default")
    assert fleet.real_node is not None
    nodes = {n["metadata"]["name"]: n for n in fleet.all_nodes()}
    real = nodes[fleet.real_node.name]
    assert real["status"]["allocatable"][GPU_RESOURCE] == str(fleet.real_node.gpus)
    assert real["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert fleet.real_node.name not in {n["metadata"]["name"] for n in fleet.nodes()}, (
        "kwok must never be given the real node"
    )


def test_serving_certificates_name_the_addresses_they_serve(tmp_path: Path) -> None:
    certs = pki.ClusterPKI(tmp_path / "pki", server_ips=("172.20.0.1",))
    certs.ensure()
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "172.20.0.1"} <= ips
    first, _ = certs.ensure_serving("kubelet-x", "system:node:x", ips=("172.20.0.1",))
    before = first.read_bytes()
    again, _ = certs.ensure_serving("kubelet-x", "system:node:x", ips=("172.20.0.1",))
    assert again.read_bytes() == before, "a valid certificate is kept"
    certs.ensure_serving("kubelet-x", "system:node:x", ips=("172.20.1.1",))
    assert first.read_bytes() != before, "a new address re-issues it"


def _oci_archive(path: Path, refs: list[str]) -> Path:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": f"sha256:{i:064x}", "annotations": {"org.opencontainers.image.ref.name": r}}
            for i, r in enumerate(refs)
        ],
    }
    data = json.dumps(index).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_an_imported_image_the_kubelet_collected_is_imported_again(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _oci_archive(tmp_path / "pause.oci.tar", ["ghcr.io/goodput-dev/pause:3.10"])
    assert archive_references(archive) == ["ghcr.io/goodput-dev/pause:3.10"]
    imports: list[Path] = []
    monkeypatch.setattr("goodput.dev.node.import_into_containerd", lambda a, *_: imports.append(a))
    present = ["ghcr.io/goodput-dev/pause:3.10"]
    monkeypatch.setattr(LocalNode, "images", lambda self: present)
    node.import_image(archive)
    node.import_image(archive)
    assert imports == [archive], "imported once while it is there"
    present.clear()  # garbage-collected under disk pressure
    node.import_image(archive)
    assert imports == [archive, archive], "the marker alone does not stand for the image"
