"""The rollout gate: which replica Deployments take a new pod template now."""

from __future__ import annotations

from typing import Any

from goodput.operator.naming import ANNOTATION_NODE
from goodput.operator.rollout import (
    ANNOTATION_POD_SPEC,
    OneServingReplicaAtATime,
    ReplicaUpdate,
)


def dep(spec: str, node: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "generation": 2,
            "annotations": {ANNOTATION_POD_SPEC: spec, ANNOTATION_NODE: node},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1 if ready else 0,
        },
    }


def update(replica: int, spec: str, node: str, current: dict[str, Any] | None) -> ReplicaUpdate:
    return ReplicaUpdate(replica, dep(spec, node), current)


def admitted(*updates: ReplicaUpdate) -> tuple[list[int], list[int]]:
    now, held = OneServingReplicaAtATime().admit(updates)
    return sorted(u.replica for u in now), sorted(u.replica for u in held)


def test_serving_replicas_take_a_new_template_one_at_a_time() -> None:
    serving = [update(i, "new", f"n{i}", dep("old", f"n{i}")) for i in range(3)]
    now, held = admitted(*serving)
    assert (now, held) == ([0], [1, 2]), "the lowest id first; the others keep serving"


def test_unchanged_new_moving_and_broken_replicas_apply_at_once() -> None:
    assert admitted(
        update(0, "same", "n0", dep("same", "n0")),  # unchanged: a no-op apply
        update(1, "same", "n1", None),  # new
    ) == ([0, 1], [])
    # A replica moving off a lost node and one whose pod is not ready roll at once; the serving
    # replica waits for them.
    assert admitted(
        update(0, "new", "n0", dep("old", "n0")),
        update(1, "new", "n9", dep("old", "n1")),
        update(2, "new", "n2", dep("old", "n2", ready=False)),
    ) == ([1, 2], [0])


def test_a_replica_still_starting_holds_the_next_one_back() -> None:
    assert admitted(
        update(0, "new", "n0", dep("new", "n0", ready=False)),  # rolled, loading the model
        update(1, "new", "n1", dep("old", "n1")),
    ) == ([0], [1])
    assert admitted(
        update(0, "new", "n0", dep("new", "n0")),  # now serving the new template
        update(1, "new", "n1", dep("old", "n1")),
    ) == ([0, 1], [])
