"""The profile drives the pod: the memory model's engine flags for what the spec leaves unset,
the gateway told the KV capacity and concurrency, the learned predictor refitted from the pod's
request log, status.engine; engine.args that would fight the operator are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmd_builders import gpu_nodes, make_body, make_node
from test_operator_reconcile import FakeKube, _reconciler, _run

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import gateway_config, workload
from goodput.operator.engine_args import engine_facts, flag_name, refusal, user_flags
from goodput.operator.model_memory import EstimatedMemory
from goodput.operator.placement.first_fit import FirstFitSelector
from goodput.operator.placement.selection import Placement
from goodput.profiler import catalog

ROOT = Path(__file__).resolve().parents[2]
H100 = "NVIDIA-H100-80GB-HBM3"
CPU = "Goodput-CPU-vLLM"


def _obj(**spec: Any) -> LLMDeployment:
    return LLMDeployment.model_validate(make_body(**spec))


def _placed(obj: LLMDeployment, product: str = H100, memory_mib: int = 81559) -> Placement:
    """What the first-fit selector answers on one node of ``product`` (the fit it makes anyway
    carries the memory model's flags)."""
    nodes = gpu_nodes([make_node("n0", product, gpus=2, memory_mib=memory_mib)])
    placement = FirstFitSelector(EstimatedMemory()).select(obj.spec, nodes)
    assert isinstance(placement, Placement), placement
    return placement


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_the_memory_model_fills_what_the_spec_leaves_unset() -> None:
    obj = _obj()
    placement = _placed(obj)
    assert placement.engine is not None
    args = workload.engine_args(obj, placement, workload.Volumes())
    assert _flag(args, "--max-model-len") == "8192"  # llama-3-8b's positions
    assert _flag(args, "--max-num-seqs") == str(placement.engine.max_num_seqs)
    assert _flag(args, "--max-num-batched-tokens") == "8192"
    assert "--kv-cache-memory-bytes" not in args, "a GPU engine measures its own memory"
    # An H100 holds far more than 256 typical requests of llama-3-8b: vLLM's default cap.
    assert placement.engine.max_num_seqs == 256
    assert placement.engine.kv_cache_tokens > 400_000


def test_the_users_values_win_over_the_memory_models() -> None:
    obj = _obj(
        model={"name": "m", "architecture": "llama-3-8b", "maxModelLen": 4096},
        engine={"args": ["--max_num_seqs=32", "--max-num-batched-tokens", "2048"]},
    )
    args = workload.engine_args(obj, _placed(obj), workload.Volumes())
    assert args.count("--max-model-len") == 1 and _flag(args, "--max-model-len") == "4096"
    assert "--max-num-seqs" not in args  # the user's, last, in their spelling
    assert args[-3:] == ["--max_num_seqs=32", "--max-num-batched-tokens", "2048"]
    assert args.count("--max-num-batched-tokens") == 1
    facts = engine_facts(obj.spec, _placed(obj).engine)
    assert (facts.max_model_len, facts.max_num_seqs, facts.max_num_batched_tokens) == (
        4096,
        32,
        2048,
    )


def test_the_cpu_engine_is_told_its_kv_cache_size() -> None:
    obj = LLMDeployment.model_validate(
        yaml.safe_load((ROOT / "examples" / "llmdeployment-tiny-cpu.yaml").read_text())
    )
    memory = catalog.gpu("CPU-vLLM").memory_bytes // 2**20
    placement = _placed(obj, CPU, memory)
    assert placement.engine is not None
    args = workload.engine_args(obj, placement, workload.Volumes())
    assert _flag(args, "--model") == "/models/goodput-models/tiny-llama"
    kv_bytes = int(_flag(args, "--kv-cache-memory-bytes") or 0)
    assert kv_bytes == placement.engine.kv_cache_bytes
    # The KV cache holds the tokens the gateway is told about (tiny-llama: 4 KiB per token).
    assert kv_bytes // 4096 >= placement.engine.kv_cache_tokens > 2048


def test_unknown_models_get_no_profiled_flags() -> None:
    obj = _obj(model={"name": "acme/mystery-model"})
    placement = _placed(obj)
    assert placement.engine is None
    args = workload.engine_args(obj, placement, workload.Volumes())
    assert not {"--max-num-seqs", "--max-model-len", "--max-num-batched-tokens"} & set(args)
    config = gateway_config.gateway_config(obj, placement)
    assert config.kv_cache_tokens is None and config.max_concurrency is None


def test_the_gateway_config_carries_the_placements_engine_and_the_learned_predictor() -> None:
    obj = _obj()
    placement = _placed(obj)
    assert placement.engine is not None
    config = gateway_config.gateway_config(obj, placement)
    assert config.kv_cache_tokens == placement.engine.kv_cache_tokens
    assert config.max_concurrency == placement.engine.max_num_seqs
    assert config.max_model_len == 8192
    assert config.predictor.kind == "learned" and config.predictor.model_path is None
    assert config.predictor.refit is not None
    assert config.request_log is not None
    assert config.request_log.path == f"{gateway_config.STATE_DIR}/requests.jsonl"
    data = json.loads(gateway_config.config_map(obj, placement)["data"]["gateway.json"])
    assert data["requestLog"]["path"] == "/var/lib/goodput/requests.jsonl"
    assert config.prefix_block_chars is None  # no prefix-aware router: nothing to report


def test_a_prefix_aware_deployment_s_gateways_cut_prompts_as_its_router_does() -> None:
    obj = _obj(routing={"prefixAware": True, "router": {"blockChars": 96}})
    config = gateway_config.gateway_config(obj, _placed(obj))
    assert config.prefix_block_chars == 96


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "9000"], "--port"),
        (["--host=0.0.0.0"], "--host"),
        (["--model", "other"], "--model"),
        (["--served_model_name", "x"], "--served-model-name"),
        (["-tp", "2"], "-tp"),
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size"),
        (["--max-model-len", "4096"], "spec.model.maxModelLen"),
        (["--dtype", "half"], "spec.model.dtype"),
        (["--no-enable-prefix-caching"], "spec.kvCache.prefixCaching"),
        (["--kv-offloading-size", "4"], "spec.kvCache.cpuOffloadGiB"),
        (["--max-lora-rank", "32"], "spec.lora.maxRank"),
    ],
)
def test_engine_args_that_fight_the_operator_are_refused(args: list[str], named: str) -> None:
    found = refusal(_obj(engine={"args": args}).spec)
    assert found is not None and found.reason == "EngineArgsConflict"
    assert named in found.message


def test_harmless_engine_args_and_negative_values_pass() -> None:
    spec = _obj(engine={"args": ["--seed", "-1", "--max-log-len", "32", "--enforce-eager"]}).spec
    assert refusal(spec) is None
    assert user_flags(spec.engine.args) == {
        "--seed": "-1",
        "--max-log-len": "32",
        "--enforce-eager": None,
    }
    assert flag_name("-1") is None and flag_name("--a_b=c") == "--a-b"


def test_a_context_beyond_the_models_positions_is_refused_unless_forced() -> None:
    model = {"name": "m", "architecture": "llama-3-8b", "maxModelLen": 16384}
    found = refusal(_obj(model=model).spec)
    assert found is not None and found.reason == "UnsupportedEngineOption"
    assert "8192" in found.message
    forced = _obj(
        model=model, engine={"env": [{"name": "VLLM_ALLOW_LONG_MAX_MODEL_LEN", "value": "1"}]}
    )
    assert refusal(forced.spec) is None


def test_the_reconciler_refuses_conflicting_engine_args_with_a_condition() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body(engine={"args": ["--port", "9000"]}))
    r, _ = _reconciler(kube)
    _, status = _run(r, kube)
    assert kube.applies == 0, "nothing is applied that would crash-loop"
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "EngineArgsConflict")
    assert "--port" in placed["message"] and status["phase"] == "Failed"


def test_status_engine_shows_what_the_pods_run_with() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body())
    r, _ = _reconciler(kube)
    _, status = _run(r, kube)
    engine = status["engine"]
    dep = kube.deployment("llama-r0")
    container = next(
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "engine"
    )
    assert engine["args"] == container["args"]
    cm = next(o for (kind, _, _), o in kube.objects.items() if kind == "ConfigMap")
    config = json.loads(cm["data"]["gateway.json"])
    assert engine["kvCacheTokens"] == config["kvCacheTokens"]
    assert engine["gatewayMaxConcurrency"] == config["maxConcurrency"] == engine["maxNumSeqs"]
    assert engine["predictor"] == "learned" and engine["maxModelLen"] == 8192
    LLMDeployment.model_validate(copy.deepcopy(kube.parent()))  # the status schema holds it
