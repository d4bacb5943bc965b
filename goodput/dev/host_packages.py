"""Debian packages the local infrastructure runs (container runtime, CNI plugins, image tools).

One list, one installer: whatever needs a host program names it here. Installed with apt-get
when missing and running as root (CI and the dev machines are Debian 12); anyone else gets the
exact command to run instead of a half-started cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# program (or file) that proves the package is there -> Debian package
CONTAINER_RUNTIME = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
}


class HostPackageError(RuntimeError):
    """A required Debian package is missing and could not be installed."""


def missing(requirements: dict[str, str]) -> list[str]:
    """Debian packages of ``requirements`` whose program or file is absent, in order."""
    absent: dict[str, None] = {}
    for probe, package in requirements.items():
        present = Path(probe).exists() if probe.startswith("/") else shutil.which(probe)
        if not present:
            absent[package] = None
    return list(absent)


def ensure(requirements: dict[str, str], purpose: str) -> None:
    """Install the missing packages of ``requirements`` (root only) or explain how to."""
    packages = missing(requirements)
    if not packages:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HostPackageError(
            f"{purpose} needs the Debian packages {', '.join(packages)}: run "
            f"`sudo {' '.join(command)}`"
        )
    _apt(["apt-get", "update", "-q"], purpose, packages, tolerate_failure=True)
    _apt(command, purpose, packages)
    still = missing(requirements)
    if still:
        raise HostPackageError(f"{purpose}: installed {packages} but {still} are still missing")


def _apt(command: Iterable[str], purpose: str, packages: list[str], **kw: bool) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(list(command), env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 and not kw.get("tolerate_failure"):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise HostPackageError(f"{purpose}: installing {packages} failed:\n{tail}")
