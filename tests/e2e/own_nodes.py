"""Simulated GPU nodes a test creates for itself, beside the shared dev fleet."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster


@contextmanager
def own_nodes(cluster: LocalCluster, pool: dict[str, Any], prefix: str) -> Iterator[list[str]]:
    """``pool["count"]`` nodes of the fleet-file ``pool``, one rack and interconnect domain
    each, over its zones in turn; with the dev fleet's labels and kwok annotation but without
    ``goodput.dev/fleet`` (``goodput dev`` reconciling its fleet leaves them alone). A test may
    delete or fill them without disturbing the shared fleet; they are deleted afterwards."""
    from goodput.dev.fleet import FLEET_LABEL, POOL_LABEL, Fleet, NodePool, node_manifest

    fleet, spec = Fleet.load("default"), NodePool.model_validate(pool)
    tag = uuid.uuid4().hex[:5]
    names = []
    for i in range(spec.count):
        name, zone = f"{prefix}-{tag}-{spec.name}-{i}", spec.zones[i % len(spec.zones)]
        node = node_manifest(fleet, spec, name=name, zone=zone, rack=f"{zone}-{name}", domain=name)
        for label in (FLEET_LABEL, POOL_LABEL):
            node["metadata"]["labels"].pop(label)
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(node))
        names.append(name)
    try:
        for name in names:
            cluster.kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")
        yield names
    finally:
        cluster.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false", check=False)
