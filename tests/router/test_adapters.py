"""The adapter-affinity stage: requests for an adapter go where it is loaded, a cold adapter to
one home every router agrees on, a hot one spills past the bounded load; cold loads counted."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest

from goodput.api.router_config import RouterConfig
from goodput.router.adapters import AdapterAffinityScorer, AdapterColdLoads
from goodput.router.endpoints import Endpoint
from goodput.router.stages import RoutingPipeline, RoutingRequest

from .test_stages import endpoint, request

CATALOG = ["sql", "chat", "docs"]


def replica(name: str, loaded: list[str], **report: object) -> Endpoint:
    adapters = {"catalog": CATALOG, "loaded": loaded, "capacity": 2}
    return endpoint(name, adapters=adapters, **report)


def for_model(model: str) -> RoutingRequest:
    return dataclasses.replace(request(), model=model)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_request_goes_where_its_adapter_is_loaded() -> None:
    scorer = AdapterAffinityScorer(bounded_load=1.25, clock=Clock())
    replicas = [replica("a", ["chat"]), replica("b", ["sql", "chat"]), replica("c", [])]
    assert scorer.score(for_model("sql"), replicas) == [0.0, 1.0, 0.0]
    assert scorer.score(for_model("chat"), replicas) == [1.0, 1.0, 0.0]


def test_the_base_model_is_left_to_the_other_stages() -> None:
    scorer = AdapterAffinityScorer(bounded_load=1.25, clock=Clock())
    replicas = [replica("a", ["chat"]), replica("b", [])]
    assert scorer.score(for_model("m"), replicas) == [0.0, 0.0]
    plain = [endpoint("a"), endpoint("b")]
    assert scorer.score(for_model("sql"), plain) == [0.0, 0.0]


def test_a_cold_adapter_has_one_home_and_stays_there_until_the_report_says_so() -> None:
    clock = Clock()
    routers = [AdapterAffinityScorer(1.25, clock) for _ in range(2)]
    replicas = [replica(n, []) for n in "abcd"]
    homes = [s.score(for_model("docs"), replicas) for s in routers]
    assert homes[0] == homes[1] and sorted(homes[0]) == [0.0, 0.0, 0.0, 0.5]
    home = replicas[homes[0].index(0.5)]
    routers[0].chosen(for_model("docs"), home)
    assert routers[0].cold_loads == {"docs": 1}
    # Sent there a moment ago: loaded there as far as this router knows, and no second cold load.
    assert routers[0].score(for_model("docs"), replicas)[replicas.index(home)] == 1.0
    routers[0].chosen(for_model("docs"), home)
    assert routers[0].cold_loads == {"docs": 1}
    clock.now += 60  # long past: only the reports count, and they do not list it
    assert routers[0].score(for_model("docs"), replicas)[replicas.index(home)] == 0.5


def test_a_hot_adapter_spills_past_the_bounded_load() -> None:
    scorer = AdapterAffinityScorer(bounded_load=1.25, clock=Clock())
    replicas = [replica("a", ["sql"], inflight=12), replica("b", []), replica("c", [])]
    scores = scorer.score(for_model("sql"), replicas)
    assert scores[0] == 0.0, "overloaded: no affinity"
    scorer.chosen(for_model("sql"), replicas[1])
    assert scorer.cold_loads == {"sql": 1}


def test_the_pipeline_composes_it_and_the_router_counts_cold_loads() -> None:
    config = RouterConfig.model_validate(
        {
            "endpoints": ["http://a"],
            "scorers": [
                {"type": "adapter-affinity", "weight": 4},
                {"type": "least-load", "weight": 1},
            ],
        }
    )
    pipeline = RoutingPipeline.from_config(config, Clock())
    replicas = [replica("a", ["sql"], inflight=2), replica("b", [])]
    decision = pipeline.decide(for_model("sql"), replicas)
    assert [e.name for e in decision.ranked] == ["a", "b"], "loaded beats less loaded"
    assert decision.stage == "adapter-affinity"
    pipeline.chosen(for_model("chat"), replicas[1])
    registry = CollectorRegistry()
    registry.register(AdapterColdLoads("r", lambda: [s for s, _ in pipeline.scorers]))
    text = generate_latest(registry).decode()
    assert 'goodput_router_adapter_cold_loads_total{adapter="chat",router="r"} 1.0' in text


def test_a_cold_adapter_is_homed_where_a_slot_is_free() -> None:
    clock = Clock()
    scorer = AdapterAffinityScorer(bounded_load=1.25, clock=clock)
    full = [replica("a", ["sql", "chat"]), replica("b", ["sql", "chat"]), replica("c", ["chat"])]
    assert scorer.score(for_model("docs"), full) == [0.0, 0.0, 0.5]
    # What this router sent counts before the report says so: c is full now too.
    scorer.chosen(for_model("sql"), full[2])
    assert sorted(scorer.score(for_model("docs"), full)) == [0.0, 0.0, 0.5], "any, none free"
