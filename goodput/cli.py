"""The ``goodput`` command: one entry point whose subcommands belong to the components."""

from __future__ import annotations

import importlib
from typing import Any

import click

from goodput.operator.cli import FLEET_NODES

# Each component owns its subcommand; importing lazily keeps ``goodput --help`` fast and lets a
# pod image that only runs the gateway skip the operator's dependencies.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("goodput.operator.cli", "operator"),
    "serve": ("goodput.serving.cli", "serve"),
    "route": ("goodput.router.cli", "route"),
    "profile": ("goodput.profiler.cli", "profile"),
    "dev": ("goodput.dev.cli", "dev"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


def _fleet_nodes(fleet: str) -> list[dict[str, Any]]:
    """A dev fleet's Node objects, for ``goodput operator render`` without a cluster."""
    from goodput.dev.fleet import Fleet

    return Fleet.load(fleet).all_nodes()


@click.group(cls=_LazyGroup)
@click.version_option(package_name="goodput")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Goodput: serve LLMs within their latency SLOs on as few GPUs as possible."""
    # Wired here, above both: the operator may not import the dev tooling it renders against.
    ctx.meta[FLEET_NODES] = _fleet_nodes


if __name__ == "__main__":
    main()
