"""The contenders: vLLM alone, and the gateway in front of it with each scheduling policy.

Each gateway contender is a real ``goodput serve`` process in front of a real engine; the runner
decides whether contenders share one engine (interleaved) or each get a fresh one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadgen import SLO

from goodput.dev.engine import EngineProcess
from goodput.dev.processes import free_port, served


@dataclass(frozen=True)
class Contender:
    name: str
    policy: str | None  # None: clients talk to vLLM directly

    @property
    def oracle(self) -> bool:
        return self.policy == "oracle"


CONTENDERS = (
    Contender("vllm", None),
    Contender("gateway-fcfs", "fcfs"),
    Contender("gateway-slo", "slo"),
    Contender("gateway-oracle", "oracle"),
)


@contextmanager
def gateway(
    policy: str, engine: EngineProcess, slo: SLO, log_path: Path, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """A ``goodput serve`` process in front of ``engine`` (``extra``: more of its options);
    yields its URL once ready."""
    port = free_port()
    command = [
        sys.executable, "-m", "goodput", "serve",
        "--engine-url", engine.url,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--policy", policy,
        "--deployment", "bench",
        "--served-model-name", engine.model_name,
        "--ttft-ms", f"{slo.ttft_s * 1000:.1f}",
        "--tpot-ms", f"{slo.tpot_s * 1000:.2f}",
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip
    if engine.facts.kv_cache_tokens:
        # vLLM without statistics does not report its KV capacity; the gateway needs it.
        command += ["--kv-cache-tokens", str(engine.facts.kv_cache_tokens)]
    url = f"http://127.0.0.1:{port}"
    with served(command, f"{url}/readyz", log_path=log_path, env=os.environ):
        yield url
