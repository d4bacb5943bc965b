"""Fleet files expand into the Node objects placement will see (no binaries needed)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from pydantic import ValidationError

from goodput.dev.fleet import (
    FLEETS_DIR,
    INTERCONNECT_DOMAIN_LABEL,
    INTERCONNECT_LABEL,
    KWOK_ANNOTATION,
    RACK_LABEL,
    ZONE_LABEL,
    Fleet,
)

POOL: dict[str, Any] = {
    "name": "gb",
    "gpu": {"product": "P", "memoryMiB": 1000, "family": "f", "computeCapability": "9.0"},
    "gpusPerNode": 4,
    "interconnect": "nvswitch",
    "count": 10,
    "zones": ["z1", "z2"],
    "nodesPerRack": 4,
    "nvlinkDomainNodes": 2,
    "instanceType": "t",
    "cpu": 64,
    "memoryGiB": 512,
}


def fleet_with(**overrides: Any) -> Fleet:
    return Fleet.model_validate({"name": "f", "region": "r", "pools": [{**POOL, **overrides}]})


@pytest.mark.parametrize("path", sorted(FLEETS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_fleets_are_valid_with_unique_names(path: Any) -> None:
    fleet = Fleet.load(path)
    names = [n["metadata"]["name"] for n in fleet.nodes()]
    assert len(names) == len(set(names)) == fleet.node_count > 0


def test_large_fleet_has_thousands_of_nodes() -> None:
    fleet = Fleet.load("large")
    assert fleet.node_count >= 2000
    assert fleet.gpu_count == sum(p.count * p.gpus_per_node for p in fleet.pools)


def test_h100_node_labels_and_capacity_follow_gpu_feature_discovery() -> None:
    node = next(n for n in Fleet.load("default").nodes() if n["metadata"]["name"] == "h100-0000")
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels[INTERCONNECT_LABEL] == "nvswitch"
    assert labels["topology.kubernetes.io/region"] == "local-1"
    assert node["metadata"]["annotations"][KWOK_ANNOTATION] == "fake"
    status = node["status"]
    assert status["capacity"]["nvidia.com/gpu"] == status["allocatable"]["nvidia.com/gpu"] == "8"
    assert status["capacity"]["cpu"] == "192"
    assert status["allocatable"]["cpu"] == "190"  # 2 cores reserved for the system
    assert status["allocatable"]["memory"] == "2032Gi"


def test_nodes_spread_evenly_over_zones_and_racks_stay_in_one_zone() -> None:
    nodes = fleet_with(count=10, nvlinkDomainNodes=1).nodes()
    zones = Counter(n["metadata"]["labels"][ZONE_LABEL] for n in nodes)
    assert zones == {"z1": 5, "z2": 5}
    rack_zones: dict[str, set[str]] = defaultdict(set)
    rack_sizes: Counter[str] = Counter()
    for n in nodes:
        labels = n["metadata"]["labels"]
        rack_zones[labels[RACK_LABEL]].add(labels[ZONE_LABEL])
        rack_sizes[labels[RACK_LABEL]] += 1
    assert all(len(z) == 1 for z in rack_zones.values())
    assert max(rack_sizes.values()) == 4


def test_multi_node_nvlink_domains_group_consecutive_nodes_within_a_rack() -> None:
    nodes = fleet_with(count=8, zones=["z1"]).nodes()
    domains: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        labels = n["metadata"]["labels"]
        domains[labels[INTERCONNECT_DOMAIN_LABEL]].append(labels[RACK_LABEL])
    assert len(domains) == 4
    for racks in domains.values():
        assert len(racks) == 2 and len(set(racks)) == 1


def test_single_node_domain_is_the_node_itself() -> None:
    for node in fleet_with(nvlinkDomainNodes=1).nodes():
        labels = node["metadata"]["labels"]
        assert labels[INTERCONNECT_DOMAIN_LABEL] == node["metadata"]["name"]


def test_uneven_counts_put_the_remainder_in_the_first_zones() -> None:
    nodes = fleet_with(count=5, zones=["a", "b", "c"], nvlinkDomainNodes=1).nodes()
    assert Counter(n["metadata"]["labels"][ZONE_LABEL] for n in nodes) == {"a": 2, "b": 2, "c": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"interconnect": "pcie", "nvlinkDomainNodes": 2}, "PCIe"),
        ({"nodesPerRack": 3, "nvlinkDomainNodes": 2}, "straddle racks"),
        ({"reservedCPU": 64}, "reservations exceed"),
        ({"interconnect": "infiniband"}, "interconnect"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_invalid_pools_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        fleet_with(**overrides)


def test_duplicate_pool_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Fleet.model_validate({"name": "f", "region": "r", "pools": [POOL, POOL]})


def test_spec_hash_changes_with_the_spec() -> None:
    def digest(fleet: Fleet) -> str:
        return str(fleet.nodes()[0]["metadata"]["annotations"]["goodput.dev/node-spec-hash"])

    assert digest(fleet_with()) == digest(fleet_with())
    assert digest(fleet_with()) != digest(fleet_with(cpu=96))
