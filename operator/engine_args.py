"""The engine argument contract: the vLLM OpenAI-server arguments a serving pod runs with.

Three sources, in this order of authority:

1. **The operator's own flags** (``OWNED``): the model, its served name, loopback host and port,
   and the parallelism the placement chose. The pod works only if these are exactly the
   operator's, so ``engine.args`` may not set them.
2. **Spec fields** (``SPEC_FIELDS``): dtype, quantization, revision, context length, memory
   utilization, prefix caching, KV-cache dtype, CPU KV offload, LoRA capacity. The placement and
   the memory model read these fields, so setting the same flag in ``engine.args`` would make
   the engine disagree with what the operator planned for; the field is the one place.
3. **The memory model's flags** (``_profiled``), from the placement's ``VllmFlags``: the
   sequences the engine runs at once, its prefill chunk, the context length when the spec has
   none and, on a product whose engine cannot measure its own memory (vLLM's CPU backend), the
   KV cache bytes. ``engine.args`` may set any of them: the user's value wins and the operator's
   is left out.

Everything else in ``engine.args`` is passed through verbatim, last. The spellings are those of
the vLLM version the engine image pins (``goodput.api.images``); a test parses every argument
list the operator can write with that vLLM's own parser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from goodput.api.llmdeployment import PVC_SOURCE, LLMDeploymentSpec
from goodput.operator.gpu_catalog import gpu_for_label
from goodput.operator.model_memory import CatalogMemory
from goodput.operator.placement.selection import Placement
from goodput.profiler.memory import VllmFlags

ENGINE_HOST = "127.0.0.1"
ENGINE_PORT = 8000
#: Where ``pvc://`` sources are mounted in the pod.
MODELS_DIR = "/models"


def in_pod_path(source: str) -> str:
    """Where the pod sees a source: ``pvc://CLAIM/PATH`` is ``/models/CLAIM/PATH`` (the claim
    mounted read-only, ``workload.Volumes``); anything else is passed on as it is."""
    m = PVC_SOURCE.match(source)
    return source if m is None else f"{MODELS_DIR}/{m.group('claim')}{m.group('path') or ''}"


#: vLLM serves ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` only with this set.
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

#: Flags only the operator sets (vLLM's short aliases included), and why.
OWNED: dict[str, str] = {
    "--model": "the operator loads spec.model.source (or name)",
    "--served-model-name": "the served name is spec.model.name",
    "--host": "the engine listens on loopback, behind the gateway",
    "--port": "the gateway reaches the engine on port 8000",
    "--tensor-parallel-size": "placement chooses it (or spec.resources.parallelism)",
    "-tp": "placement chooses it (or spec.resources.parallelism)",
    "--pipeline-parallel-size": "placement chooses it (or spec.resources.parallelism)",
    "-pp": "placement chooses it (or spec.resources.parallelism)",
    "--data-parallel-size": "replicas are separate pods (spec.replicas)",
    "-dp": "replicas are separate pods (spec.replicas)",
}
#: Flags a spec field governs: the field to set instead.
SPEC_FIELDS: dict[str, str] = {
    "--dtype": "spec.model.dtype",
    "--quantization": "spec.model.quantization",
    "-q": "spec.model.quantization",
    "--revision": "spec.model.revision",
    "--max-model-len": "spec.model.maxModelLen",
    "--gpu-memory-utilization": "spec.resources.gpuMemoryUtilization",
    "--enable-prefix-caching": "spec.kvCache.prefixCaching",
    "--no-enable-prefix-caching": "spec.kvCache.prefixCaching",
    "--kv-cache-dtype": "spec.kvCache.dtype",
    "--kv-offloading-size": "spec.kvCache.cpuOffloadGiB",
    "--enable-lora": "spec.lora.enabled (or spec.adapters)",
    "--no-enable-lora": "spec.lora.enabled (or spec.adapters)",
    "--max-loras": "spec.lora.maxLoras",
    "--max-lora-rank": "spec.lora.maxRank",
    "--max-cpu-loras": "spec.lora.maxCpuLoras",
    "--lora-modules": "spec.adapters (loaded at runtime by the gateway)",
}


def flag_name(arg: str) -> str | None:
    """The flag an argument names, as vLLM reads it (``--max_num_seqs=8`` is
    ``--max-num-seqs``: vLLM's parser accepts underscores); None for a value."""
    if not arg.startswith("-") or arg == "-" or _is_number(arg):
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        return "--" + name[2:].replace("_", "-")
    return name


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def user_flags(args: Sequence[str]) -> dict[str, str | None]:
    """The flags in ``engine.args`` with their values (``--flag value`` or ``--flag=value``;
    None for a switch)."""
    found: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        name = flag_name(arg)
        if name is None:
            continue
        if "=" in arg:
            found[name] = arg.split("=", 1)[1]
        elif i + 1 < len(args) and flag_name(args[i + 1]) is None:
            found[name] = args[i + 1]
        else:
            found[name] = None
    return found


@dataclass(frozen=True)
class Refusal:
    """Why the operator will not run a spec: the Placed condition's reason and message."""

    reason: str
    message: str


#: vLLM's escape hatch for a context longer than the model's positions (it warns, and quality
#: may suffer); set in ``engine.env``, the operator lets such a spec through.
ALLOW_LONG_CONTEXT = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"


def _context_beyond_positions(spec: LLMDeploymentSpec) -> str | None:
    """vLLM's model config refuses ``--max-model-len`` past the model's position embeddings."""
    arch = CatalogMemory().architecture(spec)
    wanted = spec.model.max_model_len
    allowed = any(v.name == ALLOW_LONG_CONTEXT for v in spec.engine.env)
    if arch is None or wanted is None or wanted <= arch.max_position_embeddings or allowed:
        return None
    return (
        f"spec.model.maxModelLen {wanted} exceeds the {arch.max_position_embeddings} positions "
        f"of {arch.name}, which vLLM refuses (set engine.env {ALLOW_LONG_CONTEXT}=1 to force it)"
    )


#: Spec options the pinned vLLM cannot honour, found by checking the operator's arguments with
#: vLLM itself (tests/integration/test_engine_args_contract.py): each returns why, or None.
UNSUPPORTED: tuple[Callable[[LLMDeploymentSpec], str | None], ...] = (_context_beyond_positions,)


def refusal(spec: LLMDeploymentSpec) -> Refusal | None:
    """Why these engine arguments cannot run, or None. Checked before placement, so a spec
    vLLM would refuse never reaches a pod to crash-loop there."""
    flags = user_flags(spec.engine.args)
    owned = [f for f in flags if f in OWNED]
    if owned:
        why = "; ".join(f"{f}: {OWNED[f]}" for f in owned)
        return Refusal("EngineArgsConflict", f"engine.args may not set {why}")
    governed = [f for f in flags if f in SPEC_FIELDS]
    if governed:
        why = "; ".join(f"{f}: set {SPEC_FIELDS[f]}" for f in governed)
        return Refusal(
            "EngineArgsConflict", f"engine.args repeats what a spec field governs ({why})"
        )
    for check in UNSUPPORTED:
        if (message := check(spec)) is not None:
            return Refusal("UnsupportedEngineOption", message)
    return None


@dataclass(frozen=True)
class EngineFacts:
    """What the engine will run with, as far as the operator knows it (None: not known, e.g. a
    model outside the profiler's catalog, or a user flag that changes the KV cache's size)."""

    max_model_len: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    kv_cache_tokens: int | None


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def engine_facts(spec: LLMDeploymentSpec, profile: VllmFlags | None) -> EngineFacts:
    """The effective engine settings: the user's (spec fields, ``engine.args``) where set, the
    memory model's otherwise."""
    user = user_flags(spec.engine.args)
    if profile is None:
        return EngineFacts(
            spec.model.max_model_len,
            _int(user.get("--max-num-seqs")),
            _int(user.get("--max-num-batched-tokens")),
            None,
        )
    resized = "--kv-cache-memory-bytes" in user or "--block-size" in user
    return EngineFacts(
        max_model_len=spec.model.max_model_len or profile.max_model_len,
        max_num_seqs=_int(user.get("--max-num-seqs")) or profile.max_num_seqs,
        max_num_batched_tokens=_int(user.get("--max-num-batched-tokens"))
        or profile.max_num_batched_tokens,
        kv_cache_tokens=None if resized else profile.kv_cache_tokens,
    )


def build(spec: LLMDeploymentSpec, placement: Placement, path: Callable[[str], str]) -> list[str]:
    """The engine's arguments. ``path`` maps the model's source to where the pod sees it
    (``pvc://`` sources are mounted)."""
    model, kv = spec.model, spec.kv_cache
    args = [
        "--model",
        path(spec.weights_source),
        "--served-model-name",
        model.name,
        "--host",
        ENGINE_HOST,
        "--port",
        str(ENGINE_PORT),
        "--tensor-parallel-size",
        str(placement.tensor),
        "--pipeline-parallel-size",
        str(placement.pipeline),
        "--gpu-memory-utilization",
        f"{spec.resources.gpu_memory_utilization:g}",
    ]
    facts = engine_facts(spec, placement.engine)
    if facts.max_model_len is not None:
        args += ["--max-model-len", str(facts.max_model_len)]
    if model.dtype != "auto":
        args += ["--dtype", model.dtype]
    if model.quantization is not None:
        args += ["--quantization", model.quantization]
    if model.revision is not None:
        args += ["--revision", model.revision]
    args.append("--enable-prefix-caching" if kv.prefix_caching else "--no-enable-prefix-caching")
    if kv.dtype != "auto":
        args += ["--kv-cache-dtype", kv.dtype]
    if kv.cpu_offload_gib > 0:
        args += ["--kv-offloading-size", f"{kv.cpu_offload_gib:g}"]
    lora = spec.lora_capacity
    if lora is not None:
        # Capacity only: the adapters themselves are loaded at runtime by the gateway (from its
        # adapter catalog), so that adding or removing one leaves these arguments, and the pod
        # template, as they are (docs/adapters.md).
        args += ["--enable-lora", "--max-loras", str(lora.max_loras)]
        args += ["--max-lora-rank", str(lora.max_rank), "--max-cpu-loras", str(lora.max_cpu_loras)]
    return args + _profiled(spec, placement) + list(spec.engine.args)


def _profiled(spec: LLMDeploymentSpec, placement: Placement) -> list[str]:
    """The memory model's flags that ``engine.args`` leaves unset."""
    profile = placement.engine
    if profile is None:
        return []
    values = {
        "--max-num-seqs": profile.max_num_seqs,
        "--max-num-batched-tokens": profile.max_num_batched_tokens,
    }
    if gpu_for_label(placement.gpu_product).explicit_kv_cache:
        values["--kv-cache-memory-bytes"] = profile.kv_cache_bytes
    user = user_flags(spec.engine.args)
    return [a for flag, v in values.items() if flag not in user for a in (flag, str(v))]
