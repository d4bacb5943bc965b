"""Shared fixtures. Component-specific fixtures live in each tier's own conftest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A running local control plane (``goodput-test``) with the default simulated GPU fleet.

    Real etcd, kube-apiserver, kube-controller-manager, kube-scheduler; kwok plays the kubelets.
    Binaries are built on first use (cached in ~/.cache/goodput). Sessions running at the same
    time share the cluster; the last one out stops it unless ``GOODPUT_KEEP_CLUSTER=1``.
    """
    from goodput.dev.cluster import LocalCluster

    keep = os.environ.get("GOODPUT_KEEP_CLUSTER") == "1"
    with LocalCluster(name="goodput-test").shared(fleet="default", keep=keep) as started:
        yield started
