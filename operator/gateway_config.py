"""The gateway's ConfigMap: the LLMDeployment's serving policy in the gateway's own contract.

The hash of ``gateway.json`` goes into the pod template (``goodput.dev/config-hash``), so a policy
change rolls the pods: the gateway reads that file once, at start-up. ``adapters.json`` (the
adapter catalog) is left out of the hash: the gateway re-reads it while it runs (the kubelet
refreshes a mounted ConfigMap in place), so adapters come and go without a rollout.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from goodput.api.gateway_config import (
    AdapterCatalog,
    AdapterEntry,
    AdapterObjectives,
    GatewayConfig,
    LoRAServing,
    PredictorConfig,
    PriorityClass,
    RefitConfig,
    RequestLogConfig,
    SLOTargets,
)
from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import naming
from goodput.operator.engine_args import ENGINE_PORT as ENGINE_PORT
from goodput.operator.engine_args import engine_facts, in_pod_path
from goodput.operator.placement.selection import Placement

CONFIG_KEY = "gateway.json"
ADAPTERS_KEY = "adapters.json"
CONFIG_DIR = "/etc/goodput"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
ADAPTERS_PATH = f"{CONFIG_DIR}/{ADAPTERS_KEY}"
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
        lora=None
        if spec.lora_capacity is None
        else LoRAServing(catalog_path=ADAPTERS_PATH, max_loaded=spec.lora_capacity.max_cpu_loras),
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


def adapter_catalog(obj: LLMDeployment) -> AdapterCatalog:
    """``spec.adapters`` as the gateway loads them: each source where the pod sees it (a
    ``pvc://`` claim is mounted into the engine by ``workload``; the engine reads the path)."""
    return AdapterCatalog(
        adapters=[
            AdapterEntry(
                name=a.name,
                path=in_pod_path(a.source),
                slo=AdapterObjectives(ttft_ms=a.slo.ttft_ms, tpot_ms=a.slo.tpot_ms),
                priority=a.priority,
                requests_per_second=a.quota.requests_per_second,
                burst=a.quota.burst,
                tokens_per_minute=a.quota.tokens_per_minute,
            )
            for a in obj.spec.adapters
        ]
    )


def render(config: GatewayConfig | AdapterCatalog) -> str:
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


def rolling_hash(config_map: dict[str, Any]) -> str:
    """The hash that rolls the pods: of what the gateway reads only at start (not the adapter
    catalog, which it re-reads while running)."""
    return config_hash(config_map["data"][CONFIG_KEY])


def config_map(obj: LLMDeployment, placement: Placement | None = None) -> dict[str, Any]:
    """The ConfigMap holding the gateway's config file and its adapter catalog."""
    meta = obj.metadata
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.object_meta(
            naming.config_map_name(meta.name), meta.namespace, meta.name, meta.uid
        ),
        "data": {
            CONFIG_KEY: render(gateway_config(obj, placement)),
            ADAPTERS_KEY: render(adapter_catalog(obj)),
        },
    }
