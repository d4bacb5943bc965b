"""``goodput dev pod``: the local serving pod (gateway + vLLM on the CPU), and its demo request."""

from __future__ import annotations

import dataclasses
import threading

import click
import httpx
from rich.console import Console
from rich.markup import escape

from goodput.dev.local_pod import (
    GATEWAY,
    LocalPod,
    PodError,
    PodUnavailable,
    UpResult,
    metric_lines,
    stream_chat,
)

DEFAULT_NAME = "goodput-dev"
DEMO_PROMPT = "Hello! What does Goodput do?"

_console = Console(stderr=True, log_path=False)

name_option = click.option(
    "--name", default=DEFAULT_NAME, show_default=True, help="Pod name (its state directory)."
)


@click.group(name="pod")
def pod() -> None:
    """A real serving pod on this machine: the gateway in front of vLLM (CPU, tiny model)."""


@pod.command(name="up")
@name_option
@click.option("--gateway-port", type=int, help="Loopback port of the gateway [default: 18080].")
@click.option("--engine-port", type=int, help="Loopback port of vLLM [default: 18000].")
def pod_up(name: str, gateway_port: int | None, engine_port: int | None) -> None:
    """Start (or reuse) the pod, send it one chat completion, and show its metrics."""
    local = LocalPod(name)
    spec = local.spec  # as last started, so `up` after `up --gateway-port N` keeps N
    if gateway_port is not None:
        spec = dataclasses.replace(spec, gateway_port=gateway_port)
    if engine_port is not None:
        spec = dataclasses.replace(spec, engine_port=engine_port)
    local = LocalPod(name, spec)
    try:
        bring_up(local)
    except PodError as exc:
        _console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(1) from exc


@pod.command(name="down")
@name_option
def pod_down(name: str) -> None:
    """Stop the pod's gateway and engine."""
    stopped = LocalPod(name).down()
    what = f"stopped {', '.join(stopped)}" if stopped else "not running"
    _console.print(f"pod {name}: {what}")


@pod.command(name="status")
@name_option
def pod_status(name: str) -> None:
    """Show the pod's processes and whether the gateway is ready (exit 1 if not)."""
    state = LocalPod(name).status()
    for process_name, record in state.processes.items():
        running = record is not None and record.alive()
        pid = f"pid {record.pid}" if record is not None and running else "not running"
        click.echo(f"{process_name:8} {pid}")
    click.echo(f"gateway  {state.gateway_url}  ready: {'yes' if state.ready else 'no'}")
    click.echo(f"engine   {state.engine_url}")
    click.echo(f"state    {state.state_dir}")
    if not state.ready:
        raise SystemExit(1)


def _say(message: str) -> None:
    _console.log(escape(message))


def bring_up(local: LocalPod) -> None:
    """Start or reuse the pod, then show the data path working: one request, its metrics."""
    show(local, local.up(progress=_say))


def show(local: LocalPod, result: UpResult) -> None:
    """Send the ready pod one chat completion and print it, the gateway's metrics, and curl."""
    how = "reused" if len(result.reused) == 2 else "ready"
    _console.print(f"[green]pod {local.name} {how}[/green] in {result.seconds:.1f}s")
    try:
        show_gateway(local.gateway_url, local.spec.served_model_name, "local processes")
    except httpx.HTTPError as exc:
        log = local.log(GATEWAY)
        raise PodError(f"the pod's gateway did not answer: {exc!r}; log {log}") from exc
    click.echo("\ntry:")
    for example in local.curl_examples():
        click.echo(f"  {example}")
    click.echo(f"  goodput dev pod down --name {local.name}")


def show_gateway(url: str, model: str, where: str) -> None:
    """Send a gateway one streamed chat completion and print it and its metrics."""
    answer = stream_chat(url, model, DEMO_PROMPT)
    metrics = metric_lines(url)
    click.echo(f"\nserving pod: {where}")
    click.echo(f"POST {url}/v1/chat/completions  (gateway -> vLLM)")
    click.echo(f"  user:      {DEMO_PROMPT}")
    click.echo(f"  assistant: {answer.content!r}")
    click.echo("             (random weights: the words are noise; tokens and timings are real)")
    click.echo(
        f"  usage:     {answer.prompt_tokens} prompt + {answer.completion_tokens} completion "
        f"tokens, finish_reason={answer.finish_reason}"
    )
    click.echo(
        f"  latency:   first token {answer.first_token_seconds * 1000:.0f} ms, "
        f"all {answer.seconds * 1000:.0f} ms (streamed)"
    )
    click.echo(f"\n{url}/metrics (excerpt):")
    for line in metrics:
        click.echo(f"  {line}")


class PodBesideCluster:
    """The pod step of ``goodput dev up``, started before the cluster and finished after it.

    The engine's start (tens of seconds to minutes, mostly imports and compilation) overlaps the
    control plane's, so ``dev up`` takes about the longer of the two, not their sum. A platform
    without the engine is no failure here: the cluster is still worth having.
    """

    def __init__(self, name: str, console: Console = _console) -> None:
        """``console``: the one showing the cluster's spinner, so progress lines stay clean."""
        self.pod = LocalPod(name)
        self._console = console
        self._result: UpResult | None = None
        self._error: PodError | None = None
        # A daemon: if the cluster fails and the command exits, the started processes stay
        # recorded in their pidfiles, for the next `up` to reuse or clean up.
        self._thread = threading.Thread(target=self._up, name="local-pod", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _up(self) -> None:
        try:
            self._result = self.pod.up(progress=lambda m: self._console.log(escape(m)))
        except PodError as exc:
            self._error = exc

    def finish(self) -> bool:
        """Wait for the pod and show it; False if it failed (the reason is printed)."""
        if self._thread.is_alive():
            with self._console.status("waiting for the local serving pod (the engine's start)"):
                self._thread.join()
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            assert self._result is not None
            show(self.pod, self._result)
        except PodUnavailable as exc:
            _console.print(f"[yellow]no local serving pod:[/yellow] {escape(str(exc))}")
        except PodError as exc:
            _console.print(f"[red]local serving pod failed:[/red] {escape(str(exc))}")
            _console.print(f"  retry with: goodput dev pod up --name {self.pod.name}")
            return False
        return True
