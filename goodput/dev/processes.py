"""Background processes of a local cluster: started detached, tracked by pidfiles, found again.

Every process runs in its own session (so a terminal's Ctrl-C or the parent's exit leaves it
alone) and is recorded with its kernel start time, so a recycled pid is never mistaken for ours.
Processes whose pidfile was lost are still found: each one carries the cluster's state directory
in its command line, and only binaries we start are considered.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Programs a cluster starts; a process is only ever treated as ours if it is one of these.
MANAGED_PROGRAMS = frozenset(
    {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "containerd",
        "kubelet",
    }
)


# Processes started by this Python process, so exited ones can be reaped instead of lingering as
# zombies (which would look alive to `kill -0`).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]


class Supervisor:
    """Starts, finds and stops the processes of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, spec: ProcessSpec) -> ProcessRecord:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        with self.log(spec.name).open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting {spec.name}\n".encode())
            log.flush()
            process = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        # Keep the handle: the process outlives us if we exit first, and while we live `_alive`
        # reaps it through `poll()` once it exits.
        _CHILDREN[process.pid] = process
        record = ProcessRecord(spec.name, process.pid, start_ticks(process.pid), tuple(spec.argv))
        tmp = self.pidfile(spec.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__))
        tmp.replace(self.pidfile(spec.name))
        return record

    def records(self) -> list[ProcessRecord]:
        """Pidfiles in start order."""
        found: list[tuple[float, ProcessRecord]] = []
        for path in self.run_dir.glob("*.pid") if self.run_dir.exists() else ():
            try:
                data = json.loads(path.read_text())
                record = ProcessRecord(
                    data["name"], int(data["pid"]), int(data["start_ticks"]), tuple(data["argv"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            found.append((path.stat().st_mtime, record))
        return [record for _, record in sorted(found, key=lambda item: item[0])]

    def record(self, name: str) -> ProcessRecord | None:
        return next((r for r in self.records() if r.name == name), None)

    def alive(self, name: str) -> bool:
        record = self.record(name)
        return record is not None and process_alive(record.pid, record.start_ticks)

    def tail(self, name: str, lines: int = 25) -> str:
        """The end of a process's log and where the rest is, for an error message."""
        log = self.log(name)
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {log})"
        return "\n".join(text) + f"\n(full log: {log})"

    def await_healthy(
        self,
        name: str,
        probe: Callable[[], bool],
        timeout: float,
        error: type[Exception] = RuntimeError,
    ) -> None:
        """Poll ``probe`` until it holds; raise ``error`` with the log's tail if the process
        exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive(name):
                raise error(f"{name} exited during start-up:\n{self.tail(name)}")
            if probe():
                return
            time.sleep(0.2)
        raise error(f"{name} not healthy after {timeout:.0f}s:\n{self.tail(name)}")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        record = self.record(name)
        if record is not None:
            if process_alive(record.pid, record.start_ticks):
                terminate([record.pid], timeout)
            self.pidfile(name).unlink(missing_ok=True)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every process of this state directory, newest first, including lost ones."""
        for record in reversed(self.records()):
            self.stop(record.name, timeout)
        strays = self.strays()
        if strays:
            terminate(strays, timeout)

    def strays(self) -> list[int]:
        """Live processes of ours that no pidfile names (e.g. after a crash mid-start)."""
        marker = str(self.state_dir) + os.sep
        tracked = {r.pid for r in self.records()}
        strays = []
        for pid, argv in command_lines():
            if pid in tracked or pid == os.getpid() or not argv:
                continue
            if _is_managed(argv) and any(marker in arg for arg in argv):
                strays.append(pid)
        return strays


def _is_managed(argv: Sequence[str]) -> bool:
    program = os.path.basename(argv[0])
    if program in MANAGED_PROGRAMS:
        return True
    # The operator runs as `python -m goodput operator run ... --kubeconfig <state>/...`.
    return "goodput" in argv and "operator" in argv


def terminate(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM each process group, then SIGKILL whatever is left after ``timeout`` seconds."""
    targets = {pid: start_ticks(pid) for pid in pids}
    for pid in targets:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(process_alive(pid, ticks) for pid, ticks in targets.items()):
            return
        time.sleep(0.1)
    for pid, ticks in targets.items():
        if process_alive(pid, ticks):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(process_alive(p, t) for p, t in targets.items()):
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Our processes lead their own session, so the group id is the pid; fall back to the process
    # alone if it is not a group leader (never signal someone else's group).
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def process_alive(pid: int, ticks: int) -> bool:
    """True if ``pid`` runs and is the process that started at ``ticks`` (not a recycled pid)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        fields = _stat_fields(pid)
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == ticks


def _stat_fields(pid: int) -> list[str]:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces, so split after ")".
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot, -1 if it does not exist."""
    try:
        return int(_stat_fields(pid)[19])
    except OSError:
        return -1


def command_lines() -> Iterable[tuple[int, list[str]]]:
    """``(pid, argv)`` of every process this machine runs (argv empty for kernel threads)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry.name), [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A loopback port nothing uses now, for a server about to start.

    Outside the kernel's ephemeral range: a port from it (the kernel's own pick) can be taken by
    the source port of any outgoing connection before the server binds it, or again between a
    server's restarts (a CI run lost a restarted gateway's port that way). Random, so that
    concurrent callers rarely collide; the kernel's pick only if no range outside is usable.
    """
    low, high = _ephemeral_ports()
    ranges = [(lo, hi) for lo, hi in ((10000, low - 1), (high + 1, 65535)) if hi - lo >= 1000]
    for _ in range(200 if ranges else 0):
        lo, hi = ranges[secrets.randbelow(len(ranges))]
        port = lo + secrets.randbelow(hi - lo + 1)
        if port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


LISTEN = 0x0A
CLOSE_WAIT = 0x08  # the peer closed its end; this end has not yet


@dataclass(frozen=True)
class TcpSocket:
    """One row of the kernel's TCP tables (``/proc/net/tcp``, ``tcp6``) for a local port."""

    peer: str  # remote address:port, as the kernel writes it (hex)
    state: int  # LISTEN, CLOSE_WAIT, ...
    unread: int  # bytes received and not yet read by the process
    inode: str


def tcp_sockets(port: int) -> list[TcpSocket]:
    """The kernel's view of every TCP socket on local ``port``: readable even while the process
    behind it is frozen."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    unread = int(parts[4].split(":")[1], 16)
                    rows.append(TcpSocket(parts[2], int(parts[3], 16), unread, parts[9]))
    return rows


def port_owner(port: int) -> str:
    """Best-effort "pid N (cmd)" for whoever listens on ``port``, for error messages."""
    inodes = {sock.inode for sock in tcp_sockets(port) if sock.state == LISTEN}
    for pid, argv in command_lines():
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return f"pid {pid} ({' '.join(argv)[:120]})"
    return "no listener (a closing connection?)" if not inodes else "another user's process"


@contextlib.contextmanager
def served(
    argv: Sequence[str],
    ready_url: str,
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (a gateway, a router, a stand-in engine) in its own session, yielded
    once ``ready_url`` answers 200; stopped with its group (SIGTERM, then SIGKILL) on exit.

    It runs outside the checkout: ``python -m`` puts the working directory on sys.path, where
    the repository's operator/ folder would shadow the standard library's ``operator``."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log_path.open("wb")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(), env=dict(env) if env is not None else None,
            start_new_session=True,
        )  # fmt: skip
        where = f"; see {log_path}" if log_path else ""
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{argv[:4]} exited with {process.returncode}{where}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[:4]} not ready in {timeout_s:.0f} s{where}")
                time.sleep(0.1)
            yield process
        finally:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
