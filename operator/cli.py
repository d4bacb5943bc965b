"""The ``goodput operator`` subcommand: run the operator in-process, or print its manifests."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import click
import yaml

from goodput.operator.settings import (
    PULL_POLICIES,
    AutoscalingSettings,
    WorkloadSettings,
    parse_toleration,
)

#: Key in ``click.Context.meta`` of a reader of the dev fleets' Node objects (fleet name or file
#: -> Nodes), for ``render``. The ``goodput`` command puts it there: ``goodput.dev`` sits above
#: the operator in the layers, so the operator cannot import it.
FLEET_NODES = "goodput.operator.fleet_nodes"
FleetNodes = Callable[[str], list[dict[str, Any]]]


def _workload_options(command: Callable[..., None]) -> Callable[..., None]:
    """The serving-pod settings ``run`` and ``render`` share, so a dry run is given what the
    operator would be."""
    options = [
        click.option("--engine-image", envvar="GOODPUT_ENGINE_IMAGE", help="Default vLLM image."),
        click.option(
            "--gateway-image", envvar="GOODPUT_GATEWAY_IMAGE", help="Default gateway image."
        ),
        click.option(
            "--image-pull-policy",
            envvar="GOODPUT_IMAGE_PULL_POLICY",
            type=click.Choice(PULL_POLICIES),
            help="Pull policy of serving pods' images  [default: IfNotPresent]",
        ),
        click.option(
            "--toleration",
            "tolerations",
            multiple=True,
            metavar="KEY[=VALUE]:EFFECT",
            help="Extra toleration for serving pods (repeatable).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _workload_settings(
    engine_image: str | None,
    gateway_image: str | None,
    image_pull_policy: str | None,
    tolerations: tuple[str, ...],
) -> WorkloadSettings:
    try:
        parsed = tuple(parse_toleration(t) for t in tolerations)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--toleration") from err
    settings = WorkloadSettings(tolerations=parsed)
    return dataclasses.replace(
        settings,
        engine_image=engine_image or settings.engine_image,
        gateway_image=gateway_image or settings.gateway_image,
        image_pull_policy=image_pull_policy or settings.image_pull_policy,
    )


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
    "--peering-lifetime",
    type=click.IntRange(min=15),
    default=60,
    show_default=True,
    help="Seconds a replica's peering record outlives its last keep-alive: the failover time "
    "when the active replica dies without stopping.",
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
@click.option(
    "--autoscaling-interval",
    type=click.FloatRange(min=0.1),
    envvar="GOODPUT_AUTOSCALING_INTERVAL_S",
    help="Seconds between two autoscaling decisions per LLMDeployment  [default: 15]",
)
@click.option(
    "--autoscaling-replica-rps",
    type=click.FloatRange(min=0.001),
    envvar="GOODPUT_AUTOSCALING_REPLICA_RPS",
    help="Requests/s a replica serves within its SLO, for models the profiler does not know "
    "[default: 1]",
)
@_workload_options
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def run(
    kubeconfig: str | None,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    standalone: bool,
    peering: str | None,
    priority: int,
    peering_lifetime: int,
    metrics_port: int,
    metrics_host: str,
    liveness_endpoint: str | None,
    autoscaling_interval: float | None,
    autoscaling_replica_rps: float | None,
    engine_image: str | None,
    gateway_image: str | None,
    image_pull_policy: str | None,
    tolerations: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run the operator until interrupted."""
    if kubeconfig:
        # kopf's login reads it from here; set it before the kubernetes client is imported,
        # which reads the variable once, at import time.
        os.environ["KUBECONFIG"] = os.path.abspath(kubeconfig)
    from goodput.operator.runner import run_operator
    from goodput.operator.settings import OperatorSettings

    if all_namespaces and namespaces:
        raise click.UsageError("--all-namespaces and --namespace exclude each other")
    if standalone and peering:
        raise click.UsageError("--standalone and --peering exclude each other")
    workload = _workload_settings(engine_image, gateway_image, image_pull_policy, tolerations)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # kopf logs every handled watch event ("Handler ... succeeded") at INFO; the operator's
        # own decisions are logged by goodput.operator and posted as Events.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # The autoscaler reads every pod's load report each tick: one INFO line per request.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    run_operator(
        OperatorSettings(
            namespaces=namespaces,
            peering=peering,
            priority=priority,
            peering_lifetime_s=peering_lifetime,
            metrics_host=metrics_host,
            metrics_port=metrics_port or None,
            liveness_endpoint=liveness_endpoint,
            kubeconfig=kubeconfig,
            workload=workload,
            autoscaling=_autoscaling_settings(
                AutoscalingSettings(), autoscaling_interval, autoscaling_replica_rps
            ),
        )
    )


def _autoscaling_settings(
    settings: AutoscalingSettings, interval_s: float | None, replica_rps: float | None
) -> AutoscalingSettings:
    """The environment's settings with the flags given on top."""
    return dataclasses.replace(
        settings,
        interval_s=interval_s or settings.interval_s,
        replica_rps=replica_rps or settings.replica_rps,
    )


@operator.command()
def crd() -> None:
    """Print the LLMDeployment CustomResourceDefinition."""
    from goodput.api.crd import render

    click.echo(render(), nl=False)


@operator.command()
@click.option("--name", default="goodput-operator", show_default=True)
@click.option(
    "--read-tls-secrets",
    is_flag=True,
    help="Also get Secrets by name, so the status can say what is wrong with spec.gateway.tls's.",
)
def rbac(name: str, read_tls_secrets: bool) -> None:
    """Print the ClusterRole the operator needs."""
    from goodput.operator.permissions import cluster_role

    role = cluster_role(name, read_tls_secrets=read_tls_secrets)
    click.echo(yaml.safe_dump(role, sort_keys=False), nl=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the gateway's JSON config, the engine's preStop script) as literal
    blocks, readable as they are in the pod."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _documents(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The LLMDeployments of a manifest file, numbered from 1 as ``kubectl`` counts documents;
    anything else in it is an error, not silently skipped."""
    name = getattr(stream, "name", "-")
    try:
        docs = list(yaml.safe_load_all(stream))
    except yaml.YAMLError as err:
        raise click.ClickException(f"{name}: not YAML: {err}") from err
    for number, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        if kind != "LLMDeployment":
            raise click.ClickException(
                f"{name}: document {number} is a {kind}, not an LLMDeployment"
            )
        yield number, doc


@operator.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.File("r"),
    help="LLMDeployment manifests (YAML, several documents allowed; - for stdin). Repeatable.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    help="Place on this cluster's nodes, around the GPUs its pods hold (read only).",
)
@click.option(
    "--fleet",
    metavar="NAME|FILE",
    help="Place on a dev fleet's nodes, without a cluster  [default: default]",
)
@click.option("--namespace", "-n", help="For manifests that name none  [default: default]")
@_workload_options
@click.pass_context
def render(
    ctx: click.Context,
    files: tuple[IO[str], ...],
    kubeconfig: str | None,
    fleet: str | None,
    namespace: str | None,
    engine_image: str | None,
    gateway_image: str | None,
    image_pull_policy: str | None,
    tolerations: tuple[str, ...],
) -> None:
    """Print the objects the operator would create for LLMDeployment manifests, and the status it
    would write (a dry run, as `helm template` is for a chart)."""
    from pydantic import ValidationError

    from goodput.operator.render import Rendered
    from goodput.operator.render import render as dry_run

    if kubeconfig and fleet:
        raise click.UsageError("--kubeconfig and --fleet exclude each other")
    workload = _workload_settings(engine_image, gateway_image, image_pull_policy, tolerations)
    manifests = [(f, number, doc) for f in files for number, doc in _documents(f)]
    if kubeconfig:
        from goodput.operator.kube import Kube
        from goodput.operator.runner import api_client

        kube = Kube(api_client(kubeconfig))
        nodes, pods = kube.list_nodes(), kube.list_all_pods()
    else:
        fleet_nodes: FleetNodes | None = ctx.meta.get(FLEET_NODES)
        if fleet_nodes is None:
            raise click.UsageError("no dev fleet here: pass --kubeconfig")
        nodes, pods = fleet_nodes(fleet or "default"), []
    results: list[tuple[str, Rendered]] = []
    for stream, number, doc in manifests:
        source = getattr(stream, "name", "-")
        try:
            (result,) = dry_run([doc], nodes, workload, pods, namespace)
        except ValidationError as err:
            problems = "\n".join(
                f"  {'.'.join(str(p) for p in e['loc']) or '(object)'}: {e['msg']}"
                for e in err.errors()
            )
            name = (doc.get("metadata") or {}).get("name", "?")
            raise click.ClickException(
                f"{source}: document {number} (LLMDeployment {name}) is invalid:\n{problems}"
            ) from err
        results.append((source, result))
        # Later manifests see the GPUs this one's pods would hold, as they would on a cluster.
        pods = [*pods, *result.pods]
    for source, result in results:
        for obj in [*result.objects, result.llmdeployment]:
            click.echo(f"---\n# Source: {source}")
            if obj is result.llmdeployment:
                for notice in result.notices:
                    kind = "Warning" if notice.warning else "Normal"
                    click.echo(f"# Event {kind} {notice.reason}: {notice.message}")
            click.echo(yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False), nl=False)
        if not result.placed:
            meta = result.llmdeployment["metadata"]
            click.echo(
                f"warning: {meta['namespace']}/{meta['name']} would not be placed; see its status",
                err=True,
            )
