"""Flow control: held only while every replica is saturated; bands first, tenants in turn;
bounded."""

from __future__ import annotations

import asyncio

import pytest

from goodput.api.router_config import FlowConfig
from goodput.router.flow import FlowController
from goodput.serving.openai_errors import OpenAIError


async def test_with_free_slots_nothing_waits() -> None:
    flow = FlowController(FlowConfig(), lambda: 1)
    assert await flow.admit("t", "default") == 0.0


async def test_saturated_replicas_hold_requests_and_release_them_fairly() -> None:
    slots = {"free": 0}
    flow = FlowController(FlowConfig(), lambda: slots["free"])
    order: list[str] = []
    left = asyncio.Event()

    async def client(tenant: str, priority: str = "default") -> None:
        await flow.admit(tenant, priority)
        order.append(tenant)
        flow.dispatched()
        left.set()

    tasks = [asyncio.create_task(client("heavy")) for _ in range(6)]
    tasks += [asyncio.create_task(client("light")) for _ in range(2)]
    tasks.append(asyncio.create_task(client("urgent", "interactive")))
    await asyncio.sleep(0.01)
    assert flow.depth == 9 and order == []
    for _ in range(9):  # one slot frees at a time
        left.clear()
        slots["free"] = 1
        flow.release()
        slots["free"] = 0
        await asyncio.wait_for(left.wait(), 5)
    await asyncio.gather(*tasks)
    assert order[0] == "urgent"  # the interactive band leaves first
    assert order[1:5] == ["heavy", "light", "heavy", "light"]  # then tenants in turn
    assert order[5:] == ["heavy"] * 4


async def test_the_queue_is_bounded_and_so_is_the_wait() -> None:
    flow = FlowController(FlowConfig(maxQueue=1, maxWaitS=0.05), lambda: 0)
    waiting = asyncio.create_task(flow.admit("a", "default"))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as full:
        await flow.admit("b", "default")
    assert full.value.status == 429 and full.value.code == "router_queue_full"
    assert full.value.headers["Retry-After"] == "1"
    with pytest.raises(OpenAIError) as late:
        await waiting
    assert late.value.code == "router_queue_timeout"
    assert flow.depth == 0


async def test_a_client_that_leaves_while_waiting_frees_its_place() -> None:
    flow = FlowController(FlowConfig(), lambda: 0)
    task = asyncio.create_task(flow.admit("a", "default"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flow.depth == 0
