"""Goodput: Kubernetes-native LLM serving that meets latency SLOs on as few GPUs as possible.

The distribution maps three top-level folders into this namespace: ``operator/`` is
``goodput.operator`` (the name ``operator`` belongs to the standard library), ``serving/`` is
``goodput.serving`` and ``profiler/`` is ``goodput.profiler``. ``goodput.api`` holds the typed
contracts that more than one component reads (the LLMDeployment spec, the gateway config).
"""

__version__ = "0.1.0"
