"""Where the dev infrastructure keeps its state: outside the checkout, reused across clones."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$GOODPUT_CACHE_DIR`` or ``~/.cache/goodput``: survives fresh clones on the same machine."""
    configured = os.environ.get("GOODPUT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "goodput"


def repo_root() -> Path:
    """The checkout this package was imported from (``goodput/`` is one level below it)."""
    return Path(__file__).resolve().parents[2]
