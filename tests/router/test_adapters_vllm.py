"""LoRA adapters as tenants on real vLLM CPU engines (runtime LoRA updating on), each behind its
own gateway, with PEFT adapters for the tiny Llama generated at test time (random weights, fixed
seeds): an adapter is loaded on its first request and serves answers of its own, the engine keeps
at most its capacity loaded (the least recently used goes), an adapter dropped from the catalog is
unloaded, and behind the router each adapter is loaded on one replica only while the requests for
it keep landing there. What the engines themselves list (``/v1/models``) is the evidence."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from gateway.conftest import running_server

from goodput.api.gateway_config import GatewayConfig
from goodput.api.router_config import RouterConfig
from goodput.dev.engine import EngineProcess, EngineSettings
from goodput.dev.tiny_lora import TinyLoraSpec, ensure_tiny_lora
from goodput.router.app import create_app as create_router
from goodput.serving.app import create_app as create_gateway
from goodput.serving.gateway import Gateway

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

MODEL = "tiny-llama"
#: Adapters one replica keeps loaded (vLLM --max-cpu-loras; --max-loras is the same here).
CAPACITY = 2
PROMPT = "The quick brown fox jumps over the lazy dog because"


def lora_engine_settings(model: Path) -> EngineSettings:
    """The engine as the operator starts it for ``spec.lora``: capacity only, no adapter."""
    return EngineSettings(
        model=model,
        served_model_name=MODEL,
        extra_args=(
            "--enable-lora",
            "--max-loras",
            str(CAPACITY),
            "--max-lora-rank",
            "8",
            "--max-cpu-loras",
            str(CAPACITY),
        ),
        extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )


def start_lora_engine(
    python: Path, model: Path, tmp_path_factory: pytest.TempPathFactory, stack: ExitStack
) -> EngineProcess:
    log = tmp_path_factory.mktemp("lora-engine") / "engine.log"
    engine = EngineProcess(lora_engine_settings(model), python=python, log_path=log)
    return stack.enter_context(engine)


@pytest.fixture(scope="module")
def lora_engine(
    engine_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    with ExitStack() as stack:
        yield start_lora_engine(engine_python, tiny_model, tmp_path_factory, stack)


@pytest.fixture(scope="module")
def lora_engines(
    lora_engine: EngineProcess,
    engine_python: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[EngineProcess]]:
    """Two replicas: the module's engine and one more."""
    with ExitStack() as stack:
        yield [lora_engine, start_lora_engine(engine_python, tiny_model, tmp_path_factory, stack)]


def write_catalog(path: Path, names: list[str]) -> None:
    """The catalog the operator writes (``adapters.json``), adapters seeded by their name."""
    entries = [
        {"name": n, "path": str(ensure_tiny_lora(TinyLoraSpec(seed=sum(map(ord, n)))))}
        for n in names
    ]
    path.write_text(json.dumps({"adapters": entries}))


def gateway_for(engine: EngineProcess, catalog: Path) -> Gateway:
    return Gateway(
        GatewayConfig.model_validate(
            {
                "deployment": "adapters-it",
                "servedModelName": MODEL,
                "engineUrl": engine.url,
                "slo": {"ttftMs": 30_000, "tpotMs": 2000},
                "lora": {
                    "catalogPath": str(catalog),
                    "maxLoaded": CAPACITY,
                    "reloadIntervalS": 0.2,
                },
            }
        ),
        engine_metrics_interval_s=1.0,
    )


def complete(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
        timeout=120,
    )


def engine_adapters(engine: EngineProcess) -> set[str]:
    """The adapters the engine itself lists (everything but the base model)."""
    models = httpx.get(f"{engine.url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in models} - {MODEL}


def load_report(url: str) -> dict[str, object]:
    report: dict[str, object] = httpx.get(f"{url}/v1/goodput/load", timeout=10).json()
    return report


def test_an_adapter_loads_on_demand_serves_its_own_answers_and_is_evicted_or_unloaded(
    lora_engine: EngineProcess, tmp_path: Path
) -> None:
    engine = lora_engine
    names = ["sql", "chat", "docs"]
    catalog = tmp_path / "adapters.json"
    write_catalog(catalog, names)
    with running_server(create_gateway(gateway_for(engine, catalog))) as (url, _):
        assert engine_adapters(engine) & set(names) == set(), "nothing is loaded at start"
        base = complete(url, MODEL)
        sql = complete(url, "sql")
        assert base.status_code == sql.status_code == 200, sql.text
        assert sql.json()["model"] == "sql"
        # Greedy decoding on the same prompt: only the adapter's weights can change the answer.
        assert sql.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]
        assert "sql" in engine_adapters(engine)
        assert complete(url, "sql").json()["choices"][0]["text"] == sql.json()["choices"][0]["text"]
        assert complete(url, "chat").status_code == 200
        report = load_report(url)["adapters"]
        assert report == {
            "catalog": names,
            "loaded": ["chat", "sql"],
            "capacity": CAPACITY,
            "coldLoads": {"sql": 1, "chat": 1},
        }
        # A third adapter at capacity: the least recently used (sql) is unloaded from the engine.
        assert complete(url, "docs").status_code == 200
        assert engine_adapters(engine) & set(names) == {"chat", "docs"}
        # Back to sql: a cold load again, and chat (now the oldest) makes room.
        assert complete(url, "sql").status_code == 200
        assert engine_adapters(engine) & set(names) == {"docs", "sql"}
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            'goodput_adapter_cold_loads_total{deployment="adapters-it",model="sql"} 2.0' in metrics
        )
        assert 'goodput_requests_total{deployment="adapters-it",model="sql",outcome=' in metrics
        # The operator drops docs from the catalog: the gateway unloads it and refuses it.
        write_catalog(catalog, ["sql", "chat"])
        deadline = time.monotonic() + 10
        while "docs" in engine_adapters(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine_adapters(engine) & set(names) == {"sql"}
        assert complete(url, "docs").status_code == 404


def test_behind_the_router_each_adapter_is_loaded_on_one_replica_and_its_requests_land_there(
    lora_engines: list[EngineProcess], tmp_path: Path
) -> None:
    names = ["tenant-a", "tenant-b", "tenant-c"]
    with ExitStack() as stack:
        gateways = []
        for i, engine in enumerate(lora_engines):
            catalog = tmp_path / f"adapters-{i}.json"
            write_catalog(catalog, names)
            url, _ = stack.enter_context(
                running_server(create_gateway(gateway_for(engine, catalog)))
            )
            gateways.append(url)
        config = RouterConfig.model_validate(
            {
                "endpoints": gateways,
                "pollIntervalS": 0.2,
                "scorers": [
                    {"type": "adapter-affinity", "weight": 4.0},
                    {"type": "slo-headroom", "weight": 1.0},
                    {"type": "least-load", "weight": 1.0},
                ],
            }
        )
        router, _ = stack.enter_context(running_server(create_router(config)))
        time.sleep(0.5)  # the router's first load reports
        for _ in range(4):
            for name in names:
                response = complete(router, name)
                assert response.status_code == 200, response.text
                assert response.json()["model"] == name
        where = {
            n: [i for i, e in enumerate(lora_engines) if n in engine_adapters(e)] for n in names
        }
        assert all(len(replicas) == 1 for replicas in where.values()), where
        cold = {
            line.split('adapter="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{router}/metrics").text.splitlines()
            if line.startswith("goodput_router_adapter_cold_loads_total{")
        }
        assert cold == {n: 1.0 for n in names}, "one cold load per adapter, then affinity"
