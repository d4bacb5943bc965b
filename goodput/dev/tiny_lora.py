"""Small LoRA adapters for the tiny Llama in PEFT's layout, generated offline, deterministically.

Adapter serving needs adapters the real engine loads, and no hub is reachable. Each adapter is a
PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``) with random weights from a
fixed seed for the base model's attention projections. ``lora_B`` is random too (PEFT initialises
it to zero, which would make every adapter the base model): an adapter that changes the logits is
what makes a request served by the wrong adapter visible in a test.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from goodput.dev.tiny_model import TinyLlamaSpec, build_once, ensure_tiny_model

# Bump when the files written change in a way the parameters below do not capture.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class TinyLoraSpec:
    """Every parameter that determines one adapter's files."""

    seed: int
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    init_std: float = 0.02
    base: TinyLlamaSpec = field(default_factory=TinyLlamaSpec)

    def digest(self) -> str:
        payload = json.dumps(
            {"spec": asdict(self), "base": self.base.digest(), "generator": GENERATOR_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_tiny_lora(spec: TinyLoraSpec) -> Path:
    """Return the adapter directory for ``spec`` (``<model>.loras/<digest>``, beside the base
    model), writing it first if it is not cached."""
    base_dir = ensure_tiny_model(spec.base)
    target = base_dir.with_name(base_dir.name + ".loras") / spec.digest()
    return build_once(
        target, "adapter_config.json", lambda out: write_tiny_lora(spec, base_dir, out)
    )


def write_tiny_lora(spec: TinyLoraSpec, base_dir: Path, out: Path) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``out``."""
    base = spec.base
    head_dim = base.hidden_size // base.num_attention_heads
    out_features = {
        "q_proj": base.hidden_size,
        "k_proj": base.num_key_value_heads * head_dim,
        "v_proj": base.num_key_value_heads * head_dim,
        "o_proj": base.hidden_size,
    }
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    tensors: dict[str, np.ndarray] = {}
    for layer in range(base.num_layers):
        for module in spec.target_modules:
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = rng.normal(0.0, spec.init_std, size=(spec.rank, base.hidden_size))
            b = rng.normal(0.0, spec.init_std, size=(out_features[module], spec.rank))
            tensors[f"{key}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = b.astype(np.float32)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_dir),
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "target_modules": list(spec.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
