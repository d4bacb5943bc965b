"""The engine argument contract: every argument list the operator can write is one the pinned vLLM
parses.

Each spec option the operator supports is rendered (``workload.engine_args``) and parsed by the
vLLM OpenAI server's own parser inside the engine venv (``make_arg_parser`` on a
``FlexibleArgumentParser``, then ``validate_parsed_serve_args`` and ``AsyncEngineArgs``, as
``vllm serve`` does before it loads anything). One engine process parses every case: importing vLLM
takes tens of seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import workload
from goodput.operator.placement.selection import Placement
from goodput.profiler.memory import Quantization, VllmFlags

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Run inside the engine venv: parse each argv (a JSON list of lists on stdin) and print, per
# argv, whether vLLM accepts it and, if not, its own error message. With the argument
# ``config`` it also builds the engine's configuration, which reads the model's config.json.
_PARSE = """
import contextlib, io, json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
            validate_parsed_serve_args(args)
            engine_args = AsyncEngineArgs.from_cli_args(args)
            if sys.argv[1:] == ["config"]:
                engine_args.create_engine_config()
        results.append({"ok": True, "error": ""})
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines()
        results.append({"ok": False, "error": lines[-1] if lines else f"exit {exc.code}"})
    except Exception as exc:
        results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(results))
"""


def memory_flags(max_model_len: int, max_num_seqs: int, kv_tokens: int, kv_bytes: int) -> VllmFlags:
    """The memory model's answer for a placement, as the selectors attach it."""
    return VllmFlags(
        dtype="bfloat16",
        quantization=Quantization.NONE,
        kv_cache_dtype="bfloat16",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=8192,
        gpu_memory_utilization=0.9,
        kv_cache_tokens=kv_tokens,
        kv_cache_bytes=kv_bytes,
    )


PROFILE = memory_flags(8192, 96, 440_000, 55 * 2**30)


def _obj(**spec: Any) -> LLMDeployment:
    body: dict[str, Any] = {
        "model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct", "architecture": "llama-3-8b"},
        "slo": {"ttftMs": 500, "tpotMs": 50},
    }
    body.update(spec)
    return LLMDeployment.model_validate({"metadata": {"name": "contract"}, "spec": body})


def _placement(tensor: int = 1, pipeline: int = 1, product: str = "NVIDIA-H100-80GB-HBM3",
               engine: VllmFlags | None = PROFILE) -> Placement:  # fmt: skip
    return Placement(product, tensor, pipeline, ("node-0",), engine=engine)


def _model(**fields: Any) -> dict[str, Any]:
    return {"name": "meta-llama/Meta-Llama-3-8B-Instruct", "architecture": "llama-3-8b", **fields}


# One case per spec option the operator turns into an engine flag (and a few combinations).
CASES: dict[str, tuple[LLMDeployment, Placement]] = {
    "defaults": (_obj(), _placement()),
    "unknown model (no memory-model flags)": (_obj(), _placement(engine=None)),
    "tensor parallel": (_obj(), _placement(tensor=4)),
    "tensor and pipeline parallel": (_obj(), _placement(tensor=4, pipeline=2)),
    "dtype bfloat16": (_obj(model=_model(dtype="bfloat16")), _placement()),
    "dtype float16": (_obj(model=_model(dtype="float16")), _placement()),
    "dtype float32": (_obj(model=_model(dtype="float32")), _placement()),
    "quantization awq": (_obj(model=_model(quantization="awq")), _placement()),
    "quantization gptq": (_obj(model=_model(quantization="gptq")), _placement()),
    "quantization fp8": (_obj(model=_model(quantization="fp8")), _placement()),
    "quantization bitsandbytes": (_obj(model=_model(quantization="bitsandbytes")), _placement()),
    "revision": (_obj(model=_model(revision="a1b2c3d")), _placement()),
    "max model len": (_obj(model=_model(maxModelLen=4096)), _placement()),
    "pvc source": (_obj(model=_model(source="pvc://models/llama-3-8b")), _placement()),
    "fp8 KV cache": (_obj(kvCache={"dtype": "fp8"}), _placement()),
    "CPU KV offload": (_obj(kvCache={"cpuOffloadGiB": 16}), _placement()),
    "CPU KV offload, fractional GiB": (_obj(kvCache={"cpuOffloadGiB": 0.5}), _placement()),
    "prefix caching off": (_obj(kvCache={"prefixCaching": False}), _placement()),
    "GPU memory utilization": (_obj(resources={"gpuMemoryUtilization": 0.85}), _placement()),
    "LoRA adapters": (
        _obj(
            adapters=[
                {"name": "sql", "source": "pvc://adapters/sql"},
                {"name": "chat", "source": "org/chat-lora"},
            ]
        ),
        _placement(),
    ),
    "LoRA enabled before any adapter": (_obj(lora={"enabled": True}), _placement()),
    "engine.args": (
        _obj(engine={"args": ["--enable-chunked-prefill", "--max-num-seqs", "32", "--seed=7"]}),
        _placement(),
    ),
    "CPU engine product (explicit KV cache bytes)": (
        _obj(
            model={
                "name": "tiny-llama",
                "source": "pvc://goodput-models/tiny-llama",
                "architecture": "tiny-llama",
                "maxModelLen": 2048,
            }
        ),
        _placement(product="Goodput-CPU-vLLM"),
    ),
    "everything at once": (
        _obj(
            model=_model(dtype="bfloat16", quantization="awq", maxModelLen=4096, revision="main"),
            kvCache={"dtype": "fp8", "cpuOffloadGiB": 4, "prefixCaching": False},
            adapters=[{"name": "sql", "source": "pvc://adapters/sql"}],
            lora={"maxLoras": 2, "maxRank": 32, "maxCpuLoras": 8},
            resources={"gpuMemoryUtilization": 0.8},
            engine={"args": ["--seed", "7"]},
        ),
        _placement(tensor=2),
    ),
}


def _examples() -> dict[str, tuple[LLMDeployment, Placement]]:
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "LLMDeployment":
                obj = LLMDeployment.model_validate(doc)
                par = obj.spec.resources.parallelism
                out[f"{path.name}: {obj.metadata.name}"] = (
                    obj,
                    _placement(tensor=par.tensor or 1, pipeline=par.pipeline or 1),
                )
    return out


def _parse(engine_python: Path, argvs: list[list[str]], *stage: str) -> list[dict[str, Any]]:
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(engine_python), "-c", _PARSE, *stage],
        env=env,
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",  # not the checkout: its operator/ folder would shadow the stdlib's
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def test_vllm_parses_every_argument_list_the_operator_writes(engine_python: Path) -> None:
    cases = {**CASES, **_examples()}
    argvs = [workload.engine_args(obj, p, workload.Volumes()) for obj, p in cases.values()]
    # The harness must see a flag vLLM lacks: the last argv adds one.
    argvs.append([*argvs[0], "--goodput-no-such-flag", "1"])
    results = _parse(engine_python, argvs)
    assert not results[-1]["ok"] and "--goodput-no-such-flag" in results[-1]["error"]
    failed = {
        name: f"{r['error']}\n    argv: {' '.join(argv)}"
        for name, argv, r in zip(cases, argvs, results, strict=False)
        if not r["ok"]
    }
    assert not failed, "vLLM rejects:\n" + "\n".join(f"- {k}: {v}" for k, v in failed.items())


def test_the_cpu_example_configures_the_cpu_engine_with_the_tiny_model(
    engine_python: Path,
) -> None:
    """Beyond parsing: vLLM builds its whole configuration from the tiny-CPU example's arguments
    (the KV cache bytes the memory model leaves included) with the real tiny model's config.json;
    and a context beyond the model's positions, which the operator refuses, is what vLLM
    refuses too."""
    from goodput.dev.tiny_model import ensure_tiny_model
    from goodput.operator.engine_args import refusal

    model = ensure_tiny_model()
    obj = LLMDeployment.model_validate(
        yaml.safe_load((EXAMPLES / "llmdeployment-tiny-cpu.yaml").read_text())
    )
    profile = memory_flags(2048, 51, 66_000, 258 * 2**20)
    cpu = _placement(product="Goodput-CPU-vLLM", engine=profile)
    args = workload.engine_args(obj, cpu, workload.Volumes())
    args[args.index("--model") + 1] = str(model)
    assert "--kv-cache-memory-bytes" in args
    too_long = _obj(model={"name": "tiny-llama", "architecture": "tiny-llama", "maxModelLen": 8192})
    long_args = workload.engine_args(too_long, _placement(engine=None), workload.Volumes())
    long_args[long_args.index("--model") + 1] = str(model)
    ok, refused = _parse(engine_python, [args, long_args], "config")
    assert ok["ok"], ok["error"]
    assert not refused["ok"] and "max_model_len" in refused["error"].lower()
    found = refusal(too_long.spec)
    assert found is not None and found.reason == "UnsupportedEngineOption"
