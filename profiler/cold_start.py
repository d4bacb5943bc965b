"""How long a new replica takes from "scale up" to serving: the lead time the autoscaler must
look ahead by.

An estimate, not a measurement: no GPU replica has been timed from pod creation to ready on this
project yet (docs/autoscaling.md, "Not done yet"). The phases and their defaults:

* ``schedule_s`` (15 s): binding the pod, starting two containers whose images are already on
  the node (the operator pulls ``IfNotPresent``); a node without the image adds its pull.
* ``engine_init_s`` (30 s): Python and vLLM imports, the CUDA context on every GPU, NCCL for
  tensor and pipeline groups, the tokenizer.
* weights: the checkpoint is read once per replica; every GPU of the replica loads its own shard
  in parallel, and the node's storage (``load_gb_per_s``, 4 GB/s: a local NVMe or the page cache
  of a node-local PVC; network storage is slower) is shared by them, so the time is the whole
  checkpoint over the node's read rate, per pipeline stage node.
* ``compile_s`` (40 s): vLLM's torch.compile pass and CUDA-graph capture for the batch sizes it
  replays (shorter with a warm compile cache).

Pass measured values (``ColdStart(engine_init_s=..., ...)``) where they are known.
"""

from __future__ import annotations

from dataclasses import dataclass

from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.memory import Quantization, memory_plan

GB = 1e9


@dataclass(frozen=True)
class ColdStart:
    """Phases of a replica's start; ``seconds(weights_bytes, nodes)`` adds them up."""

    schedule_s: float = 15.0
    engine_init_s: float = 30.0
    load_gb_per_s: float = 4.0  # per node, shared by the replica's GPUs on it
    compile_s: float = 40.0

    def seconds(self, weights_bytes: float, nodes: int = 1) -> float:
        """Seconds from pod creation to a ready engine for a checkpoint of ``weights_bytes``
        spread over ``nodes`` nodes (one per pipeline stage, loading in parallel)."""
        load = weights_bytes / max(nodes, 1) / (self.load_gb_per_s * GB)
        return self.schedule_s + self.engine_init_s + load + self.compile_s

    def for_model(
        self,
        arch: ModelArchitecture,
        *,
        quantization: Quantization | str = Quantization.NONE,
        tp: int = 1,
        pp: int = 1,
    ) -> float:
        """Seconds to start one replica of ``arch`` (weights from the profiler's memory plan)."""
        plan = memory_plan(arch, quantization=quantization, tp=tp, pp=pp)
        return self.seconds(plan.weights_bytes_total, nodes=pp)
