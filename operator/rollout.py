"""Which replica Deployments may take a new pod template now.

Every replica is its own Deployment, so a spec change that alters the pod template (engine
arguments, gateway config) would otherwise restart all replicas at once: the deployment would
serve nothing while the new pods load the model. ``OneServingReplicaAtATime`` rolls serving
replicas one after another instead; the reconciler applies the admitted Deployments, holds the
rest back, and converges again when a replica Deployment changes until none is held.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from goodput.operator.naming import ANNOTATION_NODE
from goodput.operator.status import WorkloadState

#: On each replica Deployment: a hash of the pod template without the replica's own id and node,
#: so replicas on the current spec share it whatever node they run on.
ANNOTATION_POD_SPEC = "goodput.dev/pod-spec-hash"


def pod_spec_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def _annotation(dep: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((dep or {}).get("metadata") or {}).get("annotations", {}).get(key)
    return None if value is None else str(value)


@dataclass(frozen=True)
class ReplicaUpdate:
    """One replica's Deployment as desired, and as it is now (None: not created yet)."""

    replica: int
    desired: Mapping[str, Any]
    current: Mapping[str, Any] | None

    @property
    def new_template(self) -> bool:
        """Whether applying it changes the pod's spec (not merely its node)."""
        return self.current is not None and _annotation(
            self.current, ANNOTATION_POD_SPEC
        ) != _annotation(self.desired, ANNOTATION_POD_SPEC)

    @property
    def moving(self) -> bool:
        return _annotation(self.current, ANNOTATION_NODE) != _annotation(
            self.desired, ANNOTATION_NODE
        )

    @property
    def serving(self) -> bool:
        """Its Deployment has observed its spec and its one pod is up to date and ready."""
        w = WorkloadState.of(self.current)
        return w.exists and w.current and w.ready >= 1 and w.updated >= 1 and w.replicas == 1


class RolloutGate(Protocol):
    """Judges which replica Deployments are applied now; the rest wait for a later converge."""

    def admit(
        self, updates: Sequence[ReplicaUpdate]
    ) -> tuple[list[ReplicaUpdate], list[ReplicaUpdate]]:
        """(apply now, hold back)."""
        ...


class OneServingReplicaAtATime:
    """New replicas, unchanged ones, replicas moving to another node (their pod must go anyway)
    and replicas that serve nothing are applied at once. A serving replica takes a new template
    only while every other replica serves, so at most one serving replica is down at a time;
    lowest replica id first."""

    def admit(
        self, updates: Sequence[ReplicaUpdate]
    ) -> tuple[list[ReplicaUpdate], list[ReplicaUpdate]]:
        now: list[ReplicaUpdate] = []
        waiting: list[ReplicaUpdate] = []
        for u in updates:
            (waiting if u.new_template and not u.moving and u.serving else now).append(u)
        busy = any(u.new_template or u.moving or not u.serving for u in now)
        held: list[ReplicaUpdate] = []
        for u in sorted(waiting, key=lambda u: u.replica):
            if busy:
                held.append(u)
            else:
                now.append(u)
                busy = True
        return now, held
