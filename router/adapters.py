"""Adapter affinity: a request for a LoRA adapter goes to a replica that has it loaded.

A replica's gateway loads an adapter on its first request for it (``goodput.serving.adapters``),
evicting its least recently used idle one when full, so the router decides where each adapter
lives by where it sends the requests. This scorer rates a replica

- 1 when its gateway reports the adapter loaded, or this router sent it a request for the
  adapter within ``remember_s`` (the load happens before the next report says so);
- 0.5 for the adapter's *home* when no replica has it: the first replica in the rendezvous order
  of its name that is not overloaded and has a free adapter slot (else the first not
  overloaded), the same on every router, so that routers agree where a cold adapter is loaded
  instead of each loading it somewhere else, and a load evicts nothing while a slot is free;
- 0 otherwise,

and — as the prefix and session scorers do — gives no affinity to a replica above the bounded
load (``bounded_load`` times the mean load plus one request): a hot adapter then spills to the
next replica, whose gateway loads it. That is how adapters are packed onto replicas by demand:
a cold adapter lives on one replica, a hot one on as many as its load needs.

A request whose model no gateway lists in its catalog (the base model) is scored 0 everywhere,
which leaves the choice to the other stages. Each request sent to a replica without its adapter
is a cold load there, counted per adapter (``goodput_router_adapter_cold_loads_total``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from goodput.api.load_report import AdapterLoad
from goodput.router.endpoints import Endpoint
from goodput.router.prefix import rendezvous_rank
from goodput.router.stages import RoutingRequest, stable_hash


class AdapterAffinityScorer:
    name = "adapter-affinity"
    HOME_SCORE = 0.5

    def __init__(
        self, bounded_load: float, clock: Callable[[], float], remember_s: float = 10.0
    ) -> None:
        self.bounded_load = bounded_load
        self.clock = clock
        self.remember_s = remember_s
        self.cold_loads: Counter[str] = Counter()
        self._sent: dict[tuple[str, str], float] = {}  # (replica, adapter) -> last sent

    def is_adapter(self, model: str, endpoints: Sequence[Endpoint]) -> bool:
        """Whether some replica's gateway may load ``model`` as an adapter."""
        reports = (_adapters(e) for e in endpoints)
        return any(r is not None and model in r.catalog for r in reports)

    def has_loaded(self, endpoint: Endpoint, adapter: str) -> bool:
        reported = _adapters(endpoint)
        if reported is not None and adapter in reported.loaded:
            return True
        sent = self._sent.get((endpoint.name, adapter))
        return sent is not None and self.clock() - sent <= self.remember_s

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        scores = [0.0] * len(endpoints)
        if not endpoints or not self.is_adapter(request.model, endpoints):
            return scores
        loads = [e.load for e in endpoints]
        bound = self.bounded_load * (sum(loads) / len(loads)) + 1.0
        over = [load > bound for load in loads]
        loaded = [self.has_loaded(e, request.model) for e in endpoints]
        for i, (has, o) in enumerate(zip(loaded, over, strict=True)):
            if has and not o:
                scores[i] = 1.0
        if not any(loaded):
            order = rendezvous_rank(stable_hash(request.model), [e.name for e in endpoints])
            index = {e.name: i for i, e in enumerate(endpoints)}
            calm = [index[name] for name in order if not over[index[name]]]
            roomy = [i for i in calm if self._free_slots(endpoints[i]) > 0]
            if roomy or calm:
                scores[(roomy or calm)[0]] = self.HOME_SCORE
        return scores

    def _free_slots(self, endpoint: Endpoint) -> int:
        """Slots its gateway has left, counting the adapters this router sent it since."""
        reported = _adapters(endpoint)
        if reported is None:
            return 0
        now = self.clock()
        sent = {
            a
            for (name, a), t in self._sent.items()
            if name == endpoint.name and now - t <= self.remember_s
        }
        return reported.capacity - len(set(reported.loaded) | sent)

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        reported = _adapters(endpoint)
        if reported is None or request.model not in reported.catalog:
            return
        if not self.has_loaded(endpoint, request.model):
            self.cold_loads[request.model] += 1
        now = self.clock()
        self._sent[(endpoint.name, request.model)] = now
        if len(self._sent) > 4096:  # bounded: forget what is past remembering
            horizon = now - self.remember_s
            self._sent = {k: t for k, t in self._sent.items() if t >= horizon}


def _adapters(endpoint: Endpoint) -> AdapterLoad | None:
    return None if endpoint.report is None else endpoint.report.adapters


class AdapterColdLoads(Collector):
    """``goodput_router_adapter_cold_loads_total``: requests this router sent to a replica that
    did not have their adapter loaded (so its gateway loaded it first), per adapter."""

    def __init__(self, router: str, scorers: Callable[[], Sequence[object]]) -> None:
        self.router = router
        self.scorers = scorers

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "goodput_router_adapter_cold_loads",
            "Requests sent to a replica without their adapter loaded (a load there first).",
            labels=("router", "adapter"),
        )
        for scorer in self.scorers():
            if isinstance(scorer, AdapterAffinityScorer):
                for adapter, count in sorted(scorer.cold_loads.items()):
                    family.add_metric([self.router, adapter], count)
        yield family
