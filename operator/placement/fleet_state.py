"""Free GPUs per node during one solve, indexed for fast best-fit search, and node choosers.

The index keeps, per GPU pool and zone, the nodes bucketed by their free GPU count, so the tightest
node with at least ``k`` free GPUs is found by walking buckets upward instead of scanning the
fleet. Buckets preserve insertion order (nodes enter sorted by name), which keeps every choice
deterministic for the same inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from goodput.operator.inventory import GpuNode
from goodput.operator.placement.allocation import PoolRoom
from goodput.operator.placement.pools import GpuPool, group_pools, pool_key

PoolKey = tuple[str, str, int]


class FleetState:
    """Mutable free-GPU counts of one solve."""

    def __init__(self, nodes: Sequence[GpuNode]) -> None:
        ordered = sorted(nodes, key=lambda n: n.name)
        self.nodes: dict[str, GpuNode] = {n.name: n for n in ordered}
        self.pools: dict[PoolKey, GpuPool] = group_pools(ordered)
        self.free: dict[str, int] = {}
        self._pool_of: dict[str, PoolKey] = {}
        self._members: dict[PoolKey, list[str]] = {}
        self._index: dict[PoolKey, dict[str, list[dict[str, None]]]] = {}
        self.by_domain: dict[str, list[str]] = {}
        self.by_rack: dict[tuple[str, str], list[str]] = {}
        for node in ordered:
            key = pool_key(node)
            self._pool_of[node.name] = key
            self._members.setdefault(key, []).append(node.name)
            zones = self._index.setdefault(key, {})
            buckets = zones.setdefault(node.zone, [])
            size = self.pools[key].max_gpus_per_node + 1
            while len(buckets) < size:
                buckets.append({})
            self.free[node.name] = node.free
            buckets[node.free][node.name] = None
            self.by_domain.setdefault(node.domain, []).append(node.name)
            self.by_rack.setdefault((node.zone, node.rack), []).append(node.name)

    def _move(self, name: str, new_free: int) -> None:
        node = self.nodes[name]
        buckets = self._index[self._pool_of[name]][node.zone]
        del buckets[self.free[name]][name]
        buckets[new_free][name] = None
        self.free[name] = new_free

    def pool_of(self, name: str) -> PoolKey | None:
        return self._pool_of.get(name)

    def members(self, key: PoolKey) -> list[str]:
        """The pool's nodes, by name."""
        return self._members.get(key, [])

    def take(self, name: str, gpus: int) -> None:
        if self.free[name] < gpus:
            raise ValueError(f"{name} has {self.free[name]} free GPUs, not {gpus}")
        self._move(name, self.free[name] - gpus)

    def give(self, name: str, gpus: int) -> None:
        self._move(name, min(self.nodes[name].gpus, self.free[name] + gpus))

    def zones(self, key: PoolKey) -> list[str]:
        return sorted(self._index.get(key, {}))

    def candidates(self, key: PoolKey, zone: str, gpus: int) -> Iterator[tuple[int, str]]:
        """(free, node) in the zone with at least ``gpus`` free, tightest first."""
        buckets = self._index.get(key, {}).get(zone, [])
        for free in range(gpus, len(buckets)):
            for name in buckets[free]:
                yield free, name

    def largest_free(self, key: PoolKey) -> int:
        best = 0
        for buckets in self._index.get(key, {}).values():
            for free in range(len(buckets) - 1, best, -1):
                if buckets[free]:
                    best = free
                    break
        return best

    def free_in_pool(self, key: PoolKey) -> int:
        return sum(
            free * len(bucket)
            for buckets in self._index.get(key, {}).values()
            for free, bucket in enumerate(buckets)
        )

    def room(self, key: PoolKey) -> PoolRoom:
        """The pool's free GPUs, and how many of them form whole groups of each size."""
        counts: Counter[int] = Counter()
        for buckets in self._index.get(key, {}).values():
            for free, bucket in enumerate(buckets):
                counts[free] += len(bucket)
        groups = {
            size: sum(free // size * size * n for free, n in counts.items())
            for size in range(1, self.pools[key].max_gpus_per_node + 1)
        }
        return PoolRoom(sum(free * n for free, n in counts.items()), groups)


K = TypeVar("K")


class _Tally(dict[K, int]):
    """Counts with 0 for what was never counted: a ``Counter`` without its cost per instance
    (a solve makes one ``SpreadUsage`` per deployment, 1,000 on every incremental change)."""

    def __missing__(self, key: K) -> int:
        return 0


@dataclass(slots=True)
class SpreadUsage:
    """Where one deployment's replicas already are, so the next one can go elsewhere."""

    zones: _Tally[str] = field(default_factory=lambda: _Tally())
    racks: _Tally[tuple[str, str]] = field(default_factory=lambda: _Tally())
    nodes: _Tally[str] = field(default_factory=lambda: _Tally())

    def add(self, node: GpuNode) -> None:
        self.zones[node.zone] += 1
        self.racks[(node.zone, node.rack)] += 1
        self.nodes[node.name] += 1


class NodeChooser(Protocol):
    """Judges which node takes a tensor-parallel group of ``gpus`` GPUs."""

    def first_stage(
        self, state: FleetState, key: PoolKey, gpus: int, usage: SpreadUsage
    ) -> str | None: ...

    def next_stage(
        self, state: FleetState, key: PoolKey, gpus: int, first: str, taken: Sequence[str]
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class SpreadThenBestFit:
    """Zones with fewest replicas of this deployment first, then the tightest node (best fit).

    Best fit leaves whole nodes whole for the large tensor groups still to come, which is what
    keeps GPUs from being stranded. Among equally tight nodes, the rack and node with fewest
    replicas of the deployment win (looking at up to ``scan`` nodes per bucket). Later pipeline
    stages stay in the first stage's zone and prefer its interconnect domain, then its rack.
    """

    scan: int = 32

    def first_stage(
        self, state: FleetState, key: PoolKey, gpus: int, usage: SpreadUsage
    ) -> str | None:
        zones = state.zones(key)
        for level in sorted({usage.zones[z] for z in zones}):
            group = [z for z in zones if usage.zones[z] == level]
            best: tuple[int, int, int, int, str] | None = None
            for zone in group:
                for seen, (free, name) in enumerate(state.candidates(key, zone, gpus)):
                    if best is not None and free > best[0]:
                        break
                    node = state.nodes[name]
                    score = (free, usage.racks[(zone, node.rack)], usage.nodes[name], seen, name)
                    if best is None or score < best:
                        best = score
                    if seen + 1 >= self.scan:
                        break
            if best is not None:
                return best[4]
        return None

    def next_stage(
        self, state: FleetState, key: PoolKey, gpus: int, first: str, taken: Sequence[str]
    ) -> str | None:
        anchor = state.nodes[first]
        for members in (
            state.by_domain.get(anchor.domain, []),
            state.by_rack.get((anchor.zone, anchor.rack), []),
        ):
            fits = [
                (state.free[n], n)
                for n in members
                if n not in taken
                and state.free[n] >= gpus
                and state.nodes[n].zone == anchor.zone
                and pool_key(state.nodes[n]) == key
            ]
            if fits:
                return min(fits)[1]
        for _, name in state.candidates(key, anchor.zone, gpus):
            if name not in taken:
                return name
        return None
