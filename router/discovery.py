"""Replicas from the EndpointSlices of a Service: the only module of the router that talks to
Kubernetes.

Ready endpoints receive requests; terminating ones (a pod being deleted, still serving what it
has) drain: no new requests, and their streams run to the end because the router never cuts a
connection it relays. A watch keeps the view current; the first list is done before the router
reports ready, so it never answers "no replica" merely for having just started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from goodput.api.router_config import ServiceDiscovery

log = logging.getLogger(__name__)

EndpointEntry = tuple[str, str, bool, bool, str]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _load_kube_config() -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def slice_endpoints(
    slice_obj: Any, port_name: str, load_port_name: str, scheme: str = "http"
) -> list[EndpointEntry]:
    """``(name, url, ready, draining, load_url)`` of one EndpointSlice's endpoints (IPv4/IPv6
    alike); ``url`` in ``scheme``, ``load_url`` on the ``load_port_name`` port (plain HTTP, the
    gateway's admin port) where the slice has one."""
    ports = slice_obj.ports or []
    port = next((p.port for p in ports if p.name == port_name), None)
    if port is None and len(ports) == 1:
        port = ports[0].port
    if port is None:
        return []
    load_port = next((p.port for p in ports if p.name == load_port_name), None)
    entries = []
    for ep in slice_obj.endpoints or []:
        if not ep.addresses:
            continue
        address = ep.addresses[0]
        host = f"[{address}]" if ":" in address else address
        conditions = ep.conditions
        # Unset conditions mean ready and not terminating (the API's documented default).
        ready = conditions is None or conditions.ready is not False
        terminating = conditions is not None and conditions.terminating is True
        name = ep.target_ref.name if ep.target_ref is not None else address
        load_url = f"http://{host}:{load_port}" if load_port is not None else ""
        entries.append(
            (name, f"{scheme}://{host}:{port}", ready and not terminating, terminating, load_url)
        )
    return entries


class EndpointSliceWatcher:
    """Lists, then watches, the Service's EndpointSlices in a thread (the Kubernetes client is
    synchronous) and hands each new view to ``apply`` on the event loop."""

    def __init__(
        self,
        apply: Callable[[list[EndpointEntry]], None],
        spec: ServiceDiscovery,
        api: Any = None,
        scheme: str = "http",
    ) -> None:
        self.apply = apply
        self.spec = spec
        self.scheme = scheme
        self._api = api
        self._slices: dict[str, Any] = {}
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> Any:
        if self._api is None:
            _load_kube_config()
            self._api = client.DiscoveryV1Api()
        return self._api

    def _selector(self) -> str:
        return f"{SERVICE_NAME_LABEL}={self.spec.service}"

    def _list(self) -> str:
        result = self._client().list_namespaced_endpoint_slice(
            self.spec.namespace, label_selector=self._selector()
        )
        self._slices = {s.metadata.name: s for s in result.items}
        return str(result.metadata.resource_version)

    def view(self) -> list[EndpointEntry]:
        entries: dict[str, EndpointEntry] = {}
        for s in self._slices.values():
            for entry in slice_endpoints(
                s, self.spec.port_name, self.spec.load_port_name, self.scheme
            ):
                current = entries.get(entry[0])
                # The same pod in two slices (during a slice's rewrite): the readier view wins.
                if current is None or (entry[2] and not current[2]):
                    entries[entry[0]] = entry
        return sorted(entries.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        version = await asyncio.to_thread(self._list)
        self.apply(self.view())
        self._thread = threading.Thread(
            target=self._run, args=(version,), name="endpointslice-watch", daemon=True
        )
        self._thread.start()

    def _publish(self) -> None:
        assert self._loop is not None
        view = self.view()
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            self._loop.call_soon_threadsafe(self.apply, view)

    def _run(self, version: str) -> None:
        while not self._stop.is_set():
            try:
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(
                    self._client().list_namespaced_endpoint_slice,
                    self.spec.namespace,
                    label_selector=self._selector(),
                    resource_version=version,
                    timeout_seconds=60,
                ):
                    obj = event["object"]
                    version = str(obj.metadata.resource_version)
                    if event["type"] == "DELETED":
                        self._slices.pop(obj.metadata.name, None)
                    else:
                        self._slices[obj.metadata.name] = obj
                    self._publish()
            except ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status != 410:  # 410 Gone: our version is too old; list again
                    log.warning("watching EndpointSlices failed: %s", exc)
                    self._stop.wait(1.0)
                version = self._relist()
            except Exception as exc:  # connection lost, API server restarting
                if self._stop.is_set():
                    return
                log.warning("watching EndpointSlices failed: %s", exc)
                self._stop.wait(1.0)
                version = self._relist()

    def _relist(self) -> str:
        try:
            version = self._list()
        except Exception as exc:
            log.warning("listing EndpointSlices failed: %s", exc)
            return ""
        self._publish()
        return version

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
