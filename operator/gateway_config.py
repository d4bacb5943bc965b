"""The gateway's ConfigMap: the LLMDeployment's serving policy in the gateway's own contract.

The ConfigMap's content hash goes into the pod template (``goodput.dev/config-hash``), so a policy
change rolls the pods: the gateway reads its config once, at start-up.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from goodput.api.gateway_config import (
    GatewayConfig,
    PredictorConfig,
    PriorityClass,
    RefitConfig,
    RequestLogConfig,
    SLOTargets,
)
from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import naming
from goodput.operator.engine_args import ENGINE_PORT as ENGINE_PORT
from goodput.operator.engine_args import engine_facts
from goodput.operator.placement.selection import Placement

CONFIG_KEY = "gateway.json"
CONFIG_DIR = "/etc/goodput"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
#: The gateway's writable state (an emptyDir, ``gateway-state``): its root filesystem is read-only.
STATE_DIR = "/var/lib/goodput"
#: Where a pod's gateway keeps its request log, which the online refit learns from.
REQUEST_LOG_PATH = f"{STATE_DIR}/requests.jsonl"


def gateway_config(obj: LLMDeployment, placement: Placement | None = None) -> GatewayConfig:
    """The gateway config an LLMDeployment's pods run with: the spec's serving policy, what the
    placement's memory model says about the engine (KV tokens, the sequences the engine runs at
    once, the context length), and the learned length predictor refitted from the pod's own
    request log."""
    spec = obj.spec
    sched = spec.scheduling
    engine = placement.engine if placement is not None else None
    facts = engine_facts(spec, engine)
    return GatewayConfig(
        deployment=obj.metadata.name,
        namespace=obj.metadata.namespace,
        served_model_name=spec.model.name,
        adapters=[a.name for a in spec.adapters],
        engine_url=f"http://127.0.0.1:{ENGINE_PORT}",
        max_model_len=facts.max_model_len,
        max_concurrency=facts.max_num_seqs,
        kv_cache_tokens=facts.kv_cache_tokens,
        # Cut as the router cuts, so that its prefix stages can read what the engine holds.
        prefix_block_chars=spec.routing.router.block_chars if spec.routing.prefix_aware else None,
        slo=SLOTargets(
            ttft_ms=spec.slo.ttft_ms,
            tpot_ms=spec.slo.tpot_ms,
            e2e_ms=spec.slo.e2e_ms,
            percentile=spec.slo.percentile,
            attainment=spec.slo.attainment,
        ),
        policy=sched.policy,
        overload=sched.overload,
        max_queue_length=sched.max_queue_length,
        max_queue_delay_ms=sched.max_queue_delay_ms,
        priority_classes=[
            PriorityClass(name=p.name, rank=p.rank, slo_scale=p.slo_scale)
            for p in sched.priority_classes
        ],
        default_priority=sched.default_priority,
        predictor=PredictorConfig(kind="learned", refit=RefitConfig()),
        # The refit learns from the prompts; the log is the pod's own (0600, on its emptyDir).
        request_log=RequestLogConfig(path=REQUEST_LOG_PATH, keep_prompts=True),
    )


def render(config: GatewayConfig) -> str:
    """Stable JSON (sorted keys) so the hash changes only when the content does."""
    return json.dumps(
        config.model_dump(by_alias=True, exclude_none=True, mode="json"), indent=2, sort_keys=True
    )


def config_hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def config_map(obj: LLMDeployment, placement: Placement | None = None) -> dict[str, Any]:
    """The ConfigMap holding the gateway's config file."""
    meta = obj.metadata
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.object_meta(
            naming.config_map_name(meta.name), meta.namespace, meta.name, meta.uid
        ),
        "data": {CONFIG_KEY: render(gateway_config(obj, placement))},
    }
