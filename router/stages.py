"""The routing decision as small stages, each named for what it judges, composed by config
(``RouterConfig.filters``, ``.scorers``, ``.picker``).

- A **filter** drops replicas that must not get the request (not ready; predicted to miss the
  TTFT objective while another would meet it).
- A **scorer** rates each remaining replica in [0, 1] for one concern (prefix cache, session,
  SLO headroom, load).
- The **picker** orders replicas by the weighted sum; the first gets the request, the next ones
  are the retries, and after them the replicas the SLO-headroom filter dropped (a replica
  predicted to miss is a better last resort than answering the gateway's 429 to the client).

Affinity (prefix, session) is bounded: a replica carrying more than ``bounded_load`` times the
mean load plus one request gets no affinity score, so one hot prefix or session cannot pin a
saturated replica. Short of that bound it holds even while the replica queues: a move re-prefills
the prompt elsewhere, which the SLO-headroom stages weigh (they predict each replica's TTFT with
the prefill of what it does not hold, ``PrefixKnowledge``). Where no router has seen a prompt
yet, its home replica comes from rendezvous hashing of its leading blocks, which every router
computes alike: routers agree without a shared store.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from goodput.api.prefix_blocks import uncached_tokens
from goodput.api.router_config import RouterConfig
from goodput.router.endpoints import Endpoint
from goodput.router.prefix import PrefixIndex, rendezvous_rank


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What the stages know of a request."""

    model: str
    blocks: tuple[int, ...]
    """Chained prefix block hashes (``prefix.block_hashes``)."""
    prompt_tokens: int
    block_tokens: float
    """The prompt tokens one block covers (the prompt's tokens over its length, times a
    block's)."""
    session: str | None
    tenant: str
    priority: str
    ttft_objective_s: float | None
    key: int
    """A stable hash of the request (its prompt, else its id) for tie-breaking alike on every
    router."""
    prompt: str = ""
    """What a model must answer now (a chat's last user message): filled only for a cascade."""
    images: bool = False
    """The request carries image content (a cascade sends it to a multimodal model)."""


class Filter(Protocol):
    name: str
    soft: bool
    """What a soft filter drops stays a retry of last resort, after the ranked replicas (a
    likely miss beats a certain 429); what a hard one drops may not get the request at all."""

    def filter(self, request: RoutingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        """The replicas that may get ``request``; never empty when ``endpoints`` is not, unless
        none may (the caller answers 503 then)."""
        ...


class Scorer(Protocol):
    name: str

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        """One score in [0, 1] per endpoint, in order."""
        ...

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        """``endpoint`` got ``request``: learn from it (stateful scorers)."""
        ...


class PrefixKnowledge:
    """What this router believes each replica holds of a request's prompt: the longer match of
    what it sent there itself (its ``PrefixIndex``, exact for its own traffic since the last
    poll) and what the replica's gateway reports its engine was sent by every router (the
    replica's ``held`` sketch: routers reading the same sketch agree). The one owner of these
    lookups for the stages that judge by them — the prefix scorer (affinity) and the SLO-headroom
    stages (the prefill a replica would still have to do); kept for the request being decided,
    so each stage asks without repeating the search."""

    def __init__(self, index: PrefixIndex) -> None:
        self.index = index
        self._request: RoutingRequest | None = None
        self._matched: dict[str, int] = {}

    def matched_blocks(self, request: RoutingRequest, endpoint: Endpoint) -> int:
        if request is not self._request:
            self._request, self._matched = request, {}
        found = self._matched.get(endpoint.name)
        if found is None:
            found = self.index.matched_blocks(endpoint.name, request.blocks)
            if endpoint.held is not None and found < len(request.blocks):
                found = max(found, endpoint.held.matched_blocks(request.blocks))
            self._matched[endpoint.name] = found
        return found

    def record(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        """``endpoint`` got ``request``: it holds its blocks now."""
        self.index.record(endpoint.name, request.blocks)
        self._request, self._matched = None, {}

    def uncached_tokens(self, request: RoutingRequest, endpoint: Endpoint) -> float:
        """The prompt's tokens that ``endpoint`` would have to prefill: those past the blocks
        this router sent there."""
        matched = self.matched_blocks(request, endpoint) if request.blocks else 0
        return uncached_tokens(request.prompt_tokens, matched, request.block_tokens)

    def predicted_ttft_s(self, request: RoutingRequest, endpoint: Endpoint) -> float | None:
        return endpoint.predicted_ttft_s(self.uncached_tokens(request, endpoint))


# -- filters ------------------------------------------------------------------------------------


class ReadyFilter:
    """Replicas ready to take new work: discovery says ready, not terminating, not failed
    recently, and their gateway reports ready."""

    name = "ready"
    soft = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def filter(self, request: RoutingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        now = self.clock()
        return [e for e in endpoints if e.eligible(now)]


class SLOHeadroomFilter:
    """Where some replicas are predicted to meet the request's TTFT objective, only those.
    Where none are (or nothing is known yet), all: the choice is left to the scorers. The
    prediction includes prefilling what the replica does not hold of the prompt, so a replica
    with a short queue but a cold cache is not preferred blindly to the one holding the
    prompt."""

    name = "slo-headroom"
    soft = True

    def __init__(self, knowledge: PrefixKnowledge) -> None:
        self.knowledge = knowledge

    def filter(self, request: RoutingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        meeting = [
            e
            for e in endpoints
            if _meets(self.knowledge.predicted_ttft_s(request, e), _objective(request, e))
        ]
        return meeting or endpoints


def _objective(request: RoutingRequest, endpoint: Endpoint) -> float | None:
    """The request's TTFT objective, else the deployment's as the replica reports it."""
    if request.ttft_objective_s is not None:
        return request.ttft_objective_s
    return None if endpoint.report is None else endpoint.report.ttft_objective_s


def _meets(ttft_s: float | None, objective_s: float | None) -> bool:
    return ttft_s is None or objective_s is None or ttft_s <= objective_s


# -- scorers ------------------------------------------------------------------------------------


def _overloaded(endpoints: Sequence[Endpoint], factor: float) -> list[bool]:
    """Bounded load: above ``factor`` x mean load + 1 request (consistent hashing with bounded
    loads). A queue short of that is not a reason to leave: whether waiting there beats
    prefilling elsewhere is the SLO-headroom stages' judgement, made with the prefill cost."""
    loads = [e.load for e in endpoints]
    bound = factor * (sum(loads) / len(loads)) + 1.0
    return [load > bound for load in loads]


class PrefixCacheScorer:
    """Prefers the replica most likely to hold the longest prefix of the prompt: the fraction
    of its blocks this router sent there before, or — for a prompt no one has seen — its home by
    rendezvous hashing of the first ``affinity_blocks`` blocks (scored one half)."""

    name = "prefix-cache"
    HOME_SCORE = 0.5

    def __init__(
        self, knowledge: PrefixKnowledge, affinity_blocks: int, bounded_load: float
    ) -> None:
        self.knowledge = knowledge
        self.index = knowledge.index
        self.affinity_blocks = affinity_blocks
        self.bounded_load = bounded_load

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        blocks = request.blocks
        if not blocks or not endpoints:
            return [0.0] * len(endpoints)
        over = _overloaded(endpoints, self.bounded_load)
        matched = [self.knowledge.matched_blocks(request, e) for e in endpoints]
        scores = [0.0 if o else m / len(blocks) for m, o in zip(matched, over, strict=True)]
        home_key = blocks[min(len(blocks), self.affinity_blocks) - 1]
        for name in rendezvous_rank(home_key, [e.name for e in endpoints]):
            i = next(i for i, e in enumerate(endpoints) if e.name == name)
            if not over[i]:
                scores[i] = max(scores[i], self.HOME_SCORE)
                break
        return scores

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        self.knowledge.record(request, endpoint)


class SessionAffinityScorer:
    """Keeps a session (header or the OpenAI ``user`` field) on its home replica by rendezvous
    hashing — the same on every router, and only the sessions of a replica that leaves move —
    unless that replica is overloaded (bounded load), when the session is free to move."""

    name = "session-affinity"

    def __init__(self, bounded_load: float) -> None:
        self.bounded_load = bounded_load

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        scores = [0.0] * len(endpoints)
        if request.session is None or not endpoints:
            return scores
        over = _overloaded(endpoints, self.bounded_load)
        key = stable_hash(request.session)
        for name in rendezvous_rank(key, [e.name for e in endpoints]):
            i = next(i for i, e in enumerate(endpoints) if e.name == name)
            if not over[i]:
                scores[i] = 1.0
            break
        return scores

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        return None


def stable_hash(text: str) -> int:
    """A 64-bit hash equal on every router (Python's ``hash`` is salted per process)."""
    raw = text.encode("utf-8", errors="surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


class SLOHeadroomScorer:
    """Prefers the replica predicted to answer the first token soonest relative to the
    request's TTFT objective (1: immediately; 0: at or past the objective), prefill of what it
    does not hold of the prompt included."""

    name = "slo-headroom"

    def __init__(self, knowledge: PrefixKnowledge) -> None:
        self.knowledge = knowledge

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        scores = []
        for e in endpoints:
            objective = _objective(request, e)
            ttft = self.knowledge.predicted_ttft_s(request, e)
            if ttft is None or objective is None:
                scores.append(0.5)
            else:
                scores.append(max(0.0, min(1.0, 1.0 - ttft / objective)))
        return scores

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        return None


class LeastLoadScorer:
    """Prefers the replica with the fewest requests (queued + in flight, as reported plus
    sent since): 1 for the least loaded, 0 for the most."""

    name = "least-load"

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        loads = [e.load for e in endpoints]
        if not loads:
            return []
        low, high = min(loads), max(loads)
        if high == low:
            return [1.0] * len(loads)
        return [(high - load) / (high - low) for load in loads]

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        return None


class RandomScorer:
    """A uniformly random score: with nothing else, what kube-proxy's random choice does."""

    name = "random"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return [self.rng.random() for _ in endpoints]

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        return None


# -- pickers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The ranked replicas (first: the choice; the rest: retries) and which stage decided:
    the scorer whose weighted score most separated the winner from the runner-up."""

    ranked: list[Endpoint]
    stage: str
    scores: dict[str, list[float]]


class Picker(Protocol):
    def pick(
        self,
        request: RoutingRequest,
        endpoints: list[Endpoint],
        scores: dict[str, list[float]],
        weights: dict[str, float],
    ) -> Decision: ...


class MaxScorePicker:
    """Highest weighted sum first; ties broken by rendezvous order of the request's key, so
    that routers with equal knowledge choose alike."""

    def pick(
        self,
        request: RoutingRequest,
        endpoints: list[Endpoint],
        scores: dict[str, list[float]],
        weights: dict[str, float],
    ) -> Decision:
        totals = [
            sum(weights[name] * values[i] for name, values in scores.items())
            for i in range(len(endpoints))
        ]
        tie = {
            n: r for r, n in enumerate(rendezvous_rank(request.key, [e.name for e in endpoints]))
        }
        order = sorted(range(len(endpoints)), key=lambda i: (-totals[i], tie[endpoints[i].name]))
        stage = "only-choice"
        if len(order) > 1:
            first, second = order[0], order[1]
            margins = {
                name: weights[name] * (values[first] - values[second])
                for name, values in scores.items()
            }
            best = max(margins, key=lambda n: margins[n], default=None)
            stage = best if best is not None and margins[best] > 0 else "tie"
        return Decision([endpoints[i] for i in order], stage, scores)


class RoundRobinPicker:
    """Each request to the next replica in turn (a baseline; scorers are ignored)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self,
        request: RoutingRequest,
        endpoints: list[Endpoint],
        scores: dict[str, list[float]],
        weights: dict[str, float],
    ) -> Decision:
        ordered = sorted(endpoints, key=lambda e: e.name)
        start = self._next % len(ordered)
        self._next += 1
        return Decision(ordered[start:] + ordered[:start], "round-robin", scores)


# -- the pipeline -------------------------------------------------------------------------------


class RoutingPipeline:
    """Filters, then scorers, then the picker, as the config composes them."""

    def __init__(
        self,
        filters: list[Filter],
        scorers: list[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        self.filters = filters
        self.scorers = scorers
        self.picker = picker
        self.weights = {s.name: w for s, w in scorers}

    @classmethod
    def from_config(
        cls,
        config: RouterConfig,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> RoutingPipeline:
        rng = rng or random.Random()
        knowledge = PrefixKnowledge(PrefixIndex(config.prefix.index_blocks))
        filters: dict[str, Callable[[], Filter]] = {
            "ready": lambda: ReadyFilter(clock),
            "slo-headroom": lambda: SLOHeadroomFilter(knowledge),
        }
        if config.cascade is not None:
            from goodput.router.cascade import cascade_stages  # it builds on this module

            modality, cascade = cascade_stages(config.cascade, knowledge)
            filters |= {"model-modality": lambda: modality, "model-cascade": lambda: cascade}
        scorers: dict[str, Callable[[], Scorer]] = {
            "prefix-cache": lambda: PrefixCacheScorer(
                knowledge, config.prefix.affinity_blocks, config.bounded_load
            ),
            "session-affinity": lambda: SessionAffinityScorer(config.bounded_load),
            "slo-headroom": lambda: SLOHeadroomScorer(knowledge),
            "least-load": LeastLoadScorer,
            "random": lambda: RandomScorer(rng),
            "adapter-affinity": lambda: _adapter_affinity(config.bounded_load, clock),
        }
        pickers: dict[str, Callable[[], Picker]] = {
            "max-score": MaxScorePicker,
            "round-robin": RoundRobinPicker,
        }
        return cls(
            [filters[name]() for name in config.filters],
            [(scorers[s.type](), s.weight) for s in config.scorers],
            pickers[config.picker](),
        )

    def decide(self, request: RoutingRequest, endpoints: list[Endpoint]) -> Decision:
        """Rank ``endpoints`` for ``request``; an empty ranking when none may take it."""
        candidates = list(endpoints)
        spare: list[Endpoint] = []  # dropped by soft filters: retries of last resort
        for f in self.filters:
            kept = f.filter(request, candidates)
            if not kept:
                return Decision([], f.name, {})
            if f.soft:
                spare += [e for e in candidates if e not in kept]
            elif spare:
                spare = f.filter(request, spare)
            candidates = kept
        scores = {s.name: s.score(request, candidates) for s, _ in self.scorers}
        decision = self.picker.pick(request, candidates, scores, self.weights)
        if not spare:
            return decision
        return Decision(decision.ranked + spare, decision.stage, decision.scores)

    def chosen(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        for scorer, _ in self.scorers:
            scorer.chosen(request, endpoint)

    @property
    def prefix_knowledge(self) -> PrefixKnowledge | None:
        """What the prefix scorer believes each replica holds (for metrics and forgetting)."""
        for scorer, _ in self.scorers:
            if isinstance(scorer, PrefixCacheScorer):
                return scorer.knowledge
        return None


def _adapter_affinity(bounded_load: float, clock: Callable[[], float]) -> Scorer:
    from goodput.router.adapters import AdapterAffinityScorer  # it builds on this module

    return AdapterAffinityScorer(bounded_load, clock)
