"""The ``goodput dev`` subcommand."""

from __future__ import annotations

import click


@click.group(name="dev")
def dev() -> None:
    """Run a real local control plane with simulated GPU nodes."""
