"""Build the control-plane binaries from pinned Go modules into a cache outside the checkout.

Each component is built into ``<cache>/bin/<name>-<version>/`` and stamped with a fingerprint of
its recipe (module, version, commands, flags, go.mod template); a directory whose stamp matches is
reused, anything else is rebuilt. Builds run one at a time under a file lock, so two test sessions
starting together build once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

from goodput.dev.paths import cache_root
from goodput.dev.versions import COMPONENTS, KUBERNETES_STAGING_VERSION, GoComponent

GO_FALLBACK_DIRS = ("/usr/local/go/bin", str(Path.home() / "go" / "bin"))
_TEMPLATES = Path(__file__).parent / "gomod"
_STAMP = ".built.json"

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A Go build failed; the message carries the command and the tail of its output."""


def go_environment() -> dict[str, str]:
    """The environment for ``go``: the toolchain on PATH, static binaries, no toolchain switching.

    ``GOTOOLCHAIN=local`` keeps a module's ``toolchain`` line from downloading another Go; the
    module and build caches stay in Go's default places so every checkout shares them.
    """
    env = dict(os.environ)
    path = env.get("PATH", "")
    extra = [d for d in GO_FALLBACK_DIRS if d not in path.split(os.pathsep)]
    env["PATH"] = os.pathsep.join([path, *extra]) if path else os.pathsep.join(extra)
    env["CGO_ENABLED"] = "0"
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-buildvcs=false"
    return env


def find_go(env: dict[str, str]) -> str:
    go = shutil.which("go", path=env["PATH"])
    if go is None:
        raise BuildError(
            "the Go toolchain is not installed (looked on PATH and in /usr/local/go/bin); "
            "install Go >= 1.26 to build the local control plane"
        )
    return go


@dataclass(frozen=True)
class BuildRecord:
    """What a build produced and how long each step took (for docs/dev-cluster.md)."""

    component: str
    version: str
    seconds: dict[str, float]


class BinaryCache:
    """The per-version binary directories and a combined directory to put on ``PATH``."""

    def __init__(
        self, root: Path | None = None, components: Sequence[GoComponent] = COMPONENTS
    ) -> None:
        self.root = root or cache_root()
        self.components = tuple(components)

    @property
    def bin_root(self) -> Path:
        return self.root / "bin"

    @property
    def build_root(self) -> Path:
        return self.root / "build"

    def component_dir(self, component: GoComponent) -> Path:
        return self.bin_root / component.key

    @property
    def bin_dir(self) -> Path:
        """One directory with every binary, named by all versions: safe to put on ``PATH``."""
        digest = hashlib.sha256("|".join(c.key for c in self.components).encode()).hexdigest()
        return self.bin_root / f"path-{digest[:12]}"

    def path(self, binary: str) -> Path:
        for component in self.components:
            if binary in component.commands:
                return self.component_dir(component) / binary
        raise KeyError(f"no pinned component builds {binary!r}")

    def is_built(self, component: GoComponent) -> bool:
        directory = self.component_dir(component)
        try:
            stamp = json.loads((directory / _STAMP).read_text())
        except (OSError, ValueError):
            return False
        if stamp.get("fingerprint") != recipe_fingerprint(component):
            return False
        return all(os.access(directory / name, os.X_OK) for name in component.commands)

    def missing(self) -> list[GoComponent]:
        return [c for c in self.components if not self.is_built(c)]

    def ensure(self, progress: Progress | None = None) -> list[BuildRecord]:
        """Build whatever is missing (one component at a time) and link ``bin_dir``."""
        records: list[BuildRecord] = []
        if self.missing():
            with self._lock():
                for component in self.components:  # re-check: another process may have built it
                    if not self.is_built(component):
                        records.append(self._build(component, progress))
        self._link()
        return records

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.build_root.mkdir(parents=True, exist_ok=True)
        with (self.build_root / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _link(self) -> None:
        target = self.bin_dir
        target.mkdir(parents=True, exist_ok=True)
        for component in self.components:
            for name in component.commands:
                link = target / name
                source = self.component_dir(component) / name
                if link.is_symlink() and link.readlink() == source:
                    continue
                tmp = target / f".{name}.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(source)
                tmp.replace(link)

    def _build(self, component: GoComponent, progress: Progress | None) -> BuildRecord:
        env = go_environment()
        go = find_go(env)
        final = self.component_dir(component)
        staging = final.with_name(final.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        seconds: dict[str, float] = {}
        ldflags = " ".join(("-s", "-w", *component.ldflags))
        if component.wrapper is None:
            # No replace directives: `go install pkg@version` resolves exactly the pinned module.
            for name, package in component.commands.items():
                _say(progress, f"building {name} {component.version}")
                seconds[name] = _run(
                    [
                        go,
                        "install",
                        "-trimpath",
                        "-ldflags",
                        ldflags,
                        f"{package}@{component.version}",
                    ],
                    env={**env, "GOBIN": str(staging)},
                    cwd=self.build_root,
                )
        else:
            workdir = self.build_root / component.key
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            _say(progress, f"resolving {component.module} {component.version}")
            (workdir / "go.mod").write_text(render_wrapper(component, go, env))
            seconds["go mod tidy"] = _run([go, "mod", "tidy"], env=env, cwd=workdir)
            for name, package in component.commands.items():
                _say(progress, f"building {name} {component.version}")
                seconds[name] = _run(
                    [
                        go,
                        "build",
                        "-trimpath",
                        "-ldflags",
                        ldflags,
                        "-o",
                        str(staging / name),
                        package,
                    ],
                    env=env,
                    cwd=workdir,
                )
        stamp = {
            "fingerprint": recipe_fingerprint(component),
            "version": component.version,
            "seconds": seconds,
            "built_at": time.time(),
        }
        (staging / _STAMP).write_text(json.dumps(stamp, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return BuildRecord(component.name, component.version, seconds)


def recipe_fingerprint(component: GoComponent) -> str:
    """Hash of everything that shapes the binaries, so a change to any of it rebuilds."""
    parts = [component.module, component.version, json.dumps(component.commands, sort_keys=True)]
    parts += component.ldflags
    if component.wrapper is not None:
        parts.append((_TEMPLATES / component.wrapper).read_text())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The modules Kubernetes' go.mod points at its own ./staging tree."""
    return sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))


def render_wrapper(component: GoComponent, go: str, env: dict[str, str]) -> str:
    """The wrapper module's go.mod for ``component`` (see the templates in ``gomod/``)."""
    template = Template((_TEMPLATES / component.wrapper).read_text()) if component.wrapper else None
    if template is None:
        raise ValueError(f"{component.name} needs no wrapper module")
    values = {"version": component.version, "staging_replaces": ""}
    if "${staging_replaces}" in template.template:
        go_mod = _download_go_mod(go, env, component.module, component.version)
        values["staging_replaces"] = "\n".join(
            f"\t{module} => {module} {KUBERNETES_STAGING_VERSION}"
            for module in staging_modules(go_mod)
        )
    return template.substitute(values)


def module_source(module: str, version: str) -> Path:
    """The source tree of ``module@version`` in Go's module cache (downloaded if missing)."""
    env = go_environment()
    return Path(_module_info(find_go(env), env, module, version)["Dir"])


def _download_go_mod(go: str, env: dict[str, str], module: str, version: str) -> str:
    return Path(_module_info(go, env, module, version)["GoMod"]).read_text()


def _module_info(go: str, env: dict[str, str], module: str, version: str) -> dict[str, str]:
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        info = json.loads(result.stdout)
    except ValueError as exc:
        raise BuildError(f"go mod download {module}@{version}: {result.stderr.strip()}") from exc
    if "Error" in info or "GoMod" not in info:
        raise BuildError(f"go mod download {module}@{version}: {info.get('Error', info)}")
    found: dict[str, str] = info
    return found


def _run(command: list[str], env: dict[str, str], cwd: Path) -> float:
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
        raise BuildError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{tail}")
    return round(time.monotonic() - started, 1)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
