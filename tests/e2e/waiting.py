"""Polling helper for the end-to-end tests: the control plane converges, it does not answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 180,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with its last answer and, if
    given, ``explain()`` (why it may not have happened: pods, events).

    Generous by default: on a loaded 2-core CI machine (a vLLM engine busy-polling both cores)
    a first reconcile plus kwok's pod lifecycle has taken over 90 s.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}){detail}")
