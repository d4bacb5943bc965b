"""The ``goodput profile`` subcommand."""

from __future__ import annotations

import click


@click.group(name="profile")
def profile() -> None:
    """Train, evaluate and query the profiler's models."""


def _add_perf_commands() -> None:
    from goodput.profiler.perf_commands import capacity_cmd, latency_group, memory_cmd

    for command in (memory_cmd, latency_group, capacity_cmd):
        profile.add_command(command)


_add_perf_commands()
