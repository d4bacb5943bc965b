"""How builders of heavy, rebuildable artefacts (under ``paths.cache_root()``) share them.

CI clones afresh but runs on the same machine right after a session, so an engine venv or a
generated model built once under ``~/.cache/goodput`` is reused; a cold machine rebuilds it.
Two pytest sessions may build the same artefact at once, hence the inter-process lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (created if needed) for the block.

    The kernel drops the lock if the holder dies, so a killed build never wedges the next one.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
