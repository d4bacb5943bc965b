"""The ``goodput serve`` subcommand."""

from __future__ import annotations

import click


@click.group(name="serve")
def serve() -> None:
    """Run the in-pod gateway."""
