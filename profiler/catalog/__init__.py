"""Offline catalogs of common model architectures and GPU types.

The operator sizes models without reaching a model hub: ``get("llama-3-8b")`` gives the
architecture from the model's public config.json, ``gpu("H100-80GB")`` a GPU's datasheet figures.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.hardware import GPUType


def _load(filename: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return {key: value for key, value in data.items() if not key.startswith("_")}


@cache
def _models() -> dict[str, ModelArchitecture]:
    return {
        name: ModelArchitecture.from_hf_config(entry["config"], name=name)
        for name, entry in _load("models.json").items()
    }


@cache
def _hf_ids() -> dict[str, str]:
    """Hugging Face ids; a model with none (the project's own tiny test model) is named only
    by its key."""
    return {name: str(entry.get("hf_id") or name) for name, entry in _load("models.json").items()}


@cache
def _gpus() -> dict[str, GPUType]:
    return {name: GPUType.from_mapping(name, spec) for name, spec in _load("gpus.json").items()}


def model_names() -> list[str]:
    return sorted(_models())


def get(name: str) -> ModelArchitecture:
    """The architecture for a catalog name ("llama-3-8b") or Hugging Face id, case-insensitive."""
    wanted = name.strip().lower()
    for key, arch in _models().items():
        if wanted == key or wanted == _hf_ids()[key].lower():
            return arch
    raise KeyError(f"unknown model {name!r}; known: {', '.join(model_names())}")


def gpu_names() -> list[str]:
    return sorted(_gpus())


def gpu(name: str) -> GPUType:
    """A GPU type by catalog name ("H100-80GB") or a node's ``nvidia.com/gpu.product`` label."""
    for gpu_type in _gpus().values():
        if gpu_type.matches_product(name):
            return gpu_type
    raise KeyError(f"unknown GPU {name!r}; known: {', '.join(gpu_names())}")


def gpus() -> list[GPUType]:
    return [_gpus()[name] for name in gpu_names()]
