"""Running kopf in-process with Goodput's handlers, settings and metrics."""

from __future__ import annotations

import os
from collections.abc import Callable

import kopf
from kubernetes import client, config

from goodput.operator.autoscaler import AutoscalingLoop, HttpReports
from goodput.operator.handlers import register
from goodput.operator.kube import Kube
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.reconcile import Reconciler, default_reconciler
from goodput.operator.settings import OperatorSettings


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster credentials inside a pod, else the kubeconfig (or $KUBECONFIG)."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return client.ApiClient(cfg)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    return api


def build_registry(settings: OperatorSettings, metrics: OperatorMetrics) -> kopf.OperatorRegistry:
    """The handlers, wired to a reconciler that is built once the operator starts."""
    registry = kopf.OperatorRegistry()

    def reconciler() -> Reconciler:
        return default_reconciler(Kube(api_client(settings.kubeconfig)), settings.workload, metrics)

    def autoscaler(fleet_version: Callable[[], str]) -> AutoscalingLoop:
        kube = Kube(api_client(settings.kubeconfig))
        return AutoscalingLoop(kube, HttpReports(), settings.autoscaling, fleet_version)

    register(registry, reconciler, autoscaler)
    return registry


def run_operator(settings: OperatorSettings) -> None:
    """Block running the operator (kopf's event loop) until SIGINT/SIGTERM."""
    metrics = OperatorMetrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.peering.lifetime = settings.peering_lifetime_s
    kopf.run(
        registry=build_registry(settings, metrics),
        settings=kopf_settings,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.priority,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )
