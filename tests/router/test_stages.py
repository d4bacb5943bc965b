"""Each routing stage on its own, and the pipeline composed from config."""

from __future__ import annotations

import random

from goodput.api.load_report import LoadReport
from goodput.api.prefix_blocks import BlockSketch, block_hashes
from goodput.api.router_config import RouterConfig
from goodput.router.endpoints import Endpoint
from goodput.router.prefix import PrefixIndex
from goodput.router.stages import (
    LeastLoadScorer,
    MaxScorePicker,
    PrefixCacheScorer,
    PrefixKnowledge,
    ReadyFilter,
    RoutingPipeline,
    RoutingRequest,
    SessionAffinityScorer,
    SLOHeadroomFilter,
    SLOHeadroomScorer,
)


def endpoint(name: str, **report: object) -> Endpoint:
    e = Endpoint(name, f"http://{name}")
    fields: dict[str, object] = {"ready": True, "queue": 0, "inflight": 0, "ttftObjectiveS": 1.0}
    fields.update(report)
    e.report = LoadReport.model_validate(fields)
    return e


def request(text: str = "", session: str | None = None, key: int = 7) -> RoutingRequest:
    return RoutingRequest(
        model="m",
        blocks=block_hashes(text, [], 16),
        prompt_tokens=len(text) // 4,
        block_tokens=4.0,
        session=session,
        tenant="t",
        priority="default",
        ttft_objective_s=None,
        key=key,
    )


def test_ready_filter_drops_unready_draining_failed_and_self_reported_unready() -> None:
    ok = endpoint("ok")
    unready = endpoint("unready")
    unready.ready = False
    draining = endpoint("draining")
    draining.draining = True
    failed = endpoint("failed")
    failed.failed(now=100.0)
    says_no = endpoint("says-no", ready=False)
    kept = ReadyFilter(lambda: 100.0).filter(request(), [ok, unready, draining, failed, says_no])
    assert kept == [ok]


def test_slo_filter_keeps_only_replicas_predicted_in_time_when_there_are_any() -> None:
    fast = endpoint("fast", predictedWaitS=0.1, firstTokenS=0.1)
    slow = endpoint("slow", predictedWaitS=5.0, firstTokenS=0.1)
    unknown = endpoint("unknown")  # no prediction yet: not excluded
    f = SLOHeadroomFilter(PrefixKnowledge(PrefixIndex(100)))
    assert f.filter(request(), [fast, slow, unknown]) == [fast, unknown]
    assert f.filter(request(), [slow]) == [slow]  # nobody in time: left to the scorers


def test_slo_scorer_rates_headroom_against_the_objective() -> None:
    scores = SLOHeadroomScorer(PrefixKnowledge(PrefixIndex(100))).score(
        request(),
        [endpoint("a", predictedWaitS=0.0), endpoint("b", predictedWaitS=0.5), endpoint("c")],
    )
    assert scores == [1.0, 0.5, 0.5]


def test_least_load_scorer_counts_what_was_sent_since_the_last_report() -> None:
    a, b = endpoint("a", inflight=2), endpoint("b", inflight=1)
    assert LeastLoadScorer().score(request(), [a, b]) == [0.0, 1.0]
    b.sent_since_report = 3
    assert LeastLoadScorer().score(request(), [a, b]) == [1.0, 0.0]


def test_prefix_scorer_prefers_the_holder_then_the_home_replica() -> None:
    scorer = PrefixCacheScorer(PrefixKnowledge(PrefixIndex(1000)), 2, bounded_load=1.25)
    a, b, c = endpoint("a"), endpoint("b"), endpoint("c")
    req = request("p" * 160)
    first = scorer.score(req, [a, b, c])
    assert sorted(first) == [0.0, 0.0, 0.5]  # nobody holds it: its home only
    home = [a, b, c][first.index(0.5)]
    other = next(e for e in (a, b, c) if e is not home)
    scorer.chosen(req, other)  # it went elsewhere anyway (e.g. load)
    again = scorer.score(req, [a, b, c])
    assert again[[a, b, c].index(other)] == 1.0
    # A different prompt sharing the first two blocks has the same home: routers agree on it.
    sibling = request("p" * 32 + "q" * 128)
    assert scorer.score(sibling, [a, b, c])[[a, b, c].index(home)] == 0.5


def test_affinity_yields_to_bounded_load() -> None:
    scorer = PrefixCacheScorer(PrefixKnowledge(PrefixIndex(1000)), 2, bounded_load=1.25)
    hot, idle = endpoint("hot", inflight=10), endpoint("idle")
    req = request("p" * 160)
    scorer.chosen(req, hot)
    scores = scorer.score(req, [hot, idle])
    assert scores[0] == 0.0  # 10 > 1.25 * 5 + 1
    sessions = SessionAffinityScorer(bounded_load=1.25)
    for key in range(20):
        s = sessions.score(request(session=f"s{key}"), [hot, idle])
        assert s[0] == 0.0


def test_affinity_holds_through_a_queue_short_of_the_bound() -> None:
    """A replica holding a request or two in its gateway keeps its sessions and prefixes:
    moving would re-prefill the history elsewhere (the SLO stages weigh that, not this)."""
    scorer = PrefixCacheScorer(PrefixKnowledge(PrefixIndex(1000)), 2, bounded_load=1.25)
    busy = endpoint("busy", queue=1, inflight=1, limit=1)
    free = endpoint("free")
    assert busy.saturated and not free.saturated
    req = request("p" * 160)
    scorer.chosen(req, busy)
    assert scorer.score(req, [busy, free])[0] == 1.0  # 2 <= 1.25 * 1 + 1
    sessions = SessionAffinityScorer(bounded_load=1.25)
    homes = [sessions.score(request(session=f"s{k}"), [busy, free]) for k in range(20)]
    assert any(s[0] == 1.0 for s in homes)  # sessions at home on the busy replica stay there


def test_slo_stages_count_the_prefill_of_what_a_replica_does_not_hold() -> None:
    """The replica holding the prompt waits 0.3 s; the idle one would prefill 400 tokens at
    3 ms each (1.2 s): against a 1 s objective the holder is the one in time."""
    knowledge = PrefixKnowledge(PrefixIndex(1000))
    holder = endpoint("holder", predictedWaitS=0.3, firstTokenS=0.05, prefillSPerToken=0.003)
    cold = endpoint("cold", predictedWaitS=0.0, firstTokenS=0.05, prefillSPerToken=0.003)
    req = request("h" * 1600)  # 100 blocks of 16 chars, 400 tokens
    knowledge.index.record("holder", req.blocks)
    assert knowledge.uncached_tokens(req, holder) == 0.0
    assert knowledge.uncached_tokens(req, cold) == 400.0
    assert SLOHeadroomFilter(knowledge).filter(req, [holder, cold]) == [holder]
    scores = SLOHeadroomScorer(knowledge).score(req, [holder, cold])
    assert scores[0] > scores[1] == 0.0
    # Without a prefill rate (an older gateway) only the queue counts: the idle one wins.
    for e in (holder, cold):
        assert e.report is not None
        e.report = e.report.model_copy(update={"prefill_s_per_token": None})
    assert SLOHeadroomFilter(knowledge).filter(req, [holder, cold]) == [holder, cold]
    assert SLOHeadroomScorer(knowledge).score(req, [holder, cold])[1] > 0.9


def test_what_a_replica_s_gateway_reports_it_holds_counts_as_held() -> None:
    knowledge = PrefixKnowledge(PrefixIndex(100))
    a, b = endpoint("a"), endpoint("b")
    req = request("s" * 320)  # 20 blocks of 16 characters
    b.held = BlockSketch.of(req.blocks[:15])
    assert (knowledge.matched_blocks(req, a), knowledge.matched_blocks(req, b)) == (0, 15)
    assert knowledge.uncached_tokens(req, b) == req.prompt_tokens - 15 * 4
    assert PrefixCacheScorer(knowledge, 2, bounded_load=1.25).score(req, [a, b])[1] == 0.75


def test_sessions_spread_and_stick() -> None:
    scorer = SessionAffinityScorer(bounded_load=1.25)
    a, b = endpoint("a"), endpoint("b")
    homes = {scorer.score(request(session=f"user-{i}"), [a, b]).index(1.0) for i in range(40)}
    assert homes == {0, 1}
    first = scorer.score(request(session="alice"), [a, b])
    assert all(scorer.score(request(session="alice"), [a, b]) == first for _ in range(5))
    assert scorer.score(request(session=None), [a, b]) == [0.0, 0.0]


def test_the_picker_sums_weights_and_names_the_deciding_stage() -> None:
    a, b = endpoint("a"), endpoint("b")
    decision = MaxScorePicker().pick(
        request(),
        [a, b],
        {"prefix-cache": [1.0, 0.0], "least-load": [0.0, 1.0]},
        {"prefix-cache": 3.0, "least-load": 1.0},
    )
    assert decision.ranked == [a, b]
    assert decision.stage == "prefix-cache"
    tie = MaxScorePicker().pick(request(), [a, b], {"least-load": [1.0, 1.0]}, {"least-load": 1.0})
    assert tie.stage == "tie"
    same = MaxScorePicker().pick(request(), [b, a], {"least-load": [1.0, 1.0]}, {"least-load": 1.0})
    assert same.ranked == tie.ranked  # ties break alike whatever the order


def test_the_pipeline_composes_what_the_config_names() -> None:
    config = RouterConfig.model_validate(
        {"endpoints": ["http://a"], "scorers": [{"type": "least-load"}], "picker": "round-robin"}
    )
    pipeline = RoutingPipeline.from_config(config, lambda: 0.0, random.Random(1))
    assert [f.name for f in pipeline.filters] == ["ready", "slo-headroom"]
    assert [s.name for s, _ in pipeline.scorers] == ["least-load"]
    assert pipeline.prefix_knowledge is None
    a, b = endpoint("a"), endpoint("b")
    names = [pipeline.decide(request(), [a, b]).ranked[0].name for _ in range(4)]
    assert names == ["a", "b", "a", "b"]
    a.ready = b.ready = False
    assert pipeline.decide(request(), [a, b]).ranked == []


def test_replicas_the_slo_filter_dropped_are_retries_of_last_resort() -> None:
    config = RouterConfig.model_validate({"endpoints": ["http://a"]})
    pipeline = RoutingPipeline.from_config(config, lambda: 0.0, random.Random(1))
    fast = endpoint("fast", predictedWaitS=0.1, firstTokenS=0.1)
    slow = endpoint("slow", predictedWaitS=5.0, firstTokenS=0.1)
    assert pipeline.decide(request(), [slow, fast]).ranked == [fast, slow]
    slow.ready = False  # the ready filter is hard: an unready replica is no retry
    assert pipeline.decide(request(), [slow, fast]).ranked == [fast]
