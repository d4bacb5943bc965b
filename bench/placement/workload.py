"""A realistic mix of LLMDeployments: model sizes 1B-405B, three SLO classes, skewed demand.

Architectures and memory come from the profiler's catalog (public config.json figures). Prompt
and output lengths are the Azure LLM conversation trace's (2023): median prompt 1,020 tokens,
mean output 211 tokens. Demand per deployment is log-normal (a few hot models, a long tail) and
scaled so the whole workload asks for ``load`` times the fleet's GPUs at the best choice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import ModelDemand, ModelFacts, PlacementSolver, ServingTarget
from goodput.operator.placement.pools import group_pools
from goodput.operator.placement.profiler_facts import model_facts
from goodput.profiler import catalog

PROMPT_TOKENS = 1024
OUTPUT_TOKENS = 211

# (catalog model, quantization, share of deployments)
MODEL_MIX: tuple[tuple[str, str, float], ...] = (
    ("llama-3.2-1b", "none", 0.08),
    ("llama-3.2-3b", "none", 0.08),
    ("gemma-2b", "none", 0.04),
    ("llama-3-8b", "none", 0.16),
    ("mistral-7b", "none", 0.06),
    ("qwen2.5-7b", "none", 0.08),
    ("gemma-7b", "none", 0.03),
    ("gemma-2-9b", "none", 0.05),
    ("gemma-2-27b", "none", 0.08),
    ("mixtral-8x7b", "none", 0.06),
    ("llama-3-70b", "none", 0.12),
    ("qwen2.5-72b", "none", 0.08),
    ("llama-3.1-405b", "fp8", 0.02),
    ("llama-3.1-405b", "none", 0.02),
)

# (name, TTFT s, TPOT s, concurrent sequences per replica, share)
SLO_CLASSES = (
    ("interactive", 1.0, 0.05, 32, 0.3),
    ("standard", 2.0, 0.08, 64, 0.5),
    ("relaxed", 6.0, 0.15, 128, 0.2),
)

# Preference lists users write, with how often they write one (the rest leave it to us).
PREFERENCES = (
    (("H100", "H200"), 0.08),
    (("A100",), 0.05),
    (("L4", "A10G"), 0.06),
    (("L40S",), 0.03),
    (("H200",), 0.03),
)


def _facts() -> dict[tuple[str, str], ModelFacts]:
    return {
        (name, quant): model_facts(catalog.get(name), quantization=quant)
        for name, quant, _ in MODEL_MIX
    }


def workload(
    count: int,
    nodes: Sequence[GpuNode],
    solver: PlacementSolver,
    *,
    load: float,
    seed: int,
    placeable_only: bool = False,
) -> list[ModelDemand]:
    """``count`` deployments whose demand adds up to about ``load`` x the fleet's free GPUs.

    ``placeable_only``: draw again (up to 20 times) a model the solver has no option for on
    this fleet (the small instances, whose solver has no pipeline-parallel shapes)."""
    rng = random.Random(seed)
    facts = _facts()
    models = [(name, quant) for name, quant, _ in MODEL_MIX]
    model_weights = [share for _, _, share in MODEL_MIX]
    pools = list(group_pools(nodes).values())
    drafts: list[tuple[ModelDemand, float, float]] = []  # demand, GPU weight, rps per GPU
    for i in range(count):
        for _ in range(20 if placeable_only else 1):
            name, quant = rng.choices(models, model_weights)[0]
            if not placeable_only or solver.options(
                ModelDemand("probe", facts[(name, quant)],
                            ServingTarget(6.0, 0.15, PROMPT_TOKENS, OUTPUT_TOKENS, 128)),
                pools,
            )[0]:  # fmt: skip
                break
        slo, ttft, tpot, concurrency, _ = rng.choices(SLO_CLASSES, [c[4] for c in SLO_CLASSES])[0]
        if "405b" in name and slo == "interactive":
            slo, ttft, tpot, concurrency = "standard", 2.0, 0.08, 64
        prefs: tuple[str, ...] = ()
        roll = rng.random()
        for pref, share in PREFERENCES:
            if roll < share:
                prefs = pref
                break
            roll -= share
        demand = ModelDemand(
            name=f"team-{i % 40:02d}/{name}-{slo}-{i:04d}",
            model=facts[(name, quant)],
            target=ServingTarget(ttft, tpot, PROMPT_TOKENS, OUTPUT_TOKENS, concurrency),
            min_replicas=1 if rng.random() < 0.7 else 2,
            max_replicas=64,
            gpu_types=prefs,
        )
        options, _ = solver.options(demand, pools)
        if prefs and not options:  # a preference nobody would keep: the model does not fit it
            demand = replace(demand, gpu_types=())
            options, _ = solver.options(demand, pools)
        per_gpu = options[0].requests_per_second / options[0].shape.gpus if options else 0.0
        drafts.append((demand, rng.lognormvariate(0.0, 1.2), per_gpu))
    free = sum(n.free for n in nodes)
    scale = free * load / sum(w for _, w, per_gpu in drafts if per_gpu > 0)
    return [
        replace(demand, target=replace(demand.target, target_rps=scale * w * per_gpu))
        if per_gpu > 0
        else demand
        for demand, w, per_gpu in drafts
    ]
