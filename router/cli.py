"""The ``goodput route`` command: run the cluster router in front of a deployment's replicas."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from goodput.api.router_config import RouterConfig
from goodput.serving.cli import check_tls, tls_options


def load_config(path: str | None, overrides: dict[str, Any]) -> RouterConfig:
    """The config file (JSON or YAML, as the operator's ConfigMap holds it) with command-line
    overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if not isinstance(loaded, dict):
            raise click.BadParameter(f"{path} does not hold a mapping", param_hint="--config")
        data = loaded
    data.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise click.UsageError(f"invalid router config:\n{exc}") from None


@click.command(name="route")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="RouterConfig as JSON or YAML (the operator's ConfigMap).",
)
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    help="A replica's gateway URL (repeat); instead of discovery.",
)
@click.option("--namespace", help="Discover replicas from this namespace's Service ...")
@click.option("--service", help="... of this name (its EndpointSlices).")
@click.option("--name", help="The `router` metrics label.")
@click.option(
    "--picker",
    type=click.Choice(["max-score", "round-robin"]),
    help="How replicas are picked (round-robin: a baseline that ignores scores).",
)
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    help="TYPE[=WEIGHT], repeat; replaces the configured scorers (e.g. least-load, random).",
)
@click.option(
    "--max-connections",
    default=4096,
    show_default=True,
    type=int,
    help="Open client connections; past it, 503.",
)
@tls_options
@click.option(
    "--upstream-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="Trust these CAs (PEM) for the replicas' HTTPS certificates; default: the system's.",
)
@click.option(
    "--upstream-server-name",
    help="The name the replicas' certificates must carry (and the SNI sent), e.g. the "
    "Service's DNS name when they are dialled by IP. Discovered replicas are then dialled "
    "over HTTPS.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def route(
    config_path: str | None,
    endpoints: tuple[str, ...],
    namespace: str | None,
    service: str | None,
    name: str | None,
    picker: str | None,
    scorers: tuple[str, ...],
    max_connections: int,
    tls_cert: str | None,
    tls_key: str | None,
    upstream_ca: str | None,
    upstream_server_name: str | None,
    host: str,
    port: int,
    log_level: str,
) -> None:
    """Route OpenAI requests across a deployment's replicas by prefix cache, session, SLO
    headroom and load."""
    import uvicorn

    from goodput.router.app import create_app, guarded
    from goodput.serving.http_guard import HttpLimits, server_config

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    check_tls(tls_cert, tls_key)
    if (namespace is None) != (service is None):
        raise click.UsageError("--namespace and --service go together")
    overrides: dict[str, Any] = {
        "endpoints": list(endpoints),
        "name": name,
        "picker": picker,
        "discovery": {"namespace": namespace, "service": service} if service else None,
        "scorers": [_scorer(s) for s in scorers],
    }
    if upstream_ca or upstream_server_name:
        overrides["upstreamTls"] = {"caFile": upstream_ca, "serverName": upstream_server_name}
    config = load_config(config_path, overrides)
    limits = HttpLimits(max_connections=max_connections)
    server = uvicorn.Server(
        server_config(
            guarded(create_app(config), limits),
            host=host,
            port=port,
            limits=limits,
            log_level=log_level,
            access_log=False,
            # In-flight streams finish on SIGTERM (the pod's grace period bounds the wait).
            timeout_graceful_shutdown=50,
            lifespan="on",
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
    )
    server.run()


def _scorer(text: str) -> dict[str, Any]:
    kind, _, weight = text.partition("=")
    return {"type": kind, "weight": float(weight) if weight else 1.0}
