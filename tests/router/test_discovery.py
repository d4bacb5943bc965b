"""EndpointSlices as the router reads them (the API's own model objects, no server)."""

from __future__ import annotations

from kubernetes import client

from goodput.api.router_config import ServiceDiscovery
from goodput.router.discovery import EndpointSliceWatcher, slice_endpoints


def endpoint_slice(name: str, endpoints: list[client.V1Endpoint], admin: bool) -> object:
    ports = [client.DiscoveryV1EndpointPort(name="http", port=8080)]
    if admin:
        ports.append(client.DiscoveryV1EndpointPort(name="admin", port=9090))
    return client.V1EndpointSlice(
        address_type="IPv4",
        metadata=client.V1ObjectMeta(name=name),
        endpoints=endpoints,
        ports=ports,
    )


def pod(ip: str, name: str, **conditions: bool) -> client.V1Endpoint:
    return client.V1Endpoint(
        addresses=[ip],
        conditions=client.V1EndpointConditions(**conditions) if conditions else None,
        target_ref=client.V1ObjectReference(kind="Pod", name=name),
    )


def test_ready_serving_and_terminating_endpoints() -> None:
    s = endpoint_slice(
        "s1",
        [
            pod("10.0.0.1", "a", ready=True, serving=True, terminating=False),
            pod("10.0.0.2", "b", ready=False, serving=True, terminating=True),
            pod("10.0.0.3", "c", ready=False, serving=False, terminating=False),
            pod("10.0.0.4", "d"),  # no conditions: ready, as the API defines
        ],
        admin=True,
    )
    assert slice_endpoints(s, "http", "admin") == [
        ("a", "http://10.0.0.1:8080", True, False, "http://10.0.0.1:9090"),
        ("b", "http://10.0.0.2:8080", False, True, "http://10.0.0.2:9090"),
        ("c", "http://10.0.0.3:8080", False, False, "http://10.0.0.3:9090"),
        ("d", "http://10.0.0.4:8080", True, False, "http://10.0.0.4:9090"),
    ]
    # Without an admin port the load report is read on the API port.
    plain = endpoint_slice("s2", [pod("10.0.0.5", "e", ready=True)], admin=False)
    assert slice_endpoints(plain, "http", "admin") == [
        ("e", "http://10.0.0.5:8080", True, False, "")
    ]


def test_with_tls_replicas_are_dialled_over_https_and_load_reports_stay_on_plain_admin() -> None:
    s = endpoint_slice("s1", [pod("10.0.0.1", "a", ready=True), pod("fd00::2", "b")], admin=True)
    assert slice_endpoints(s, "http", "admin", scheme="https") == [
        ("a", "https://10.0.0.1:8080", True, False, "http://10.0.0.1:9090"),
        ("b", "https://[fd00::2]:8080", True, False, "http://[fd00::2]:9090"),
    ]


def test_a_pod_in_two_slices_counts_once_and_readiest() -> None:
    seen: list[list[tuple[str, str, bool, bool, str]]] = []
    watcher = EndpointSliceWatcher(
        seen.append, ServiceDiscovery(namespace="ml", service="llama-replicas")
    )
    watcher._slices = {
        "old": endpoint_slice("old", [pod("10.0.0.1", "a", ready=False)], admin=False),
        "new": endpoint_slice("new", [pod("10.0.0.1", "a", ready=True)], admin=False),
    }
    assert watcher.view() == [("a", "http://10.0.0.1:8080", True, False, "")]
