"""Conditions and phase of an LLMDeployment: pure functions of what the operator observed.

Conditions (Kubernetes API conventions: type, status, reason, message, lastTransitionTime,
observedGeneration; the transition time moves only when the status does):

- ``Placed``: a GPU type and parallelism were chosen for the replicas (False: reason says why).
- ``Available``: at least one replica is ready to serve.
- ``Degraded``: fewer replicas are ready than desired although the rollout is not in progress,
  or the rollout stalled past its deadline, or something the pods need is wrong (a ``problem``:
  the TLS Secret missing or unusable) — its reason then names that, whatever the replicas do.

Phase summarises them for ``kubectl get``:
``Pending`` (waiting for GPUs that may appear, or scaled to zero), ``Placing`` (placed, workload
not yet observed), ``Progressing`` (rolling out), ``Available`` (all desired replicas ready),
``Degraded`` (some ready, not all, not rolling out), ``Failed`` (the spec cannot be satisfied, or
no replica became ready before the deadline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from goodput.api.llmdeployment import AdapterStatus, LLMDeploymentSpec, Phase
from goodput.api.load_report import LoadReport

PLACED, AVAILABLE, DEGRADED = "Placed", "Available", "Degraded"
# Placement failures that new nodes can cure: retried when nodes change; others wait for a new spec.
RETRYABLE_PLACEMENT_REASONS = frozenset({"NoMatchingGPUType", "InsufficientGPUs"})


@dataclass(frozen=True)
class WorkloadState:
    """What the owned Deployments report: one (``of``), or all replicas' together
    (``of_replicas``)."""

    exists: bool
    replicas: int = 0  # pods, old and new
    ready: int = 0
    updated: int = 0
    current: bool = False  # the Deployment controller has observed its latest spec
    rollout_complete: bool = False  # its Progressing condition says NewReplicaSetAvailable
    deadline_exceeded: bool = False

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None) -> WorkloadState:
        if deployment is None:
            return cls(exists=False)
        meta = deployment.get("metadata") or {}
        status = deployment.get("status") or {}
        progressing: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Progressing"), {}
        )
        return cls(
            exists=True,
            replicas=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            current=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
            rollout_complete=progressing.get("reason") == "NewReplicaSetAvailable",
            deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        )

    @classmethod
    def of_replicas(
        cls, deployments: Sequence[Mapping[str, Any]], desired: int, held: int = 0
    ) -> WorkloadState:
        """The replica Deployments as one workload: pods and ready pods add up, the rollout is
        current and complete only when every replica's is, and one stalled replica stalls it.
        ``held`` replicas still wait for the new pod template (not updated yet). With zero
        replicas desired, none existing is the converged state."""
        states = [cls.of(d) for d in deployments]
        return cls(
            exists=bool(states) or desired == 0,
            replicas=sum(s.replicas for s in states),
            ready=sum(s.ready for s in states),
            updated=max(0, sum(s.updated for s in states) - held),
            current=all(s.current for s in states),
            rollout_complete=all(s.rollout_complete for s in states),
            deadline_exceeded=any(s.deadline_exceeded for s in states),
        )


@dataclass(frozen=True)
class Verdict:
    """One condition's new value, before timestamps."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Readiness:
    phase: Phase
    available: Verdict
    degraded: Verdict
    message: str


def readiness(placed: Verdict | None, desired: int, w: WorkloadState) -> Readiness:
    """Phase and the Available/Degraded conditions from placement and the workload's state."""
    serving = w.exists and w.ready > 0
    if placed is None or placed.status != "True":
        why = placed.message if placed else "not placed yet"
        retry = placed is not None and placed.reason in RETRYABLE_PLACEMENT_REASONS
        phase: Phase = "Pending" if placed is None or retry else "Failed"
        if serving:
            msg = f"not placed ({why}); the previous placement still serves {w.ready} replicas"
            return Readiness(
                phase,
                Verdict(AVAILABLE, "True", "PreviousPlacementServing", msg),
                Verdict(DEGRADED, "True", "NotPlaced", why),
                msg,
            )
        return Readiness(
            phase,
            Verdict(AVAILABLE, "False", "NotPlaced", why),
            Verdict(DEGRADED, "False", "NotPlaced", why),
            why,
        )
    if not w.exists:
        msg = "placed; waiting for the workload"
        return Readiness(
            "Placing",
            Verdict(AVAILABLE, "False", "WorkloadPending", msg),
            Verdict(DEGRADED, "False", "WorkloadPending", msg),
            msg,
        )
    if desired == 0:
        msg = "scaled to zero replicas"
        return Readiness(
            "Pending",
            Verdict(AVAILABLE, "False", "ScaledToZero", msg),
            Verdict(DEGRADED, "False", "ScaledToZero", msg),
            msg,
        )
    counts = f"{w.ready}/{desired} replicas ready"
    available = Verdict(
        AVAILABLE,
        "True" if serving else "False",
        "ReplicasReady" if serving else "NoReplicaReady",
        counts,
    )
    done = w.current and w.updated >= desired and w.replicas == desired
    if done and w.ready >= desired:
        return Readiness(
            "Available", available, Verdict(DEGRADED, "False", "AllReplicasReady", counts), counts
        )
    if w.deadline_exceeded:
        msg = f"{counts}; the rollout exceeded its progress deadline"
        return Readiness(
            "Degraded" if serving else "Failed",
            available,
            Verdict(DEGRADED, "True", "ProgressDeadlineExceeded", msg),
            msg,
        )
    if done and w.rollout_complete:
        msg = f"{counts} after a completed rollout"
        return Readiness(
            "Degraded", available, Verdict(DEGRADED, "True", "ReplicasUnavailable", msg), msg
        )
    msg = f"{counts}; rolling out"
    return Readiness("Progressing", available, Verdict(DEGRADED, "False", "RollingOut", msg), msg)


def set_conditions(
    previous: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict], generation: int, now: str
) -> list[dict[str, Any]]:
    """Conditions with ``verdicts`` applied: other types are kept, and a condition's
    lastTransitionTime changes only when its status does."""
    by_type = {str(c.get("type")): dict(c) for c in previous}
    for v in verdicts:
        old = by_type.get(v.type)
        since = old["lastTransitionTime"] if old and old.get("status") == v.status else now
        by_type[v.type] = {
            "type": v.type,
            "status": v.status,
            "reason": v.reason,
            "message": v.message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    order = [PLACED, AVAILABLE, DEGRADED]
    return sorted(by_type.values(), key=lambda c: [*order, c["type"]].index(c["type"]))


def find(conditions: Sequence[Mapping[str, Any]], type_: str) -> Verdict | None:
    for c in conditions:
        if c.get("type") == type_:
            return Verdict(type_, str(c.get("status")), str(c.get("reason")), str(c.get("message")))
    return None


def readiness_patch(
    status: Mapping[str, Any],
    generation: int,
    desired: int,
    workload: WorkloadState,
    now: str,
    placed: Verdict | None = None,
    problem: Verdict | None = None,
) -> dict[str, Any]:
    """The status fields that follow from the workload (and, when given, a new placement). A
    placed deployment's ``problem`` (a Degraded verdict) replaces the Degraded condition the
    workload alone would give, and leads the message."""
    previous = list(status.get("conditions") or [])
    if placed is None:
        placed = find(previous, PLACED)
    r = readiness(placed, desired, workload)
    if problem is not None and placed is not None and placed.status == "True":
        r = Readiness(r.phase, r.available, problem, f"{problem.message}; {r.message}")
    verdicts = [v for v in (placed, r.available, r.degraded) if v is not None]
    return {
        "phase": r.phase,
        "conditions": set_conditions(previous, verdicts, generation, now),
        "replicas": workload.replicas,
        "readyReplicas": workload.ready,
        "ready": f"{workload.ready}/{desired}",
        "message": r.message,
    }


def adapter_status(
    spec: LLMDeploymentSpec, reports: Mapping[str, LoadReport]
) -> list[dict[str, Any]]:
    """``status.adapters``: for each of ``spec.adapters``, the pods (by name) whose gateway
    reports it loaded, and the loads those gateways counted (a pod that does not answer, or
    restarted, counts nothing; the status says what the pods say now)."""
    out = []
    for adapter in spec.adapters:
        loaded_on, cold = [], 0
        for pod, report in sorted(reports.items()):
            if report.adapters is None:
                continue
            if adapter.name in report.adapters.loaded:
                loaded_on.append(pod)
            cold += report.adapters.cold_loads.get(adapter.name, 0)
        out.append(
            AdapterStatus(name=adapter.name, loaded_on=loaded_on, cold_loads=cold).model_dump(
                by_alias=True
            )
        )
    return out
