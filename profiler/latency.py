"""Step-latency model: how long one engine step (prefill and/or decode) takes on a GPU type.

A linear model over roofline features, fit to measured layer timings. Each feature is already a
time on the target GPU (bytes over its bandwidth, FLOPs over its peak, all-reduce bytes over its
interconnect), so the learned coefficients are efficiencies and overheads that carry over to GPU
types and tensor-parallel degrees that were never measured. Non-negative coefficients keep every
term a cost; weighting samples by 1/time² fits relative error, which is what MAPE measures.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.linear_model import LinearRegression

from goodput.profiler import catalog
from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.hardware import GPUType

DATA_DIR = Path(__file__).parent / "data"
BYTES = 2  # bf16 weights, activations and KV cache in the measurements

# What one step asks of one GPU, before any hardware is applied.
RAW_COLUMNS = (
    "layers",  # decoder layers run in the step
    "tp",
    "tokens",  # new tokens (decode sequences + prefill tokens)
    "layer_weight_bytes",  # per layer, per GPU, weights actually read (routed experts for MoE)
    "layer_linear_flops_per_token",
    "kv_read_bytes",  # per layer, per GPU: cached K/V read by attention
    "attn_flops",  # per layer, per GPU: QK^T and PV
    "kv_stream_bytes",  # per layer: one sequence's K/V for one KV head, read by one thread block
    "elementwise_bytes_per_token",  # per layer, per GPU: norms, RoPE, SiLU, residual traffic
    "allreduce_bytes",  # per layer: bytes each all-reduce carries (tokens x hidden)
    "head_weight_bytes",  # LM head, per GPU (0 when the step computes no logits)
    "head_flops",
    "memory_bandwidth",
    "peak_flops",
    "link_bandwidth",
    "eager",  # 1 when kernels are launched one by one rather than replayed from a CUDA graph
)
FEATURES = (
    "linear_roofline",  # per layer max(weight bytes / bw, FLOPs / peak), summed over layers
    "weight_read",
    "linear_compute",
    "attention_roofline",
    "kv_read",
    "attention_compute",
    "attention_stream",  # few long sequences leave most of the GPU idle during attention
    "elementwise",
    "allreduce_transfer",
    "allreduce_count",
    "head_roofline",
    "layer_count",
    "eager_layer_count",  # kernel launch gaps of steps run without a CUDA graph
    "step",
)


@dataclass(frozen=True)
class Step:
    """One engine step: ``decode_seqs`` sequences at ``decode_context`` tokens each generate one
    token, and ``prefill_seqs`` sequences of ``prefill_tokens`` new tokens each are prefilled."""

    arch: ModelArchitecture
    tp: int = 1
    decode_seqs: int = 0
    decode_context: int = 0
    prefill_seqs: int = 0
    prefill_tokens: int = 0
    layers: int | None = None  # default: all of the model's layers
    lm_head: bool = True
    cuda_graph: bool = True  # vLLM replays decode (and small mixed) steps from CUDA graphs
    # Storage per linear weight and per KV element: 2 for bf16 (as measured); 1 for fp8, about
    # 0.52 for int4 AWQ/GPTQ. Not measured: quantized kernels may not reach the same efficiency.
    weight_bytes: float = BYTES
    kv_bytes: float = BYTES

    @property
    def tokens(self) -> int:
        return self.decode_seqs + self.prefill_seqs * self.prefill_tokens

    def raw(self, gpu: GPUType) -> list[float]:
        """The step's ``RAW_COLUMNS`` on ``gpu``."""
        a, tp = self.arch, self.tp
        layers = a.num_layers if self.layers is None else self.layers
        kv_heads = -(-a.num_kv_heads // tp)
        kv_width = kv_heads * a.head_dim
        q_width = a.q_size / tp
        attn_weights = a.attention_params_per_layer / tp
        mlp_weights = a.mlp_params_per_expert / tp
        if a.is_moe:
            # Experts touched by ``tokens`` tokens routing to k of E experts each (expected).
            touched = a.num_experts * (
                1 - (1 - a.experts_per_token / a.num_experts) ** max(self.tokens, 1)
            )
            mlp_read = touched * mlp_weights
            mlp_flop_weights = a.experts_per_token * mlp_weights
        else:
            mlp_read = mlp_flop_weights = mlp_weights
        active_width = a.intermediate_size * max(1, a.experts_per_token) / tp
        decode_kv = self.decode_seqs * self.decode_context
        prefill_pairs = self.prefill_seqs * self.prefill_tokens * (self.prefill_tokens + 1) / 2
        logits = self.decode_seqs + self.prefill_seqs if self.lm_head else 0
        head_weights = a.vocab_size * a.hidden_size / tp if logits else 0.0
        return [
            float(layers),
            float(tp),
            float(self.tokens),
            (attn_weights + mlp_read) * self.weight_bytes,
            2.0 * (attn_weights + mlp_flop_weights),
            2.0 * kv_width * self.kv_bytes * (decode_kv + self.prefill_seqs * self.prefill_tokens),
            4.0 * q_width * (decode_kv + prefill_pairs),
            2.0 * a.head_dim * self.kv_bytes * self.decode_context if self.decode_seqs else 0.0,
            BYTES * (8 * a.hidden_size + 6 * active_width + 4 * (q_width + 2 * kv_width)),
            float(self.tokens * a.hidden_size * BYTES),
            head_weights * BYTES,
            2.0 * head_weights * logits,
            gpu.memory_bandwidth_bytes_per_s,
            gpu.bf16_dense_flops_per_s,
            gpu.interconnect_bytes_per_s,
            0.0 if self.cuda_graph else 1.0,
        ]


class RooflineFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Turn ``RAW_COLUMNS`` rows into ``FEATURES``: times on the step's GPU, in seconds."""

    def fit(self, X: NDArray[np.float64], y: Any = None) -> RooflineFeatures:
        return self

    def transform(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        c = {name: np.asarray(X, dtype=np.float64)[:, i] for i, name in enumerate(RAW_COLUMNS)}
        bw, peak, link, layers, tp = (
            c["memory_bandwidth"],
            c["peak_flops"],
            c["link_bandwidth"],
            c["layers"],
            c["tp"],
        )
        weight = c["layer_weight_bytes"] / bw
        compute = c["tokens"] * c["layer_linear_flops_per_token"] / peak
        kv = c["kv_read_bytes"] / bw
        attn = c["attn_flops"] / peak
        sharded = (tp > 1).astype(np.float64)
        # A ring all-reduce moves 2(tp-1)/tp of the buffer over each GPU's link; two per layer.
        transfer = 2 * sharded * 2 * (tp - 1) / tp * c["allreduce_bytes"] / link
        head = np.maximum(c["head_weight_bytes"] / bw, c["head_flops"] / peak)
        columns = [
            layers * np.maximum(weight, compute),
            layers * weight,
            layers * compute,
            layers * np.maximum(kv, attn),
            layers * kv,
            layers * attn,
            layers * c["kv_stream_bytes"] / bw,
            layers * c["tokens"] * c["elementwise_bytes_per_token"] / bw,
            layers * transfer,
            layers * 2 * sharded,
            head,
            layers,
            layers * c["eager"],
            np.ones_like(layers),
        ]
        return np.stack(columns, axis=1)


# Without tensor-parallel measurements the all-reduce terms cannot be learned; they fall back to
# the interconnect at its datasheet rate and NCCL's small-message latency (about 10 us inside a
# CUDA graph on NVLink).
_COLLECTIVE_PRIORS = {"allreduce_transfer": 1.0, "allreduce_count": 10e-6}


class StepLatencyRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Non-negative linear regression on roofline features, fit for relative error."""

    def fit(self, X: NDArray[np.float64], y: NDArray[np.float64]) -> StepLatencyRegressor:
        features = RooflineFeatures().transform(X)
        target = np.asarray(y, dtype=np.float64)
        fixed = np.zeros(len(FEATURES))
        if not features[:, FEATURES.index("allreduce_count")].any():
            for name, value in _COLLECTIVE_PRIORS.items():
                fixed[FEATURES.index(name)] = value
        learned = fixed == 0
        # Scale each feature to unit size so the solver is well conditioned; undone in coef_.
        scale = np.maximum(features[:, learned].max(axis=0), 1e-12)
        model = LinearRegression(positive=True, fit_intercept=False)
        model.fit(features[:, learned] / scale, target, sample_weight=1.0 / target**2)
        self.coef_ = fixed.copy()
        self.coef_[learned] = np.asarray(model.coef_) / scale
        return self

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        result: NDArray[np.float64] = RooflineFeatures().transform(X) @ self.coef_
        return result


@dataclass(frozen=True)
class Measurement:
    gpu: str  # catalog name, or "cpu" for the vLLM CPU engine
    hardware: GPUType
    shape: str  # the model whose layers were timed
    phase: str  # decode | prefill | mixed | lm_head
    step: Step
    seconds: float


def load_measurements(paths: Iterable[Path] | None = None) -> list[Measurement]:
    """Committed GPU layer timings (``profiler/data/gpu_layer_latency_<gpu>.csv``)."""
    out: list[Measurement] = []
    for path in sorted(paths or DATA_DIR.glob("gpu_layer_latency_*.csv")):
        meta = json.loads(path.with_suffix(".json").read_text())
        gpu = catalog.gpu(str(meta["catalog_gpu"]))
        with path.open() as f:
            for row in csv.DictReader(f):
                step = _step_from_row(row)
                if step is not None:
                    out.append(Measurement(gpu.name, gpu, row["shape"], row["phase"], step,
                                           float(row["median_s"])))  # fmt: skip
    return out


def load_cpu_engine_measurements(path: Path | None = None) -> list[Measurement]:
    """Decode-step times of the real vLLM CPU engine serving the tiny test model
    (``bench/cpu_engine/measure_engine_steps.py``); the CPU's measured copy bandwidth and
    matmul rate stand in for a GPU's datasheet figures.

    Only decode rows whose sequences all fit the engine's KV cache (in whole blocks, one to
    spare) are steps of that batch (a larger batch is preempted and recomputed); prefill rows
    time whole requests (HTTP and request handling included), so they document TTFT but are not
    single steps and are left out.
    """
    path = path or DATA_DIR / "cpu_engine_latency.csv"
    meta = json.loads(path.with_suffix(".json").read_text())
    arch = ModelArchitecture.from_hf_config(meta["model_config"], name="tiny-llama")
    cpu = GPUType(
        name="cpu",
        memory_bytes=int(meta["kv_cache_bytes"]),
        memory_bandwidth_bytes_per_s=float(meta["copy_bytes_per_s"]),
        bf16_dense_flops_per_s=float(meta["fp32_matmul_flops_per_s"]),
        interconnect="none",
        interconnect_bytes_per_s=1.0,  # one process: no tensor parallelism
        relative_cost_per_hour=0.0,
    )
    short, long = meta["decode_tokens"]
    out: list[Measurement] = []
    with path.open() as f:
        for row in csv.DictReader(f):
            batch, context = int(row["batch"]), int(row["context"])
            if row["phase"] != "decode":
                continue
            # Whole blocks per sequence at its longest; vLLM preempts once none is left spare.
            blocks = -(-(context + (long - short) // 2) // int(meta["block_size"]))
            if batch * blocks >= int(meta["kv_cache_tokens"]) // int(meta["block_size"]):
                continue
            step = Step(arch, decode_seqs=batch, decode_context=context, cuda_graph=False)
            out.append(Measurement("cpu", cpu, arch.name, "decode", step, float(row["seconds"])))
    return out


def _step_from_row(row: dict[str, str]) -> Step | None:
    phase = row["phase"]
    if phase not in ("decode", "prefill", "lm_head", "mixed"):
        return None  # all-reduce sweeps document the link; the model uses datasheet bandwidth
    arch = catalog.get(row["shape"])
    tp, layers, batch = int(row["tp"]), int(row["layers"]), int(row["batch"])
    graph = row["graph"] == "1"
    if phase == "decode":
        return Step(arch, tp, decode_seqs=batch, decode_context=int(row["context"]),
                    layers=layers, lm_head=False, cuda_graph=graph)  # fmt: skip
    if phase == "prefill":
        return Step(arch, tp, prefill_seqs=batch, prefill_tokens=int(row["context"]),
                    layers=layers, lm_head=False, cuda_graph=graph)  # fmt: skip
    if phase == "mixed":  # chunked prefill: one prompt of (tokens - batch) rides with decodes
        return Step(arch, tp, decode_seqs=batch, decode_context=int(row["context"]),
                    prefill_seqs=1, prefill_tokens=int(row["tokens"]) - batch, layers=layers,
                    lm_head=False, cuda_graph=graph)  # fmt: skip
    return Step(arch, tp, decode_seqs=batch, layers=0, lm_head=True, cuda_graph=graph)


def design_matrix(
    measurements: Sequence[Measurement],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    X = np.array([m.step.raw(m.hardware) for m in measurements], dtype=np.float64)
    y = np.array([m.seconds for m in measurements], dtype=np.float64)
    return X, y


def mape(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> float:
    return float(np.mean(np.abs(y_pred - y_true) / y_true))


class LatencyModel:
    """A fitted step-latency model: predict a step's seconds on any catalog GPU type."""

    def __init__(self, regressor: StepLatencyRegressor, engine_overhead_s: float = 0.0) -> None:
        self.regressor = regressor
        # Per-step scheduling/sampling time of the serving engine, outside the GPU kernels.
        self.engine_overhead_s = engine_overhead_s

    @classmethod
    def fit(
        cls, measurements: Sequence[Measurement], engine_overhead_s: float = 0.0
    ) -> LatencyModel:
        X, y = design_matrix(measurements)
        return cls(StepLatencyRegressor().fit(X, y), engine_overhead_s)

    def predict(self, steps: Sequence[Step], gpu: GPUType) -> NDArray[np.float64]:
        X = np.array([s.raw(gpu) for s in steps], dtype=np.float64)
        result: NDArray[np.float64] = self.regressor.predict(X) + self.engine_overhead_s
        return result

    def step_seconds(self, step: Step, gpu: GPUType) -> float:
        return float(self.predict([step], gpu)[0])

    # JSON, not pickle: the model is a dozen coefficients, and never unpickle what users write.
    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "coef": [float(v) for v in self.regressor.coef_],
            "engine_overhead_s": self.engine_overhead_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyModel:
        if list(data["features"]) != list(FEATURES):
            raise ValueError("latency model was saved with different features; refit it")
        regressor = StepLatencyRegressor()
        regressor.coef_ = np.asarray(data["coef"], dtype=np.float64)
        return cls(regressor, float(data.get("engine_overhead_s", 0.0)))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> LatencyModel:
        """The committed model (``profiler/data/latency_model.json``) unless ``path`` is given."""
        return cls.from_json(json.loads((path or DATA_DIR / "latency_model.json").read_text()))

    @classmethod
    def for_gpu(cls, gpu: GPUType) -> LatencyModel:
        """The committed model that times ``gpu``: its own fit where the catalog names one (the
        CPU engine's steps are not GPU layer timings), else the GPU fit. Cached per file."""
        return _committed(gpu.latency_model or "latency_model.json")


@cache
def _committed(filename: str) -> LatencyModel:
    return LatencyModel.load(DATA_DIR / filename)


@dataclass(frozen=True)
class Evaluation:
    name: str
    train: int
    test: int
    mape: float
    max_ape: float


def evaluate(measurements: Sequence[Measurement], seed: int = 0) -> list[Evaluation]:
    """MAPE on held-out points: a random quarter, an unseen GPU type, an unseen TP degree, and
    whole 32-layer models predicted from 4-layer stacks."""
    splits: list[tuple[str, list[bool]]] = []
    rng = np.random.default_rng(seed)
    splits.append(("random 25% held out", list(rng.random(len(measurements)) < 0.25)))
    gpus = sorted({m.gpu for m in measurements})
    for gpu in gpus:
        if len(gpus) > 1:
            splits.append((f"unseen GPU: {gpu}", [m.gpu == gpu for m in measurements]))
    degrees = sorted({m.step.tp for m in measurements if m.step.tp > 1})
    if degrees:
        splits.append(("unseen TP: all tp>1 from tp=1", [m.step.tp > 1 for m in measurements]))
    if len(degrees) > 1:
        top = degrees[-1]
        splits.append(
            (f"unseen TP: tp={top} from smaller", [m.step.tp == top for m in measurements])
        )
    mixed = [m.phase == "mixed" for m in measurements]
    if any(mixed):
        splits.append(("mixed prefill+decode steps from pure ones", mixed))
    whole = [m.step.layers is not None and m.step.layers > 4 for m in measurements]
    if any(whole):
        splits.append(("whole model from 4-layer stacks", whole))
    results = []
    for name, held in splits:
        train = [m for m, h in zip(measurements, held, strict=True) if not h]
        test = [m for m, h in zip(measurements, held, strict=True) if h]
        model = LatencyModel.fit(train)
        X, y = design_matrix(test)
        ape = np.abs(model.regressor.predict(X) - y) / y
        results.append(Evaluation(name, len(train), len(test), float(ape.mean()), float(ape.max())))
    return results


def leave_one_out_mape(measurements: Sequence[Measurement]) -> float:
    """MAPE of each point predicted by a model fit on all the others (for small data sets)."""
    errors = []
    for i, held in enumerate(measurements):
        model = LatencyModel.fit([m for j, m in enumerate(measurements) if j != i])
        X, y = design_matrix([held])
        errors.append(abs(float(model.regressor.predict(X)[0]) - float(y[0])) / float(y[0]))
    return float(np.mean(errors))


def fit_default(measurements: Sequence[Measurement] | None = None) -> LatencyModel:
    return LatencyModel.fit(measurements if measurements is not None else load_measurements())


#: The CPU engine's own step-latency model, which the catalog's CPU product names.
CPU_ENGINE_MODEL = "latency_model_cpu_engine.json"


def fit_cpu_engine() -> LatencyModel:
    """The CPU engine's decode steps fitted on their own (``CPU_ENGINE_MODEL``)."""
    return LatencyModel.fit(load_cpu_engine_measurements())
