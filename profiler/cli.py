"""The ``goodput profile`` subcommand."""

from __future__ import annotations

import click


@click.group(name="profile")
def profile() -> None:
    """Train, evaluate and query the profiler's models."""
