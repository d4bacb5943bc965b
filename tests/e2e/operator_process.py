"""The operator as a subprocess (``python -m goodput operator run``), as it runs in production:
started, stopped, SIGKILLed and read from its log by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from goodput.dev.processes import free_port


class OperatorProcess:
    """``python -m goodput operator run`` against the cluster, logging to a file.

    Standalone unless ``peering`` names a KopfPeering; several processes with one peering name
    coordinate through it (only the highest ``priority`` acts).
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log: Path,
        env: dict[str, str] | None = None,
        peering: str | None = None,
        priority: int = 0,
        peering_lifetime_s: int = 60,
    ) -> None:
        self.kubeconfig, self.namespace, self.log = kubeconfig, namespace, log
        self.env = {**os.environ, **(env or {})}
        self.peering, self.priority, self.peering_lifetime_s = peering, priority, peering_lifetime_s
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0  # where this run's lines begin in the log

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        sys.stderr.write(f"operator log: {self.log}\n")

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "goodput", "operator", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        if self.peering is None:
            return [*argv, "--standalone"]
        return [
            *argv,
            "--peering", self.peering,
            "--priority", str(self.priority),
            "--peering-lifetime", str(self.peering_lifetime_s),
        ]  # fmt: skip

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no handler finishes, no peering record is withdrawn, nothing is flushed."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def this_run(self) -> str:
        """The log of the current (or last) run only."""
        with self.log.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def started_up(self) -> bool:
        """Whether this run has finished kopf's start-up (its handlers may run from now on)."""
        return "startup' succeeded" in self.this_run()

    def tail(self, lines: int = 40) -> str:
        """The end of the operator's log, for a failure's explanation."""
        return "\n".join(self.text().splitlines()[-lines:]) or "(no operator log)"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text
