"""Starting and stopping is idempotent and survives whatever a crashed run leaves behind.

These tests stop and kill processes, so they use their own cluster (own ports and state), never
the shared ``goodput-test`` one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from goodput.dev.cluster import COMPONENTS, LocalCluster, checkout_cluster_name
from goodput.dev.fleet import Fleet
from goodput.dev.processes import port_free

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

TINY = Fleet.model_validate(
    {
        "name": "tiny",
        "region": "local-1",
        "pools": [
            {
                "name": "l4",
                "gpu": {
                    "product": "NVIDIA-L4",
                    "memoryMiB": 23034,
                    "family": "ada-lovelace",
                    "computeCapability": "8.9",
                },
                "gpusPerNode": 4,
                "interconnect": "pcie",
                "count": 2,
                "zones": ["local-1a"],
                "nodesPerRack": 2,
                "instanceType": "sim.l4.4x",
                "cpu": 48,
                "memoryGiB": 192,
            }
        ],
    }
)


@pytest.fixture(scope="module")
def lifecycle() -> Iterator[LocalCluster]:
    cluster = LocalCluster(checkout_cluster_name("goodput-lifecycle"))
    try:
        yield cluster
    finally:
        cluster.down(purge=True)


def pids(cluster: LocalCluster) -> dict[str, int]:
    return {r.name: r.pid for r in cluster.supervisor.records()}


def assert_nothing_left(cluster: LocalCluster) -> None:
    assert cluster.supervisor.records() == []
    assert cluster.supervisor.strays() == []
    assert all(port_free(port) for port in cluster.ports.all())


def test_up_twice_is_idempotent(lifecycle: LocalCluster) -> None:
    lifecycle.up(fleet=TINY)
    first = pids(lifecycle)
    assert set(first) == set(COMPONENTS)
    lifecycle.up(fleet=TINY)
    assert pids(lifecycle) == first
    assert lifecycle.status().ready_nodes == TINY.node_count


def test_down_stops_everything_and_frees_the_ports(lifecycle: LocalCluster) -> None:
    lifecycle.up(fleet=TINY)
    lifecycle.down()
    assert_nothing_left(lifecycle)
    lifecycle.down()  # stopping a stopped cluster is a no-op
    assert_nothing_left(lifecycle)


def test_killed_etcd_and_apiserver_do_not_break_the_next_up(lifecycle: LocalCluster) -> None:
    lifecycle.up(fleet=TINY)
    for name in ("etcd", "kube-apiserver"):
        os.kill(pids(lifecycle)[name], signal.SIGKILL)
    lifecycle.up(fleet=TINY)
    assert lifecycle.status().ready
    assert lifecycle.status().ready_nodes == TINY.node_count


def test_processes_whose_pidfiles_were_lost_are_cleaned_up(lifecycle: LocalCluster) -> None:
    lifecycle.up(fleet=TINY)
    orphans = set(pids(lifecycle).values())
    # A crash mid-start can leave processes holding the ports without pidfiles; and a hung
    # (SIGSTOPped) apiserver makes the cluster unhealthy.
    os.kill(pids(lifecycle)["kube-apiserver"], signal.SIGSTOP)
    for pidfile in lifecycle.supervisor.run_dir.glob("*.pid"):
        pidfile.unlink()
    assert set(lifecycle.supervisor.strays()) == orphans
    started = time.monotonic()
    lifecycle.up(fleet=TINY)
    assert not orphans & set(pids(lifecycle).values())
    assert lifecycle.status().ready
    assert time.monotonic() - started < 120
