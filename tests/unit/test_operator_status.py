"""Phase and conditions as pure functions of placement and the Deployment's status."""

from __future__ import annotations

from typing import Any

import pytest

from goodput.operator.status import (
    Verdict,
    WorkloadState,
    readiness,
    readiness_patch,
    set_conditions,
)

PLACED = Verdict("Placed", "True", "GPUsChosen", "1 x 1 H100")
NO_GPU = Verdict("Placed", "False", "NoMatchingGPUType", "no node offers B200")
TOO_BIG = Verdict("Placed", "False", "InsufficientGPUMemory", "does not fit")


def _dep(
    replicas: int, ready: int, updated: int, reason: str = "ReplicaSetUpdated", gen: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "status": {
            "observedGeneration": gen,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "conditions": [{"type": "Progressing", "status": "True", "reason": reason}],
        },
    }


@pytest.mark.parametrize(
    ("placed", "desired", "deployment", "phase", "available", "degraded"),
    [
        (None, 1, None, "Pending", "False", "False"),
        (NO_GPU, 1, None, "Pending", "False", "False"),
        (TOO_BIG, 1, None, "Failed", "False", "False"),
        (NO_GPU, 1, _dep(1, 1, 1), "Pending", "True", "True"),  # old placement still serves
        (PLACED, 1, None, "Placing", "False", "False"),
        (PLACED, 0, _dep(0, 0, 0), "Pending", "False", "False"),
        (PLACED, 2, _dep(2, 0, 2), "Progressing", "False", "False"),
        (PLACED, 2, _dep(2, 1, 2), "Progressing", "True", "False"),
        (PLACED, 2, _dep(2, 2, 2, "NewReplicaSetAvailable"), "Available", "True", "False"),
        (PLACED, 2, _dep(2, 1, 2, "NewReplicaSetAvailable"), "Degraded", "True", "True"),
        (PLACED, 2, _dep(2, 1, 1, "ProgressDeadlineExceeded"), "Degraded", "True", "True"),
        (PLACED, 2, _dep(2, 0, 2, "ProgressDeadlineExceeded"), "Failed", "False", "True"),
    ],
)
def test_phase_table(
    placed: Verdict | None,
    desired: int,
    deployment: dict[str, Any] | None,
    phase: str,
    available: str,
    degraded: str,
) -> None:
    r = readiness(placed, desired, WorkloadState.of(deployment))
    assert (r.phase, r.available.status, r.degraded.status) == (phase, available, degraded)
    assert r.message


def test_a_stale_deployment_status_is_not_available() -> None:
    dep = _dep(1, 1, 1, "NewReplicaSetAvailable")
    dep["metadata"]["generation"] = 3  # the controller has not seen the new template yet
    assert readiness(PLACED, 1, WorkloadState.of(dep)).phase == "Progressing"


def test_transition_time_moves_only_when_status_changes() -> None:
    first = set_conditions([], [PLACED], 1, "t1")
    same = set_conditions(first, [Verdict("Placed", "True", "GPUsChosen", "other")], 2, "t2")
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["message"] == "other" and same[0]["observedGeneration"] == 2
    flipped = set_conditions(same, [NO_GPU], 3, "t3")
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_readiness_patch_keeps_placed_and_orders_conditions() -> None:
    prior = {"conditions": set_conditions([], [PLACED], 1, "t0")}
    patch = readiness_patch(prior, 1, 2, WorkloadState.of(_dep(2, 1, 2)), "t1")
    assert [c["type"] for c in patch["conditions"]] == ["Placed", "Available", "Degraded"]
    assert patch["ready"] == "1/2" and patch["readyReplicas"] == 1 and patch["replicas"] == 2
    assert patch["phase"] == "Progressing"
