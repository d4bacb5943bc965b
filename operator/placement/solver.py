"""The placement solver: GPU type, parallel shape, replica count and nodes for every deployment.

One global pass for the whole fleet, deterministic, with an incremental path for one change. The
objective, in order: aggregate demand served within the SLO (requests/s, summed over
deployments), then GPUs used, then disruption of running replicas.

1. For each deployment and GPU pool, the smallest shape that holds weights plus the SLO's KV
   headroom (``ShapeChooser``) and its SLO capacity (``ReplicaCapacity``); pools ranked by the
   user's preference, then capacity per cost (``PoolRanking``).
2. Replicas of the previous plan stay where they are while still valid (``ReplicaKeeping``);
   their GPUs are taken first, so nothing new can push them out. Demand is a target rate, or
   the replicas someone asks for (``desired_replicas``) at the best shape's capacity.
3. Minimum replicas, highest priority first, then largest replica first (first-fit-decreasing
   order, which leaves small holes to small models); a few running replicas may move when
   fragmentation alone blocks a minimum (``MoveFewToUnblock``).
4. The rest of the demand is split over pools for all deployments at once (``DemandAllocation``,
   a linear program: served demand class by class from the highest priority, then GPUs),
   rounded down to whole replicas on nodes picked by ``NodeChooser`` (zone/rack spread, then
   best fit), and what rounding left is filled greedily by served demand per GPU until no
   replica that would serve unserved demand fits anywhere: no GPU idles while demand it could
   serve waits.

``change(nodes, demands, plan, name)`` is the incremental path: only that deployment is decided
again, every other keeps its decision, and at most one of their replicas moves to make room.

Every decision carries a reason; every refusal names the constraint that failed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from goodput.operator.inventory import GpuNode
from goodput.operator.placement.allocation import (
    Claim,
    DemandAllocation,
    PoolShareLP,
    ReplicaChoice,
)
from goodput.operator.placement.capacity import ReplicaCapacity
from goodput.operator.placement.demand import GIB, ModelDemand
from goodput.operator.placement.fleet_state import (
    FleetState,
    NodeChooser,
    PoolKey,
    SpreadThenBestFit,
    SpreadUsage,
)
from goodput.operator.placement.plan import (
    DeploymentPlacement,
    PlacementPlan,
    ReplicaPlacement,
    StagePlacement,
)
from goodput.operator.placement.pools import GpuPool, pool_key
from goodput.operator.placement.profiler_capacity import ProfilerCapacity
from goodput.operator.placement.ranking import (
    CapacityPerCost,
    DemandReplicaCount,
    PoolOption,
    PoolRanking,
    ReplicaCount,
)
from goodput.operator.placement.shape import (
    Shape,
    ShapeChooser,
    SmallestFittingShape,
    memory_plan,
    split_layers,
)


class ReplicaKeeping(Protocol):
    """Judges whether a replica of the previous plan stays where it is."""

    def why_move(
        self,
        demand: ModelDemand,
        replica: ReplicaPlacement,
        state: FleetState,
        options: Mapping[PoolKey, PoolOption],
    ) -> str | None:
        """None to keep the replica; otherwise why it must move."""
        ...


@dataclass(frozen=True, slots=True)
class KeepWhileValid:
    """A replica stays unless its nodes are gone or full, or its shape no longer serves the SLO.

    Moving a serving replica costs a cold start (minutes of weight loading) and drops its KV
    cache, so a merely better spot elsewhere is never reason enough.
    """

    def why_move(
        self,
        demand: ModelDemand,
        replica: ReplicaPlacement,
        state: FleetState,
        options: Mapping[PoolKey, PoolOption],
    ) -> str | None:
        if not replica.stages:
            return "it has no nodes"
        keys = set()
        for stage in replica.stages:
            node = state.nodes.get(stage.node)
            if node is None:
                return f"node {stage.node} is gone or unschedulable"
            if node.product != replica.product or stage.gpus != replica.tensor:
                return f"node {stage.node} no longer matches its GPU type"
            keys.add(pool_key(node))
        if len(keys) != 1 or len(replica.stages) != replica.pipeline:
            return "its stages do not form one shape"
        key = keys.pop()
        if key not in options:
            return f"{replica.product} no longer serves its SLO or preference"
        if demand.tensor is not None and demand.tensor != replica.tensor:
            return f"tensor parallelism changed to {demand.tensor}"
        if demand.pipeline is not None and demand.pipeline != replica.pipeline:
            return f"pipeline parallelism changed to {demand.pipeline}"
        if memory_plan(demand, state.pools[key], replica.tensor, replica.pipeline) is None:
            return "its shape no longer holds the model with KV headroom"
        for stage in replica.stages:
            if state.free[stage.node] < stage.gpus:
                return f"node {stage.node} no longer has {stage.gpus} free GPUs"
        return None


@dataclass(frozen=True, slots=True)
class MoveFewToUnblock:
    """Judges when moving running replicas is worth it: only to place a deployment's minimum
    replicas that fragmentation blocks (free GPUs exist, but no node has enough together), and
    only when at most ``max_moves`` one-node replicas of other deployments must move to make one
    node whole enough. Each move costs a cold start; an unplaced deployment serves nothing.
    """

    max_moves: int = 4

    def worth_it(self, moves: int) -> bool:
        return 0 < moves <= self.max_moves


@dataclass(frozen=True, slots=True)
class _Options:
    options: list[PoolOption]
    refusals: list[str]
    #: Every shape of every option as its own choice (fallbacks none), in ranked order: the
    #: allocation and the fill choose among shapes too (a bigger shape serves more per replica
    #: when the maximum replicas bind).
    choices: list[PoolOption]


@dataclass(slots=True)
class _Work:
    demand: ModelDemand
    options: list[PoolOption]
    refusals: list[str]
    choices: list[PoolOption]
    replicas: list[ReplicaPlacement] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    usage: SpreadUsage = field(default_factory=SpreadUsage)
    shortfall: str = ""
    move_reasons: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> float:
        return sum(r.requests_per_second for r in self.replicas)


@dataclass(frozen=True, slots=True)
class PlacementSolver:
    """Places deployments on a fleet; each judgement is a pluggable strategy."""

    shapes: ShapeChooser = field(default_factory=SmallestFittingShape)
    capacity: ReplicaCapacity = field(default_factory=ProfilerCapacity)
    ranking: PoolRanking = field(default_factory=CapacityPerCost)
    replica_count: ReplicaCount = field(default_factory=DemandReplicaCount)
    chooser: NodeChooser = field(default_factory=SpreadThenBestFit)
    keeping: ReplicaKeeping = field(default_factory=KeepWhileValid)
    defragmentation: MoveFewToUnblock | None = field(default_factory=MoveFewToUnblock)
    allocation: DemandAllocation = field(default_factory=PoolShareLP)
    #: Running replicas of others one incremental change may move.
    incremental_moves: int = 1
    _options_cache: dict[tuple[GpuPool, ...], dict[tuple[object, ...], _Options]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def options(
        self, demand: ModelDemand, pools: Iterable[GpuPool]
    ) -> tuple[list[PoolOption], list[str]]:
        """Pools on which the deployment can run, ranked, and why the others cannot."""
        options: list[PoolOption] = []
        refusals: list[str] = []
        slo_failures: list[str] = []
        for pool in pools:
            preference = pool.allowed_by(demand.gpu_types)
            if preference is None:
                continue
            shapes = self.shapes.candidates(demand, pool)
            if isinstance(shapes, str):
                refusals.append(f"{pool.describe()}: {shapes}")
                continue
            served = [(s, self.capacity.requests_per_second(demand, pool, s)) for s in shapes]
            feasible = [(s, rps) for s, rps in served if rps > 0]
            if not feasible:
                tried = ", ".join(_shape_text(s) for s in shapes[:3])
                slo_failures.append(f"{pool.describe()}: {tried} cannot meet the SLO")
                continue
            shape, rps = feasible[0]
            options.append(PoolOption(pool, shape, rps, preference, tuple(feasible[1:3])))
        if slo_failures:
            t = demand.target
            refusals.insert(
                0,
                f"{_SLO_PREFIX} (TTFT {t.ttft_s * 1000:.0f} ms, TPOT {t.tpot_s * 1000:.0f} ms): "
                + "; ".join(slo_failures),
            )
        return self.ranking.rank(demand, options), refusals

    def solve(
        self,
        nodes: Sequence[GpuNode],
        demands: Sequence[ModelDemand],
        previous: Mapping[str, Sequence[ReplicaPlacement]] | None = None,
    ) -> PlacementPlan:
        """The global pass: the plan for ``demands`` on ``nodes``; ``previous`` replicas stay
        while valid."""
        state = FleetState(nodes)
        previous = previous or {}
        works = self._plan_options(state, demands)
        for work in works:
            self._keep_previous(state, work, previous.get(work.demand.name, ()))
        for work in works:
            self._trim(state, work)
        order = sorted(
            works,
            key=lambda w: (
                -w.demand.priority,
                -(w.options[0].shape.gpus if w.options else 0),
                -w.demand.model.weights_bytes,
                w.demand.name,
            ),
        )
        shares = self._allocate(state, order)
        # Minimum replicas first, so one deployment's demand never starves another's minimum.
        for work in order:
            minimum = max(1, work.demand.min_replicas)
            while work.options and len(work.replicas) < minimum:
                if not self._add_replica(state, work, shares):
                    break
        # Minimums that fragmentation blocks: move a few small replicas when that is worth it.
        if self.defragmentation is not None:
            by_name = {w.demand.name: w for w in works}
            for work in order:
                minimum = max(1, work.demand.min_replicas)
                while work.options and len(work.replicas) < minimum:
                    holders = self._holders(
                        state, work, ((w.demand.name, w.replicas) for w in works)
                    )
                    if not self._unblock(
                        state, holders, by_name.__getitem__, work, self.defragmentation
                    ):
                        break
        self._serve_demand(state, order, shares)
        decisions = {w.demand.name: self._decide(state, w) for w in works}
        return PlacementPlan(deployments=decisions, free_gpus=dict(state.free))

    def change(
        self,
        nodes: Sequence[GpuNode],
        demands: Sequence[ModelDemand],
        plan: PlacementPlan,
        changed: str,
    ) -> PlacementPlan:
        """The incremental path for one change: ``changed`` was added, deleted, or its demand or
        spec changed since ``plan``. Only it is decided again; every other deployment keeps its
        decision and replicas (those whose nodes are gone or full are dropped and listed as
        moved), and at most ``incremental_moves`` of their one-node replicas move to unblock its
        minimum. Its cost is the fleet's free GPUs and one deployment, not all of them."""
        state = FleetState(nodes)
        names = {d.name for d in demands}
        kept: dict[str, DeploymentPlacement] = {}
        for name, decision in plan.deployments.items():
            if name == changed or name not in names:
                continue
            held: list[ReplicaPlacement] = []
            lost: list[ReplicaPlacement] = []
            for r in decision.replicas:
                fits = all(s.node in state.nodes and state.free[s.node] >= s.gpus for s in r.stages)
                if fits:
                    for stage in r.stages:
                        state.take(stage.node, stage.gpus)
                (held if fits else lost).append(r)
            if lost:
                gone = tuple(r.replica for r in lost)
                decision = replace(decision, replicas=tuple(held), moved=decision.moved + gone)
            kept[name] = decision
        target = [d for d in demands if d.name == changed]
        if not target:
            return PlacementPlan(deployments=kept, free_gpus=dict(state.free))
        work = self._plan_options(state, target)[0]
        self._keep_previous(state, work, plan.replicas(changed))
        self._trim(state, work)
        shares = self._allocate(state, [work])
        minimum = max(1, work.demand.min_replicas)
        while work.options and len(work.replicas) < minimum:
            if not self._add_replica(state, work, shares):
                break
        if self.defragmentation is not None and work.options and len(work.replicas) < minimum:
            moves = min(self.defragmentation.max_moves, self.incremental_moves)
            policy = replace(self.defragmentation, max_moves=moves)
            by_name = {d.name: d for d in demands}
            moving: dict[str, _Work] = {}

            def resolve(owner: str) -> _Work:
                if owner not in moving:
                    other = self._plan_options(state, [by_name[owner]])[0]
                    other.replicas = list(kept[owner].replicas)
                    moving[owner] = other
                return moving[owner]

            while len(work.replicas) < minimum:
                placed = (
                    (name, moving[name].replicas if name in moving else d.replicas)
                    for name, d in kept.items()
                )
                holders = self._holders(state, work, placed)
                if not self._unblock(state, holders, resolve, work, policy):
                    break
            for owner, other in moving.items():
                if other.moved:
                    kept[owner] = self._decide(state, other)
        self._serve_demand(state, [work], shares)
        kept[changed] = self._decide(state, work)
        return PlacementPlan(deployments=kept, free_gpus=dict(state.free))

    # -- steps -------------------------------------------------------------------------------

    def _plan_options(self, state: FleetState, demands: Sequence[ModelDemand]) -> list[_Work]:
        """Each deployment's ranked options, computed once per kind of deployment and pool set
        (kept across solves: the incremental path must not redo 1,000 deployments' options)."""
        pools = tuple(state.pools.values())
        if len(self._options_cache) > _OPTIONS_CACHE_SIZE:
            self._options_cache.clear()
        cache = self._options_cache.setdefault(pools, {})
        works: dict[str, _Work] = {}
        for demand in sorted(demands, key=lambda d: d.name):
            t = demand.target  # the rate changes counts, not options
            key = (
                demand.model,
                (t.ttft_s, t.tpot_s, t.prompt_tokens, t.output_tokens, t.concurrency),
                t.min_kv_tokens,
                demand.gpu_types,
                demand.tensor,
                demand.pipeline,
                demand.gpu_memory_utilization,
            )
            if key not in cache:
                options, refusals = self.options(demand, pools)
                choices = [
                    replace(o, shape=shape, requests_per_second=rps, fallbacks=())
                    for o in options
                    for shape, rps in ((o.shape, o.requests_per_second), *o.fallbacks)
                ]
                cache[key] = _Options(options, refusals, choices)
            found = cache[key]
            options = found.options
            if demand.target.target_rps is None and demand.desired_replicas and options:
                rate = demand.desired_replicas * options[0].requests_per_second
                demand = replace(demand, target=replace(demand.target, target_rps=rate))
            works[demand.name] = _Work(demand, options, found.refusals, found.choices)
        return list(works.values())

    def _keep_previous(
        self, state: FleetState, work: _Work, previous: Sequence[ReplicaPlacement]
    ) -> None:
        by_key = {o.pool.key: o for o in work.options}
        for replica in sorted(previous, key=lambda r: r.replica):
            why = self.keeping.why_move(work.demand, replica, state, by_key)
            if why is not None:
                work.moved.append(replica.replica)
                work.shortfall = f"replica {replica.replica} moved: {why}"
                continue
            pool = state.pools[pool_key(state.nodes[replica.stages[0].node])]
            shape = memory_plan(work.demand, pool, replica.tensor, replica.pipeline)
            rps = self.capacity.requests_per_second(work.demand, pool, shape) if shape else 0.0
            if rps <= 0:
                work.moved.append(replica.replica)
                work.shortfall = f"replica {replica.replica} moved: its shape misses the SLO"
                continue
            for stage in replica.stages:
                state.take(stage.node, stage.gpus)
            kept = ReplicaPlacement(
                replica.replica,
                replica.product,
                replica.tensor,
                replica.pipeline,
                replica.stages,
                rps,
            )
            work.replicas.append(kept)
            work.usage.add(state.nodes[kept.stages[0].node])

    def _trim(self, state: FleetState, work: _Work) -> None:
        """Scale down: keep the lowest-numbered replicas that still meet demand."""
        keep: list[ReplicaPlacement] = []
        capacity = 0.0
        for replica in work.replicas:
            if self.replica_count.needs_more(work.demand, len(keep), capacity):
                keep.append(replica)
                capacity += replica.requests_per_second
            else:
                for stage in replica.stages:
                    state.give(stage.node, stage.gpus)
        if len(keep) != len(work.replicas):
            work.replicas = keep
            work.usage = SpreadUsage()
            for replica in keep:
                work.usage.add(state.nodes[replica.stages[0].node])

    def _allocate(self, state: FleetState, order: list[_Work]) -> dict[tuple[str, int], float]:
        """The allocation's replicas per (deployment, choice) for all deployments still short;
        none for a single one that its best choice can serve within its maximum replicas."""
        claims = [
            Claim(
                w.demand.name,
                self._unserved(w),
                max(0, w.demand.max_replicas - len(w.replicas)),
                w.demand.priority,
                tuple(
                    ReplicaChoice(o.pool.key, o.shape.tensor, o.shape.gpus, o.requests_per_second)
                    for o in w.choices
                ),
                minimum=max(0, max(1, w.demand.min_replicas) - len(w.replicas)),
            )
            for w in order
            if w.options
        ]
        claims = [c for c in claims if c.unserved > 0 or c.minimum > 0]
        alone = len(claims) == 1 and (
            claims[0].unserved <= claims[0].replicas_left * claims[0].choices[0].requests_per_second
        )
        if not claims or alone:  # its ranked choices are the answer
            return {}
        keys = {ch.pool for c in claims for ch in c.choices}
        return self.allocation.allocate(claims, {key: state.room(key) for key in sorted(keys)})

    def _add_replica(
        self, state: FleetState, work: _Work, shares: dict[tuple[str, int], float] | None = None
    ) -> bool:
        """One more replica on the pool the allocation gave it most of, else the best-ranked
        pool with room; False (and why) when none has."""
        name = work.demand.name
        given = shares or {}
        ks = sorted(range(len(work.choices)), key=lambda k: (given.get((name, k), 0.0) < 0.5, k))
        for k in ks:
            if self._place_on(state, work, work.choices[k]):
                if (name, k) in given:
                    given[(name, k)] -= 1
                return True
        work.shortfall = self._no_room(state, work)
        return False

    def _serve_demand(
        self, state: FleetState, order: list[_Work], shares: dict[tuple[str, int], float]
    ) -> None:
        """Place replicas for unserved demand: the allocation's whole replicas, then a greedy
        fill by served demand per GPU (the allocation's pools first) until nothing fits."""
        live = [w for w in order if w.options and self._unserved(w) > 0]
        by_name = {w.demand.name: w for w in live}
        whole = sorted(
            (
                (name, k, math.floor(x + 1e-6))
                for (name, k), x in shares.items()
                if name in by_name and x >= 1 - 1e-6
            ),
            key=lambda t: (
                -by_name[t[0]].demand.priority,
                -by_name[t[0]].choices[t[1]].shape.gpus,
                t[0],
                t[1],
            ),
        )
        for name, k, count in whole:
            work = by_name[name]
            for _ in range(count):
                if self._unserved(work) <= 0 or not self._place_on(state, work, work.choices[k]):
                    break
        heap: list[tuple[int, int, float, str, int]] = []
        for work in live:
            for k in range(len(work.choices)):
                chosen = 0 if shares.get((work.demand.name, k), 0.0) > 1e-6 else 1
                heapq.heappush(heap, (-work.demand.priority, chosen, -self._value(work, k),
                                      work.demand.name, k))  # fmt: skip
        while heap:
            priority, chosen, value, name, k = heapq.heappop(heap)
            work = by_name[name]
            now = self._value(work, k)
            if now <= 0:
                continue
            if now < -value - 1e-9:
                heapq.heappush(heap, (priority, chosen, -now, name, k))
                continue
            if self._place_on(state, work, work.choices[k]):
                heapq.heappush(heap, (priority, chosen, -self._value(work, k), name, k))
        for work in live:
            if self._unserved(work) > 0:
                work.shortfall = self._no_room(state, work)

    def _unserved(self, work: _Work) -> float:
        """Requests/s of the target no replica serves; 0 at the maximum or without a target."""
        target = work.demand.target.target_rps
        if target is None or len(work.replicas) >= work.demand.max_replicas:
            return 0.0
        return max(0.0, target - work.capacity)

    def _value(self, work: _Work, k: int) -> float:
        """Demand served per GPU by one more replica of choice ``k``."""
        choice = work.choices[k]
        return min(choice.requests_per_second, self._unserved(work)) / choice.shape.gpus

    def _place_on(self, state: FleetState, work: _Work, choice: PoolOption) -> bool:
        """One more replica of ``choice``'s shape on its pool, if some node has room."""
        taken = {r.replica for r in work.replicas}
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        replica = self._place_replica(state, work, choice, index)
        if replica is None:
            return False
        work.replicas.append(replica)
        work.usage.add(state.nodes[replica.stages[0].node])
        return True

    def _unblock(
        self,
        state: FleetState,
        holders: Mapping[str, list[tuple[str, ReplicaPlacement]]],
        resolve: Callable[[str], _Work],
        work: _Work,
        policy: MoveFewToUnblock,
    ) -> bool:
        """Make one node whole enough for a replica of ``work`` by moving others' replicas.
        ``holders``: node -> (deployment, one-node replica) there; ``resolve``: a deployment's
        working state, asked only for those whose replicas move."""
        for option in work.options:
            if option.shape.pipeline != 1:
                continue
            found = self._cheapest_node(state, option, holders, policy)
            if found is None:
                continue
            name, picked = found
            chosen = [(resolve(owner), r) for owner, r in picked]
            if self._move_away(state, name, option, chosen):
                taken = {r.replica for r in work.replicas}
                index = next(i for i in range(len(taken) + 1) if i not in taken)
                stage = StagePlacement(name, option.shape.tensor, work.demand.model.layers)
                work.replicas.append(
                    ReplicaPlacement(
                        index,
                        option.pool.product,
                        option.shape.tensor,
                        1,
                        (stage,),
                        option.requests_per_second,
                    )
                )
                work.usage.add(state.nodes[name])
                for other, r in chosen:
                    other.moved.append(r.replica)
                    other.move_reasons.append(
                        f"replica {r.replica} left {name} to make room for {work.demand.name}"
                    )
                return True
        return False

    @staticmethod
    def _holders(
        state: FleetState, work: _Work, replicas: Iterable[tuple[str, Sequence[ReplicaPlacement]]]
    ) -> dict[str, list[tuple[str, ReplicaPlacement]]]:
        """Node -> the other deployments' one-node replicas on it, in ``work``'s pools."""
        keys = {o.pool.key for o in work.options if o.shape.pipeline == 1}
        holders: dict[str, list[tuple[str, ReplicaPlacement]]] = {}
        for owner, placed in replicas:
            if owner == work.demand.name:
                continue
            for r in placed:
                if r.pipeline == 1 and state.pool_of(r.stages[0].node) in keys:
                    holders.setdefault(r.stages[0].node, []).append((owner, r))
        return holders

    @staticmethod
    def _cheapest_node(
        state: FleetState,
        option: PoolOption,
        holders: Mapping[str, list[tuple[str, ReplicaPlacement]]],
        policy: MoveFewToUnblock,
    ) -> tuple[str, list[tuple[str, ReplicaPlacement]]] | None:
        """The node of the pool that needs the fewest moves (largest replicas first) to hold
        a tensor group of the option's size."""
        need = option.shape.tensor
        best: tuple[tuple[int, int, str], list[tuple[str, ReplicaPlacement]]] | None = None
        for name in state.members(option.pool.key):
            deficit = need - state.free[name]
            if state.nodes[name].free < need or deficit <= 0:
                continue
            # largest first, and never more than the policy allows
            movable = heapq.nsmallest(
                policy.max_moves,
                holders.get(name, []),
                key=lambda h: (-h[1].gpus, h[0], h[1].replica),
            )
            chosen: list[tuple[str, ReplicaPlacement]] = []
            freed = 0
            for holder in movable:
                if freed >= deficit:
                    break
                chosen.append(holder)
                freed += holder[1].gpus
            if freed < deficit or not policy.worth_it(len(chosen)):
                continue
            rank = (len(chosen), freed - deficit, name)
            if best is None or rank < best[0]:
                best = (rank, chosen)
        return (best[0][2], best[1]) if best is not None else None

    def _move_away(
        self,
        state: FleetState,
        name: str,
        option: PoolOption,
        chosen: list[tuple[_Work, ReplicaPlacement]],
    ) -> bool:
        """Re-place ``chosen`` off ``name`` and reserve the option's group there; all or none."""
        for other, r in chosen:
            state.give(name, r.gpus)
            other.replicas.remove(r)
        state.take(name, option.shape.tensor)
        placed: list[tuple[_Work, ReplicaPlacement]] = []
        for other, _ in chosen:  # held replicas' spread is not counted until one moves
            other.usage = SpreadUsage()
            for replica in other.replicas:
                other.usage.add(state.nodes[replica.stages[0].node])
        for other, r in chosen:
            new = None
            for candidate in sorted(
                other.options, key=lambda o: (o.pool.product, o.shape.tensor) != _key_of(r)
            ):
                new = self._place_replica(state, other, candidate, r.replica)
                if new is not None:
                    break
            if new is None:
                for moved_work, replica in placed:
                    moved_work.replicas.remove(replica)
                    for stage in replica.stages:
                        state.give(stage.node, stage.gpus)
                state.give(name, option.shape.tensor)
                for back_work, back in chosen:
                    state.take(name, back.gpus)
                    back_work.replicas.append(back)
                return False
            other.replicas.append(new)
            placed.append((other, new))
        for other, _ in chosen:
            other.usage = SpreadUsage()
            for replica in other.replicas:
                other.usage.add(state.nodes[replica.stages[0].node])
        return True

    def _place_replica(
        self, state: FleetState, work: _Work, option: PoolOption, index: int
    ) -> ReplicaPlacement | None:
        shape, key = option.shape, option.pool.key
        if state.largest_free(key) < shape.tensor:
            return None
        first = self.chooser.first_stage(state, key, shape.tensor, work.usage)
        if first is None:
            return None
        nodes = [first]
        state.take(first, shape.tensor)
        while len(nodes) < shape.pipeline:
            nxt = self.chooser.next_stage(state, key, shape.tensor, first, nodes)
            if nxt is None:
                for name in nodes:
                    state.give(name, shape.tensor)
                return None
            state.take(nxt, shape.tensor)
            nodes.append(nxt)
        memory = [float(state.nodes[n].gpu.memory_bytes * shape.tensor) for n in nodes]
        layers = split_layers(work.demand.model.layers, memory)
        stages = tuple(
            StagePlacement(n, shape.tensor, k) for n, k in zip(nodes, layers, strict=True)
        )
        return ReplicaPlacement(
            index,
            option.pool.product,
            shape.tensor,
            shape.pipeline,
            stages,
            option.requests_per_second,
        )

    # -- explanations ------------------------------------------------------------------------

    def _no_room(self, state: FleetState, work: _Work) -> str:
        parts = []
        for option in work.options[:3]:
            shape, key = option.shape, option.pool.key
            where = (
                f"{shape.tensor} free GPUs on one {option.pool.product} node"
                if shape.pipeline == 1
                else f"{shape.tensor} free GPUs on each of {shape.pipeline} {option.pool.product}"
                " nodes in one zone"
            )
            parts.append(
                f"{where} (largest free block {state.largest_free(key)},"
                f" {state.free_in_pool(key)} of {option.pool.gpus} free)"
            )
        return "no room for another replica: needs " + "; or ".join(parts)

    def _decide(self, state: FleetState, work: _Work) -> DeploymentPlacement:
        demand = work.demand
        replicas = tuple(sorted(work.replicas, key=lambda r: r.replica))
        capacity = work.capacity
        if not work.options:
            return DeploymentPlacement(
                demand.name,
                False,
                (),
                _refusal(state, demand, work.refusals),
                refusal=_refusal_code(work.refusals),
            )
        best = work.options[0]
        desired = self.replica_count.desired(demand, best.requests_per_second)
        minimum = max(1, demand.min_replicas)
        placed = len(replicas) >= minimum
        if placed:
            short = self.replica_count.needs_more(demand, len(replicas), capacity)
            reason = _explanation(work, replicas, short)
        else:
            reason = f"placed {len(replicas)} of at least {minimum} replicas: {work.shortfall}"
        return DeploymentPlacement(
            demand.name,
            placed,
            replicas,
            reason,
            desired_replicas=desired,
            requests_per_second=capacity,
            moved=tuple(work.moved),
            refusal="" if placed else "InsufficientGPUs",
        )


_SLO_PREFIX = "within its SLO"
#: Pool sets (fleets) whose deployments' options the solver keeps between solves.
_OPTIONS_CACHE_SIZE = 16


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shape_text(shape: Shape) -> str:
    return f"tensor {shape.tensor} x pipeline {shape.pipeline}"


def _key_of(replica: ReplicaPlacement) -> tuple[str, int]:
    return (replica.product, replica.tensor)


def _refusal_code(refusals: list[str]) -> str:
    if not refusals:
        return "NoMatchingGPUType"
    return "SLOUnattainable" if refusals[0].startswith(_SLO_PREFIX) else "InsufficientGPUMemory"


def _refusal(state: FleetState, demand: ModelDemand, refusals: list[str]) -> str:
    wanted = ", ".join(demand.gpu_types) if demand.gpu_types else "the fleet"
    if not state.pools:
        return "no schedulable GPU nodes"
    if not refusals:
        have = ", ".join(sorted({p.product for p in state.pools.values()}))
        return f"no GPU type in [{wanted}] exists in the fleet (it has {have})"
    weights = demand.model.weights_bytes / GIB
    need = (
        f"{weights:.0f} GiB of weights plus KV for {demand.target.concurrency} sequences"
        f" of {demand.target.prompt_tokens + demand.target.output_tokens} tokens"
    )
    if refusals[0].startswith(_SLO_PREFIX):
        return f"no GPU type in [{wanted}] can serve {need} {'; '.join(refusals[:4])}"
    return f"no GPU type in [{wanted}] can hold {need}: " + "; ".join(refusals[:4])


def _explanation(work: _Work, replicas: tuple[ReplicaPlacement, ...], short: bool) -> str:
    demand = work.demand
    by_product: dict[tuple[str, int, int], int] = {}
    for r in replicas:
        k = (r.product, r.tensor, r.pipeline)
        by_product[k] = by_product.get(k, 0) + 1
    shapes = ", ".join(
        f"{n}x {p} tensor {t} x pipeline {pp}" for (p, t, pp), n in by_product.items()
    )
    best = work.options[0]
    choice = (
        f"{best.pool.product} first in gpuTypes"
        if demand.gpu_types
        else f"{best.pool.product} best capacity per cost of {len(work.options)} GPU types"
        f" ({best.requests_per_second:.1f} req/s per replica)"
    )
    target = demand.target.target_rps
    demand_text = (
        f"{work.capacity:.1f} req/s for a target of {target:.1f}"
        if target is not None
        else f"min {_count(max(1, demand.min_replicas), 'replica')}"
    )
    zones = len({z for z, n in work.usage.zones.items() if n})
    text = (
        f"{_count(len(replicas), 'replica')} ({shapes}); {choice}; {demand_text}"
        f" in [{max(1, demand.min_replicas)}, {max(demand.min_replicas, demand.max_replicas)}];"
        f" spread over {_count(zones, 'zone')}"
    )
    if short and work.shortfall:
        text += f"; {work.shortfall}"
    if work.moved:
        text += f"; moved replicas {list(work.moved)}"
        if work.move_reasons:
            text += f" ({'; '.join(work.move_reasons)})"
    return text
