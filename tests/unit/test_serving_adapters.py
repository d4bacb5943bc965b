"""The gateway's adapter set: which adapter a load evicts, that one in use is never evicted, the
catalog followed while running, and each adapter's own objectives and class."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from goodput.api.gateway_config import (
    AdapterEntry,
    AdapterObjectives,
    GatewayConfig,
    LoRAServing,
)
from goodput.serving.adapters import LOAD_PATH, UNLOAD_PATH, AdapterSet, AdapterSlots
from goodput.serving.auth import Tenant
from goodput.serving.engine_client import EngineReply
from goodput.serving.length_estimate import OnlineLengthEstimator, PerModelPredictors
from goodput.serving.slo import SLOResolver


def test_slots_evict_the_least_recently_used_adapter_no_request_uses() -> None:
    slots = AdapterSlots(capacity=2)
    assert slots.plan("a").warm is False and slots.plan("a").evict is None
    slots.pin("a")
    slots.pin("b")
    slots.unpin("b")
    plan = slots.plan("c")
    assert (plan.warm, plan.evict, plan.wait) == (False, "b", False), "a is in use, b is not"
    slots.unpin("a")
    slots.pin("b")  # b used again: a is now the least recently used
    slots.unpin("b")
    assert slots.plan("c").evict == "a"
    assert slots.loaded == ["b", "a"]
    slots.pin("a")
    slots.pin("b")
    assert slots.plan("c").wait, "every slot in use: a third adapter waits"
    assert slots.plan("a").warm


class RecordingEngine:
    """Answers the two adapter calls as vLLM does, and records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.loaded: set[str] = set()

    async def post_json(self, path: str, body: bytes, *, timeout_s: float = 60.0) -> EngineReply:
        name = json.loads(body)["lora_name"]
        self.calls.append((path, name))
        await asyncio.sleep(0.01)
        if path == LOAD_PATH:
            self.loaded.add(name)
            return EngineReply(200, b"Success")
        if name not in self.loaded:
            return EngineReply(404, b"not found")
        self.loaded.discard(name)
        return EngineReply(200, b"Success")


def _catalog(path: Path, *names: str) -> None:
    entries = [{"name": n, "path": f"/adapters/{n}"} for n in names]
    path.write_text(json.dumps({"adapters": entries}))


def test_loads_on_demand_evicts_lru_and_unloads_what_the_catalog_drops(tmp_path: Path) -> None:
    catalog = tmp_path / "adapters.json"
    _catalog(catalog, "a", "b", "c")
    engine = RecordingEngine()
    loads: list[str] = []
    adapters = AdapterSet(
        LoRAServing(catalog_path=str(catalog), max_loaded=2),
        engine,  # type: ignore[arg-type]
        on_cold_load=lambda name, seconds: loads.append(name),
    )

    async def scenario() -> None:
        # Two requests for one adapter at once load it once.
        cold = await asyncio.gather(adapters.acquire("a"), adapters.acquire("a"))
        assert sorted(cold) == [False, True]
        assert await adapters.acquire("b") is True
        await adapters.release("b")
        # c while a is in use (twice) and b is idle: b goes.
        assert await adapters.acquire("c") is True
        assert engine.loaded == {"a", "c"}
        await adapters.release("c")
        # d while both slots are busy waits until one is released.
        await adapters.acquire("c")
        _catalog(catalog, "a", "b", "c", "d")
        adapters.reload()
        waiting = asyncio.ensure_future(adapters.acquire("d"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await adapters.release("c")
        assert await waiting is True
        assert engine.loaded == {"a", "d"}
        # a is dropped from the catalog: unloaded once its last request ends.
        _catalog(catalog, "b", "c", "d")
        adapters.reload()
        await adapters.unload_removed()
        assert "a" in engine.loaded, "still in use"
        await adapters.release("a")
        await adapters.release("a")
        assert engine.loaded == {"d"}

    asyncio.run(scenario())
    assert loads == ["a", "b", "c", "d"]
    assert adapters.cold_loads == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert (UNLOAD_PATH, "b") in engine.calls and (UNLOAD_PATH, "a") in engine.calls


def test_an_adapter_has_its_own_objectives_and_class_where_its_tenant_may_use_it() -> None:
    config = GatewayConfig.model_validate(
        {
            "deployment": "d",
            "servedModelName": "base",
            "slo": {"ttftMs": 1000, "tpotMs": 100},
            "priorityClasses": [
                {"name": "default", "rank": 1},
                {"name": "interactive", "rank": 0, "sloScale": 0.5},
            ],
        }
    )
    entry = AdapterEntry(
        name="sql", path="/a", slo=AdapterObjectives(ttft_ms=400), priority="interactive"
    )
    resolve = SLOResolver(config).resolve
    base = resolve({})
    own = resolve({}, None, entry)
    assert (base.ttft_s, base.tpot_s, base.priority) == (1.0, 0.1, "default")
    assert (own.ttft_s, own.tpot_s, own.priority) == (0.2, 0.05, "interactive")
    limited = Tenant("t", priorities=("default",))
    assert resolve({}, limited, entry).priority == "default"


def test_the_length_predictor_is_kept_per_adapter() -> None:
    base = OnlineLengthEstimator()
    per_model = PerModelPredictors(base)
    assert per_model(None) is base
    sql, chat = per_model("sql"), per_model("chat")
    assert sql is per_model("sql") and sql is not chat
    for _ in range(40):
        sql.observe("q", 10, 8)
        chat.observe("q", 10, 600)
    assert sql.predict("q", 10, None).p50 == 8
    assert chat.predict("q", 10, None).p50 == 600


@pytest.mark.parametrize("text", ["{", '{"adapters": [{"name": "a"}]}'])
def test_a_bad_catalog_keeps_the_previous_one(tmp_path: Path, text: str) -> None:
    catalog = tmp_path / "adapters.json"
    _catalog(catalog, "a")
    adapters = AdapterSet(
        LoRAServing(catalog_path=str(catalog), max_loaded=1),
        RecordingEngine(),  # type: ignore[arg-type]
    )
    catalog.write_text(text)
    assert adapters.reload() is False
    assert adapters.names == ["a"]
