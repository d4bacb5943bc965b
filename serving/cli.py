"""The ``goodput serve`` command: run the in-pod gateway (and, for local use, its engine)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from pydantic import ValidationError

from goodput.api.gateway_config import GatewayConfig


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


F = TypeVar("F", bound=Callable[..., Any])


def tls_options(command: F) -> F:
    """``--tls-cert``/``--tls-key``: the front doors (gateway, router) serve HTTPS alike."""
    command = click.option(
        "--tls-key",
        type=click.Path(exists=True, dir_okay=False),
        help="The certificate's private key (PEM; tls.key).",
    )(command)
    return click.option(
        "--tls-cert",
        type=click.Path(exists=True, dir_okay=False),
        help="Serve HTTPS with this certificate (PEM; e.g. tls.crt of a mounted TLS Secret).",
    )(command)


def check_tls(cert: str | None, key: str | None) -> None:
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")


def load_config(path: str | None, overrides: dict[str, Any]) -> GatewayConfig:
    """The config file (JSON or YAML, as the operator's ConfigMap holds it) with command-line
    overrides on top; either alone is enough if it names the deployment, model and SLO."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if not isinstance(loaded, dict):
            raise click.BadParameter(f"{path} does not hold a mapping", param_hint="--config")
        data = loaded
    for section in ("slo", "auth"):
        given = {k: v for k, v in overrides.pop(section, {}).items() if v is not None}
        if given:
            data[section] = {**(data.get(section) or {}), **given}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise click.UsageError(f"invalid gateway config:\n{exc}") from None


@click.command(name="serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="GatewayConfig as JSON or YAML (the operator's ConfigMap).",
)
@click.option("--engine-url", help="The vLLM OpenAI server, e.g. http://127.0.0.1:8000.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--admin-port",
    type=int,
    help="Also serve /metrics and the router's load report on this port, without an API key "
    "(let only Prometheus and the router reach it); on --port they want a key.",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False),
    help="API keys of tenants: a directory of tenant files (a mounted Secret; docs/security.md).",
)
@click.option(
    "--anonymous/--no-anonymous",
    default=None,
    help="Serve requests without an API key (default: yes).",
)
@click.option(
    "--max-body-mb",
    default=4.0,
    show_default=True,
    type=float,
    help="Largest request body accepted (413 beyond).",
)
@tls_options
@click.option(
    "--max-connections",
    default=2048,
    show_default=True,
    type=int,
    help="Open client connections at most (503 beyond).",
)
@click.option("--policy", type=click.Choice(["fcfs", "slo", "oracle"]))
@click.option("--overload", type=click.Choice(["reject", "best-effort"]))
@click.option("--deployment", help="Deployment name (metrics label).")
@click.option("--served-model-name", help="The model name clients ask for.")
@click.option("--ttft-ms", type=float, help="TTFT objective.")
@click.option("--tpot-ms", type=float, help="TPOT objective.")
@click.option("--e2e-ms", type=float, help="End-to-end objective.")
@click.option("--max-queue-length", type=int)
@click.option("--max-concurrency", type=int, help="Cap on requests sent to the engine at once.")
@click.option(
    "--initial-concurrency",
    type=int,
    help="Batch limit before anything is measured (default 4); it explores upward.",
)
@click.option(
    "--kv-cache-tokens",
    type=int,
    help="The engine's KV-cache capacity in tokens, if its /metrics does not report it.",
)
@click.option("--engine-cmd", help="Start this engine command and stop it on exit (local use).")
@click.option("--engine-ready-timeout", default=600.0, show_default=True, type=float)
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False),
    help="Append a JSON line per finished request here.",
)
@click.option(
    "--request-log-max-mb",
    default=64.0,
    show_default=True,
    type=float,
    help="Rotate the request log to <path>.1 past this size.",
)
@click.option(
    "--request-log-keep-prompts/--request-log-redact-prompts",
    default=False,
    show_default=True,
    help="Keep prompts in the request log (what the predictor's refit learns from) or leave "
    "them out.",
)
@click.option(
    "--engine-metrics-interval",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds between reads of the engine's /metrics (each read costs the engine CPU).",
)
@click.option(
    "--drain-timeout",
    default=25.0,
    show_default=True,
    type=float,
    help="Seconds in-flight requests may take to finish after SIGTERM.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    config_path: str | None,
    engine_url: str | None,
    host: str,
    port: int,
    admin_port: int | None,
    keys_dir: str | None,
    anonymous: bool | None,
    max_body_mb: float,
    tls_cert: str | None,
    tls_key: str | None,
    max_connections: int,
    policy: str | None,
    overload: str | None,
    deployment: str | None,
    served_model_name: str | None,
    ttft_ms: float | None,
    tpot_ms: float | None,
    e2e_ms: float | None,
    max_queue_length: int | None,
    max_concurrency: int | None,
    initial_concurrency: int | None,
    kv_cache_tokens: int | None,
    engine_cmd: str | None,
    engine_ready_timeout: float,
    request_log: str | None,
    request_log_max_mb: float,
    request_log_keep_prompts: bool,
    engine_metrics_interval: float,
    drain_timeout: float,
    log_level: str,
) -> None:
    """Run the SLO-aware OpenAI-compatible gateway in front of a vLLM engine."""
    # Imported here so that `goodput --help` does not load the web stack.
    import uvicorn

    from goodput.serving.app import create_admin_app, create_app
    from goodput.serving.drain import DrainingServer
    from goodput.serving.engine_process import EngineProcess
    from goodput.serving.gateway import Gateway
    from goodput.serving.http_guard import HttpLimits, server_config
    from goodput.serving.request_log import RequestLog

    check_tls(tls_cert, tls_key)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(
        config_path,
        {
            "engineUrl": engine_url,
            "policy": policy,
            "overload": overload,
            "deployment": deployment,
            "servedModelName": served_model_name,
            "maxQueueLength": max_queue_length,
            "maxConcurrency": max_concurrency,
            "initialConcurrency": initial_concurrency,
            "kvCacheTokens": kv_cache_tokens,
            "slo": {"ttftMs": ttft_ms, "tpotMs": tpot_ms, "e2eMs": e2e_ms},
            "auth": {"keysDir": keys_dir, "anonymous": anonymous},
        },
    )
    engine = EngineProcess(engine_cmd, config.engine_url) if engine_cmd else None
    # Until the server installs its own handlers, SIGTERM must still unwind through `finally`,
    # or an engine started here would outlive the gateway.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if engine is not None:
            engine.start()
            engine.wait_ready(engine_ready_timeout)
        log = None
        if request_log is not None:
            log = RequestLog(
                request_log,
                max_bytes=int(request_log_max_mb * 1024 * 1024),
                keep_prompts=request_log_keep_prompts,
            )
        gateway = Gateway(
            config, request_log=log, engine_metrics_interval_s=engine_metrics_interval
        )
        limits = HttpLimits(
            max_body_bytes=int(max_body_mb * 1024 * 1024), max_connections=max_connections
        )
        api = server_config(
            create_app(gateway, limits=limits),
            host=host,
            port=port,
            limits=limits,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            lifespan="on",
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
        admin = None
        if admin_port is not None:
            admin = uvicorn.Config(
                create_admin_app(gateway),
                host=host,
                port=admin_port,
                log_level=log_level,
                access_log=False,
                lifespan="off",
            )
        DrainingServer(api, gateway, grace_s=drain_timeout, admin=admin).run()
    finally:
        if engine is not None:
            engine.stop()
