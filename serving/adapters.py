"""The adapters a gateway's engine serves: which it may load (the catalog the operator writes into
the ConfigMap, re-read while running), which it has loaded, and loading on demand.

The gateway is the one that talks to its engine, so it owns the engine's adapter set: a request
for an adapter that is not loaded loads it first (``POST /v1/load_lora_adapter``, vLLM with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) — a *cold load*, counted per adapter. The engine keeps at
most ``maxLoaded`` adapters (its ``--max-cpu-loras``); loading one more first unloads the least
recently used that no request is using (vLLM would otherwise drop one from its CPU cache on its
own, and the set the gateway reports to routers would be a guess). When every loaded adapter is
in use, a request for another waits for one to be released. An adapter removed from the catalog
is unloaded once its last request ends.

Decisions are kept apart from the engine calls: ``AdapterSlots`` (pure, synchronous) says what
to load and evict; ``AdapterSet`` does the calls and the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from goodput.api.gateway_config import AdapterCatalog, AdapterEntry, LoRAServing
from goodput.serving.engine_client import EngineBroken, EngineClient, EngineUnreachable

log = logging.getLogger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


class AdapterLoadError(Exception):
    """The engine would not load an adapter (its answer is the message)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What acquiring an adapter takes: nothing (``warm``), or loading it after unloading
    ``evict`` (None: a free slot); ``wait``: every slot is in use."""

    warm: bool
    evict: str | None = None
    wait: bool = False


class AdapterSlots:
    """The engine's loaded adapters in least-recently-used order, and which are in use."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[str, None] = OrderedDict()  # first: least recently used
        self._pins: Counter[str] = Counter()

    @property
    def loaded(self) -> list[str]:
        """Most recently used first."""
        return list(reversed(self._lru))

    def __contains__(self, name: object) -> bool:
        return name in self._lru

    def in_use(self, name: str) -> bool:
        return self._pins[name] > 0

    def plan(self, name: str) -> Plan:
        if name in self._lru:
            return Plan(warm=True)
        if len(self._lru) < self.capacity:
            return Plan(warm=False)
        idle = next((n for n in self._lru if not self._pins[n]), None)
        return Plan(warm=False, evict=idle, wait=idle is None)

    def pin(self, name: str) -> None:
        self._pins[name] += 1
        self._lru[name] = None
        self._lru.move_to_end(name)

    def unpin(self, name: str) -> None:
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]

    def loaded_now(self, name: str) -> None:
        self._lru[name] = None

    def unloaded(self, name: str) -> None:
        self._lru.pop(name, None)


class AdapterSet:
    """The catalog, the loaded set and the engine calls that change it."""

    def __init__(
        self,
        serving: LoRAServing,
        client: EngineClient,
        *,
        on_cold_load: Callable[[str, float], None] = lambda name, seconds: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.serving = serving
        self.client = client
        self.on_cold_load = on_cold_load
        self.clock = clock
        self.slots = AdapterSlots(serving.max_loaded)
        self.catalog: dict[str, AdapterEntry] = {}
        self.cold_loads: Counter[str] = Counter()
        self._changed = asyncio.Condition()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._catalog_text: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload()

    @property
    def names(self) -> list[str]:
        return list(self.catalog)

    @property
    def loaded(self) -> list[str]:
        return self.slots.loaded

    def entry(self, name: str) -> AdapterEntry | None:
        return self.catalog.get(name)

    # -- the catalog -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the catalog file; True if it changed. A missing or malformed file keeps the
        catalog as it was (the kubelet swaps a ConfigMap's files atomically, so a half-written
        one is a bug elsewhere, logged)."""
        path = Path(self.serving.catalog_path)
        try:
            text = path.read_text()
        except OSError as err:
            if self._catalog_text is None:
                log.warning("adapter catalog %s unreadable: %s", path, err)
            return False
        if text == self._catalog_text:
            return False
        try:
            catalog = AdapterCatalog.model_validate(json.loads(text))
        except (ValueError, ValidationError) as err:
            log.error("adapter catalog %s is invalid, kept the previous one: %s", path, err)
            return False
        self._catalog_text = text
        self.catalog = {a.name: a for a in catalog.adapters}
        log.info("adapter catalog: %s", sorted(self.catalog))
        return True

    async def unload_removed(self) -> None:
        """Unload what the catalog no longer lists and no request uses."""
        for name in self.slots.loaded:
            if name not in self.catalog and not self.slots.in_use(name):
                await self._unload(name)

    async def run(self) -> None:
        """Follow the catalog file for as long as the gateway runs."""
        while True:
            await asyncio.sleep(self.serving.reload_interval_s)
            try:
                self.reload()
                await self.unload_removed()
            except (EngineUnreachable, EngineBroken, AdapterLoadError) as err:
                log.warning("unloading removed adapters failed, retried later: %s", err)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="adapter-catalog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- per request -------------------------------------------------------------------------

    async def acquire(self, name: str) -> bool:
        """Make sure ``name`` is loaded and keep it loaded until ``release``; True if this
        request had to load it (a cold load). Raises ``AdapterLoadError``, or the engine
        client's errors, when it cannot be loaded."""
        while True:
            pending = self._loading.get(name)
            if pending is not None:  # another request is loading it: wait for that load
                await asyncio.shield(pending)
                continue
            plan = self.slots.plan(name)
            if plan.warm:
                self.slots.pin(name)
                return False
            if plan.wait:  # re-planned on each release (and each second, should one be missed)
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 1.0)
                continue
            break
        # The slot is taken now, before any await: a concurrent request for another adapter
        # plans against the set as it will be, and nobody evicts an adapter being loaded.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[name] = done
        if plan.evict is not None:
            self.slots.unloaded(plan.evict)
        self.slots.pin(name)
        try:
            if plan.evict is not None:
                await self._call(UNLOAD_PATH, plan.evict, {"lora_name": plan.evict})
            started = self.clock()
            entry = self.catalog.get(name)
            if entry is None:
                raise AdapterLoadError(f"adapter {name!r} is not in the catalog")
            await self._call(LOAD_PATH, name, {"lora_name": name, "lora_path": entry.path})
            seconds = self.clock() - started
            self.cold_loads[name] += 1
            self.on_cold_load(name, seconds)
            done.set_result(None)
        except BaseException as err:
            self.slots.unpin(name)
            self.slots.unloaded(name)
            done.set_exception(AdapterLoadError(str(err)))
            done.exception()  # retrieved: waiters retry on their own
            raise
        finally:
            del self._loading[name]
        return True

    async def release(self, name: str) -> None:
        self.slots.unpin(name)
        if name not in self.catalog and not self.slots.in_use(name):
            with contextlib.suppress(EngineUnreachable, EngineBroken, AdapterLoadError):
                await self._unload(name)
        async with self._changed:
            self._changed.notify_all()

    # -- engine calls ------------------------------------------------------------------------

    async def _unload(self, name: str) -> None:
        self.slots.unloaded(name)
        await self._call(UNLOAD_PATH, name, {"lora_name": name})

    async def _call(self, path: str, name: str, payload: dict[str, str]) -> None:
        reply = await self.client.post_json(path, json.dumps(payload).encode())
        body = reply.body.decode(errors="replace")
        # Loading what is loaded, or unloading what is not (an engine restarted under the
        # gateway), leaves the engine as wanted.
        fine = "already been loaded" in body if path == LOAD_PATH else reply.status == 404
        if reply.status == 200 or fine:
            log.info("adapter %s: %s", name, path)
            return
        raise AdapterLoadError(f"{path} {name!r}: {reply.status} {body[:300]}")
