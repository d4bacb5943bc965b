"""The container images Goodput runs, named once for the code that builds them and the code that
deploys them.

The engine image is vLLM's CPU build at the version every engine test runs, so the arguments the
operator writes are the ones that version parses; its tag is that version. The Goodput image
(operator, gateway, CLI) is tagged with the package version, as the Helm chart's appVersion is.
Both names are what the chart and the operator default to, so a locally built image that is
loaded into a node's runtime is used without any override.
"""

from __future__ import annotations

from goodput import __version__

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"

REGISTRY = "ghcr.io/goodput-dev"
GOODPUT_IMAGE = f"{REGISTRY}/goodput:{__version__}"
ENGINE_IMAGE = f"{REGISTRY}/vllm-cpu:{VLLM_VERSION}"
# The sandbox image of the dev cluster's real node (built from Kubernetes' pause.c, never pulled).
PAUSE_IMAGE = f"{REGISTRY}/pause:3.10"
