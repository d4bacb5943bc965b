"""One serving pod's data path, run for real on this machine: the gateway in front of vLLM.

The local cluster's GPU nodes are simulated (kwok), so the pods the operator places there never
run. This is the part that does: the two containers of a Goodput pod, `goodput serve` and the
vLLM OpenAI server, as background processes on 127.0.0.1, serving the tiny Llama on the CPU.
They outlive the command that started them (each leads its own process group, recorded in a
pidfile with its kernel start time so a recycled pid is never taken for ours) and are found again
by the next `up`, `status` or `down`. State, logs and the gateway's request log live in
``<cache>/pods/<name>``, next to the dev clusters' state.

`up` is idempotent and cheap when nothing changed: a healthy engine started with the same settings
is reused (it is the slow part: tens of seconds, minutes on a first compile), and the gateway is
reused too unless the serving code changed since it started, in which case only it restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

import goodput
from goodput.dev.cache import exclusive
from goodput.dev.engine import (
    EngineEnv,
    EngineProcess,
    EngineSettings,
    parse_cache_config,
    platform_problem,
)
from goodput.dev.paths import cache_root
from goodput.dev.processes import port_free, port_owner
from goodput.dev.tiny_model import ensure_tiny_model

Progress = Callable[[str], None]

ENGINE = "engine"
GATEWAY = "gateway"

# The metrics `up` shows after its demo request: the request counted with its SLO outcome, its
# latency histograms, tokens, and what the gateway sees of the engine.
SHOWN_METRICS = (
    "goodput_requests_total",
    "goodput_request_ttft_seconds_count",
    "goodput_request_tpot_seconds_count",
    "goodput_generated_tokens_total",
    "goodput_slo_attainment_ratio",
    "goodput_engine_up",
)


class PodError(RuntimeError):
    """The pod could not be started; the message says which process and where its log is."""


class PodUnavailable(PodError):
    """This platform cannot run the vLLM CPU engine, so there is no local pod here."""


@dataclass(frozen=True)
class PodSpec:
    """Everything that determines the pod. Ports are fixed so the URLs printed stay valid."""

    deployment: str = "tiny-llama"
    served_model_name: str = "tiny-llama"
    # Loose on purpose: a 2-core CPU shared with a control plane is no GPU, and the demo should
    # show requests that meet their SLO when the machine is not overloaded.
    ttft_ms: float = 2000.0
    tpot_ms: float = 200.0
    gateway_port: int = 18080
    engine_port: int = 18000
    engine_start_timeout_s: float = 900.0  # the first start compiles the model (minutes)


@dataclass(frozen=True)
class PodProcess:
    """A started process as its pidfile records it."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    fingerprint: str

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks and not _is_zombie(self.pid)


@dataclass(frozen=True)
class PodStatus:
    name: str
    state_dir: Path
    gateway_url: str
    engine_url: str
    processes: Mapping[str, PodProcess | None]
    ready: bool

    @property
    def running(self) -> bool:
        return any(p is not None and p.alive() for p in self.processes.values())


@dataclass(frozen=True)
class UpResult:
    """What `up` did: which processes it reused and how long it took."""

    reused: frozenset[str]
    seconds: float


@dataclass(frozen=True)
class ChatAnswer:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float
    seconds: float


class LocalPod:
    """The engine and gateway of one local pod, started, found again and stopped as a unit."""

    def __init__(self, name: str, spec: PodSpec | None = None, root: Path | None = None) -> None:
        self.name = name
        self.state_dir = (root or cache_root() / "pods") / name
        self._spec = spec

    @property
    def spec(self) -> PodSpec:
        """The given spec, else the one the pod was last started with, else the defaults."""
        if self._spec is None:
            try:
                recorded = json.loads((self.state_dir / "pod.json").read_text())
                self._spec = PodSpec(**recorded)
            except (OSError, ValueError, TypeError):
                self._spec = PodSpec()
        return self._spec

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.gateway_port}"

    @property
    def engine_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.engine_port}"

    @property
    def request_log(self) -> Path:
        return self.state_dir / "requests.jsonl"

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    def process(self, name: str) -> PodProcess | None:
        try:
            data = json.loads(self._pidfile(name).read_text())
            return PodProcess(
                name,
                int(data["pid"]),
                int(data["start_ticks"]),
                tuple(data["argv"]),
                str(data["fingerprint"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def up(self, progress: Progress = lambda _: None) -> UpResult:
        """Start what is not already running as specified; return once the gateway is ready."""
        problem = platform_problem()
        if problem is not None:
            raise PodUnavailable(f"the vLLM CPU engine cannot run here: {problem}")
        started = time.monotonic()
        with exclusive(self.state_dir / "lock"):
            reused = self._up(progress)
        return UpResult(frozenset(reused), round(time.monotonic() - started, 1))

    def _up(self, say: Progress) -> set[str]:
        spec = self.spec
        env = EngineEnv()
        if not env.is_installed():
            say(f"installing the vLLM CPU engine into {env.venv} (once; several GB, minutes)")
        engine = EngineProcess(
            EngineSettings(model=ensure_tiny_model(), served_model_name=spec.served_model_name),
            python=env.ensure(),
            port=spec.engine_port,
            log_path=self.log(ENGINE),
        )
        (self.state_dir / "pod.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        engine_print = _digest(engine.command())
        gateway_argv = self._gateway_argv()
        gateway_print = _digest(gateway_argv, engine_print, _serving_source_digest())
        reused: set[str] = set()

        if self._healthy(ENGINE, engine_print, f"{self.engine_url}/health"):
            reused.add(ENGINE)
            say(f"vLLM engine already running at {self.engine_url} (pid {self._pid(ENGINE)})")
        else:
            self._stop(GATEWAY)  # it would front a stale engine
            self._stop(ENGINE)
            self._check_port_free(spec.engine_port, ENGINE)
            say(f"starting the vLLM CPU engine on {self.engine_url} (log {self.log(ENGINE)})")
            t0 = time.monotonic()
            self._spawn(ENGINE, engine.command(), engine.environment(), engine_print)
            self._await(ENGINE, f"{self.engine_url}/health", spec.engine_start_timeout_s)
            block_size, blocks = parse_cache_config(
                httpx.get(f"{self.engine_url}/metrics", timeout=10).text
            )
            say(
                f"engine healthy in {time.monotonic() - t0:.1f}s: {spec.served_model_name}, "
                f"KV cache {block_size * blocks} tokens"
            )

        if self._healthy(GATEWAY, gateway_print, f"{self.gateway_url}/readyz"):
            reused.add(GATEWAY)
            say(f"gateway already running at {self.gateway_url} (pid {self._pid(GATEWAY)})")
        else:
            self._stop(GATEWAY)
            self._check_port_free(spec.gateway_port, GATEWAY)
            say(f"starting the Goodput gateway on {self.gateway_url} (log {self.log(GATEWAY)})")
            # The caller's environment as is: the gateway imports `goodput` as this process does.
            self._spawn(GATEWAY, gateway_argv, dict(os.environ), gateway_print)
            self._await(GATEWAY, f"{self.gateway_url}/readyz", 120.0)
            say("gateway ready")
        return reused

    def _gateway_argv(self) -> list[str]:
        spec = self.spec
        return [
            sys.executable, "-m", "goodput", "serve",
            "--engine-url", self.engine_url,
            "--host", "127.0.0.1",
            "--port", str(spec.gateway_port),
            "--deployment", spec.deployment,
            "--served-model-name", spec.served_model_name,
            "--ttft-ms", f"{spec.ttft_ms:g}",
            "--tpot-ms", f"{spec.tpot_ms:g}",
            "--request-log", str(self.request_log),
            # Prompts kept, as the operator's pods keep them: the refit learns from them.
            "--request-log-keep-prompts",
            "--drain-timeout", "5",
        ]  # fmt: skip

    def down(self) -> list[str]:
        """Stop the gateway, then the engine; return the names of those that were running."""
        if not self.state_dir.exists():
            return []  # never started: leave no trace (`goodput dev down` always asks)
        with exclusive(self.state_dir / "lock"):
            stopped = [name for name in (GATEWAY, ENGINE) if self._stop(name)]
        return stopped

    def status(self) -> PodStatus:
        processes = {name: self.process(name) for name in (ENGINE, GATEWAY)}
        gateway = processes[GATEWAY]
        ready = gateway is not None and gateway.alive() and _ok(f"{self.gateway_url}/readyz")
        return PodStatus(
            self.name, self.state_dir, self.gateway_url, self.engine_url, processes, ready
        )

    def chat(self, content: str, max_tokens: int = 24) -> ChatAnswer:
        """One streamed chat completion through the gateway, as an OpenAI client sends it."""
        return stream_chat(self.gateway_url, self.spec.served_model_name, content, max_tokens)

    def metric_lines(self, names: Iterable[str] = SHOWN_METRICS) -> list[str]:
        """The gateway's exposition lines for ``names`` (samples only, no comments)."""
        return metric_lines(self.gateway_url, names)

    def curl_examples(self) -> list[str]:
        body = json.dumps(
            {
                "model": self.spec.served_model_name,
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 16,
            }
        )
        url = self.gateway_url
        return [
            f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
            f"curl -s {url}/metrics | grep '^goodput_'",
            f"tail -f {self.request_log}",
        ]

    # Processes

    def _pid(self, name: str) -> int | None:
        record = self.process(name)
        return record.pid if record else None

    def _healthy(self, name: str, fingerprint: str, url: str) -> bool:
        record = self.process(name)
        return (
            record is not None and record.fingerprint == fingerprint and record.alive() and _ok(url)
        )

    def _spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], fingerprint: str
    ) -> None:
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self._pidfile(name).parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} starting {name}\n".encode())
            out.flush()
            # Own session: the pod outlives this command and ignores the terminal's Ctrl-C. The
            # working directory is the state dir, never a checkout (whose `operator/` would
            # shadow the standard library for `python -m`).
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.state_dir,
                start_new_session=True,
            )
        # Kept so that, while this interpreter lives, the child is reaped once it exits.
        _STARTED[process.pid] = process
        record = {
            "pid": process.pid,
            "start_ticks": _start_ticks(process.pid),
            "argv": list(argv),
            "fingerprint": fingerprint,
        }
        tmp = self._pidfile(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(self._pidfile(name))

    def _await(self, name: str, url: str, timeout: float) -> None:
        record = self.process(name)
        assert record is not None
        deadline = time.monotonic() + timeout
        while not _ok(url):
            if not record.alive():
                self._stop(name)
                raise PodError(
                    f"the {name} exited at start; log {self.log(name)}:\n{self._tail(name)}"
                )
            if time.monotonic() > deadline:
                self._stop(name)
                raise PodError(
                    f"the {name} was not ready in {timeout:.0f}s; log {self.log(name)}:\n"
                    + self._tail(name)
                )
            time.sleep(0.5)

    def _stop(self, name: str, timeout: float = 15.0) -> bool:
        """Stop ``name``'s whole process group (vLLM's engine core is a child); True if it ran.

        A group whose leader died may still hold children (an engine core without its API
        server); they are ours: the kernel does not reuse a pid while it names a live group.
        """
        record = self.process(name)
        if record is None:
            return False
        recycled = not record.alive() and _start_ticks(record.pid) not in (-1, record.start_ticks)
        ran = not recycled and (record.alive() or bool(group_members(record.pid)))
        if ran:
            _terminate_group(record.pid, timeout)
        self._pidfile(name).unlink(missing_ok=True)
        return ran

    def _check_port_free(self, port: int, name: str, grace_s: float = 10.0) -> None:
        """Fail clearly if ``port`` stays taken (a process just stopped may need a moment)."""
        deadline = time.monotonic() + grace_s
        while not port_free(port):
            if time.monotonic() > deadline:
                raise PodError(
                    f"127.0.0.1:{port} (for the {name}) is taken by a process this pod did not "
                    f"start ({port_owner(port)}); stop it or choose another port"
                )
            time.sleep(0.2)

    def _tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# Processes this interpreter started, so they can be reaped once they exit.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _stat(pid: int) -> list[str]:
    # /proc/<pid>/stat is "pid (comm) state ppid pgrp ..."; comm may hold spaces, so cut at ")".
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int:
    try:
        return int(_stat(pid)[19])
    except OSError:
        return -1


def _reap_exited() -> None:
    """Collect the exit status of our own children that ended (a zombie would look alive)."""
    for pid, process in list(_STARTED.items()):
        if process.poll() is not None:
            del _STARTED[pid]


def _is_zombie(pid: int) -> bool:
    _reap_exited()
    try:
        return _stat(pid)[0] == "Z"
    except OSError:
        return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(int(entry.name))
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry.name))
    return members


def _terminate_group(pgid: int, timeout: float) -> None:
    """SIGTERM the group, wait for all of it to exit, SIGKILL whatever is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap_exited()
            if not group_members(pgid):
                return
            time.sleep(0.1)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _serving_source_digest() -> str:
    """Hash of the code the gateway runs, so an edited checkout gets a fresh gateway."""
    package = Path(goodput.__file__).resolve().parent
    digest = hashlib.sha256()
    for folder in ("serving", "api"):
        for path in sorted((package / folder).resolve().rglob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stream_chat(gateway_url: str, model: str, content: str, max_tokens: int = 24) -> ChatAnswer:
    """One streamed chat completion through a gateway, as an OpenAI client sends it.

    Streamed because the gateway measures TTFT and TPOT on streams.
    """
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parts: list[str] = []
    finish_reason, usage = "", {"prompt_tokens": 0, "completion_tokens": 0}
    first_token_s: float | None = None
    started = time.monotonic()
    url = f"{gateway_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        if response.status_code != 200:
            response.read()
            raise PodError(f"the gateway answered {response.status_code}: {response.text}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk: dict[str, Any] = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices") or []:
                text = choice.get("delta", {}).get("content")
                if text:
                    first_token_s = first_token_s or time.monotonic() - started
                    parts.append(text)
                finish_reason = choice.get("finish_reason") or finish_reason
            usage = chunk.get("usage") or usage
    return ChatAnswer(
        content="".join(parts),
        finish_reason=finish_reason,
        prompt_tokens=int(usage["prompt_tokens"]),
        completion_tokens=int(usage["completion_tokens"]),
        first_token_seconds=round(first_token_s or 0.0, 3),
        seconds=round(time.monotonic() - started, 3),
    )


def metric_lines(gateway_url: str, names: Iterable[str] = SHOWN_METRICS) -> list[str]:
    """A gateway's exposition lines for ``names`` (samples only, no comments)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    wanted = tuple(names)
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and line.split("{", 1)[0].split(" ", 1)[0] in wanted
    ]
