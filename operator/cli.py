"""The ``goodput operator`` subcommand: run the operator in-process, or print its manifests."""

from __future__ import annotations

import logging
import os
import sys

import click
import yaml


@click.group(name="operator")
def operator() -> None:
    """Run the Goodput operator."""


@operator.command()
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    help="Default: in-cluster or $KUBECONFIG.",
)
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    help="Watch only these namespaces (repeatable; globs allowed).",
)
@click.option(
    "--all-namespaces",
    "-A",
    is_flag=True,
    help="Watch every namespace (the default without --namespace).",
)
@click.option("--standalone", is_flag=True, help="Run without peering (the default).")
@click.option(
    "--peering",
    metavar="NAME",
    help="Coordinate replicas through the KopfPeering NAME; only the highest priority one acts.",
)
@click.option(
    "--priority", type=int, default=0, show_default=True, help="Peering priority of this replica."
)
@click.option(
    "--metrics-port",
    type=int,
    default=9090,
    show_default=True,
    help="Prometheus /metrics port; 0 disables.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics listens on (0.0.0.0 in a pod).",
)
@click.option(
    "--liveness-endpoint",
    metavar="URL",
    help="e.g. http://0.0.0.0:8081/healthz for a liveness probe.",
)
@click.option("--engine-image", envvar="GOODPUT_ENGINE_IMAGE", help="Default vLLM image.")
@click.option("--gateway-image", envvar="GOODPUT_GATEWAY_IMAGE", help="Default gateway image.")
@click.option(
    "--toleration",
    "tolerations",
    multiple=True,
    metavar="KEY[=VALUE]:EFFECT",
    help="Extra toleration for serving pods (repeatable).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def run(
    kubeconfig: str | None,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    standalone: bool,
    peering: str | None,
    priority: int,
    metrics_port: int,
    metrics_host: str,
    liveness_endpoint: str | None,
    engine_image: str | None,
    gateway_image: str | None,
    tolerations: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run the operator until interrupted."""
    if kubeconfig:
        # kopf's login reads it from here; set it before the kubernetes client is imported,
        # which reads the variable once, at import time.
        os.environ["KUBECONFIG"] = os.path.abspath(kubeconfig)
    from goodput.operator.runner import run_operator
    from goodput.operator.settings import OperatorSettings, WorkloadSettings, parse_toleration

    if all_namespaces and namespaces:
        raise click.UsageError("--all-namespaces and --namespace exclude each other")
    if standalone and peering:
        raise click.UsageError("--standalone and --peering exclude each other")
    try:
        parsed = tuple(parse_toleration(t) for t in tolerations)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--toleration") from err
    workload = WorkloadSettings(tolerations=parsed)
    if engine_image:
        workload = WorkloadSettings(**{**workload.__dict__, "engine_image": engine_image})
    if gateway_image:
        workload = WorkloadSettings(**{**workload.__dict__, "gateway_image": gateway_image})
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # kopf logs every handled watch event ("Handler ... succeeded") at INFO; the operator's
        # own decisions are logged by goodput.operator and posted as Events.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    run_operator(
        OperatorSettings(
            namespaces=namespaces,
            peering=peering,
            priority=priority,
            metrics_host=metrics_host,
            metrics_port=metrics_port or None,
            liveness_endpoint=liveness_endpoint,
            kubeconfig=kubeconfig,
            workload=workload,
        )
    )


@operator.command()
def crd() -> None:
    """Print the LLMDeployment CustomResourceDefinition."""
    from goodput.api.crd import render

    click.echo(render(), nl=False)


@operator.command()
@click.option("--name", default="goodput-operator", show_default=True)
def rbac(name: str) -> None:
    """Print the ClusterRole the operator needs."""
    from goodput.operator.permissions import cluster_role

    click.echo(yaml.safe_dump(cluster_role(name), sort_keys=False), nl=False)
