"""The ``goodput operator`` subcommand."""

from __future__ import annotations

import click


@click.group(name="operator")
def operator() -> None:
    """Run the Goodput operator."""
