"""An engine started by the gateway itself (``goodput serve --engine-cmd``), for local use: the
gateway starts it in its own process group, waits until it answers, and stops it on exit."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time

import httpx

log = logging.getLogger(__name__)


class EngineProcess:
    def __init__(self, command: str, engine_url: str) -> None:
        self._argv = shlex.split(command)
        self._url = engine_url.rstrip("/")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("starting engine: %s", shlex.join(self._argv))
        self._process = subprocess.Popen(self._argv, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the engine's ``/health`` answers 200; raise if it exits or times out."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"the engine exited with status {code} before it was ready")
            try:
                if httpx.get(f"{self._url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the engine was not ready after {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Interrupt the engine's process group as Ctrl-C would, then SIGTERM, then SIGKILL.

        SIGINT first because a wrapper such as ``goodput dev engine start`` cleans up the vLLM
        server it started (in a process group of its own) only on an interrupt; vLLM itself shuts
        down gracefully on either signal.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        group = os.getpgid(process.pid)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            try:
                process.wait(timeout=timeout_s / 2)
                return
            except subprocess.TimeoutExpired:
                continue
        log.warning("engine did not stop within %.0f s; killing it", timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        process.wait()
