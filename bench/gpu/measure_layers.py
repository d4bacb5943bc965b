"""Time transformer decoder layers of real model shapes on a GPU: the latency model's training data.

Runs with PyTorch only (no vLLM, no network). For each shape it builds a stack of decoder layers
(RMSNorm, GQA attention with RoPE and a KV cache, SwiGLU MLP; random bf16 weights) and times:
  * decode steps (one new token per sequence) for batch x context, captured in a CUDA graph as
    vLLM does, so launch gaps do not count;
  * prefill of ``seqs`` sequences of ``tokens`` each (causal attention), eagerly;
  * the LM head for a number of tokens;
  * with 2+ GPUs: the same layers sharded for tensor parallelism --tp (NCCL all-reduce after the
    attention and the MLP) and an all-reduce sweep.
Times are medians of CUDA-event timings after warm-up. Writes ``layers.csv`` and ``meta.json``
to ``$OUT`` (or ``--out``).

    python measure_layers.py [--device cpu --quick]   # the CPU path only checks the code runs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


SHAPES = [
    Shape("llama-3-8b", 4096, 32, 8, 128, 14336, 128256),  # also Mistral-7B's layer
    Shape("llama-3-70b", 8192, 64, 8, 128, 28672, 128256),
    Shape("qwen2.5-7b", 3584, 28, 4, 128, 18944, 152064),
    Shape("llama-3.2-3b", 3072, 24, 8, 128, 8192, 128256),
]
FIELDS = [
    "shape", "phase", "tp", "layers", "batch", "context", "tokens", "graph", "median_s",
    "p10_s", "p90_s", "repeats",
]  # fmt: skip


class Layer:
    """One decoder layer's weights for one tensor-parallel rank."""

    def __init__(self, s: Shape, tp: int, device: torch.device) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        self.heads, self.kv_heads = s.heads // tp, max(1, s.kv_heads // tp)
        self.hd, self.hidden = s.head_dim, s.hidden
        q, kv, inter = self.heads * s.head_dim, self.kv_heads * s.head_dim, s.intermediate // tp

        def w(*shape: int) -> torch.Tensor:
            scale = 1.0 / math.sqrt(shape[-1])
            return torch.randn(*shape, generator=g, device=device, dtype=DTYPE) * scale

        self.qkv = w(q + 2 * kv, s.hidden)
        self.o = w(s.hidden, q)
        self.gate_up = w(2 * inter, s.hidden)
        self.down = w(s.hidden, inter)
        self.norm1 = torch.ones(s.hidden, device=device, dtype=DTYPE)
        self.norm2 = torch.ones(s.hidden, device=device, dtype=DTYPE)
        self.q, self.kv = q, kv


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + 1e-5)).to(x.dtype) * w


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_tables(positions: torch.Tensor, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=positions.device).float() / hd))
    ang = positions.float()[:, None] * inv[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(DTYPE), ang.sin().to(DTYPE)


def all_reduce(x: torch.Tensor, tp: int) -> torch.Tensor:
    if tp > 1:
        torch.distributed.all_reduce(x)
    return x


def decode_layer(
    ly: Layer, x: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, cs: Any, tp: int
) -> torch.Tensor:
    """x: [B, H]; kc/vc: [B, kv_heads, ctx, hd] whose last slot receives this token."""
    b = x.shape[0]
    h = rms_norm(x, ly.norm1)
    qkv = h @ ly.qkv.t()
    q, k, v = qkv.split([ly.q, ly.kv, ly.kv], dim=-1)
    q = rope(q.view(b, ly.heads, ly.hd), *cs)
    k = rope(k.view(b, ly.kv_heads, ly.hd), *cs)
    kc[:, :, -1].copy_(k)
    vc[:, :, -1].copy_(v.view(b, ly.kv_heads, ly.hd))
    # GQA decode: the query heads sharing a KV head attend as a group of "query positions".
    group = ly.heads // ly.kv_heads
    attn = F.scaled_dot_product_attention(q.view(b, ly.kv_heads, group, ly.hd), kc, vc)
    x = x + all_reduce(attn.reshape(b, ly.q) @ ly.o.t(), tp)
    h = rms_norm(x, ly.norm2)
    gate, up = (h @ ly.gate_up.t()).chunk(2, dim=-1)
    return x + all_reduce((F.silu(gate) * up) @ ly.down.t(), tp)


def prefill_layer(ly: Layer, x: torch.Tensor, cs: Any, tp: int) -> torch.Tensor:
    """x: [S, T, H]: S sequences of T new tokens each, causal attention within each."""
    s, t, _ = x.shape
    h = rms_norm(x, ly.norm1)
    q, k, v = (h @ ly.qkv.t()).split([ly.q, ly.kv, ly.kv], dim=-1)
    q = rope(q.view(s, t, ly.heads, ly.hd), *cs).transpose(1, 2)
    k = rope(k.view(s, t, ly.kv_heads, ly.hd), *cs).transpose(1, 2)
    v = v.view(s, t, ly.kv_heads, ly.hd).transpose(1, 2)
    attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    x = x + all_reduce(attn.transpose(1, 2).reshape(s, t, ly.q) @ ly.o.t(), tp)
    h = rms_norm(x, ly.norm2)
    gate, up = (h @ ly.gate_up.t()).chunk(2, dim=-1)
    return x + all_reduce((F.silu(gate) * up) @ ly.down.t(), tp)


def mixed_layer(
    ly: Layer, x: torch.Tensor, batch: int, kc: torch.Tensor, vc: torch.Tensor, cs_dec: Any,
    cs_pre: Any, tp: int,
) -> torch.Tensor:  # fmt: skip
    """vLLM's chunked-prefill step: x is [batch decode tokens + T prompt tokens of one sequence];
    the matrices see all tokens at once, attention runs per part."""
    t = x.shape[0] - batch
    h = rms_norm(x, ly.norm1)
    q, k, v = (h @ ly.qkv.t()).split([ly.q, ly.kv, ly.kv], dim=-1)
    qd = rope(q[:batch].view(batch, ly.heads, ly.hd), *cs_dec)
    kd = rope(k[:batch].view(batch, ly.kv_heads, ly.hd), *cs_dec)
    kc[:, :, -1].copy_(kd)
    vc[:, :, -1].copy_(v[:batch].view(batch, ly.kv_heads, ly.hd))
    group = ly.heads // ly.kv_heads
    dec = F.scaled_dot_product_attention(qd.view(batch, ly.kv_heads, group, ly.hd), kc, vc)
    qp = rope(q[batch:].view(1, t, ly.heads, ly.hd), *cs_pre).transpose(1, 2)
    kp = rope(k[batch:].view(1, t, ly.kv_heads, ly.hd), *cs_pre).transpose(1, 2)
    vp = v[batch:].view(1, t, ly.kv_heads, ly.hd).transpose(1, 2)
    pre = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
    attn = torch.cat((dec.reshape(batch, ly.q), pre.transpose(1, 2).reshape(t, ly.q)))
    x = x + all_reduce(attn @ ly.o.t(), tp)
    h = rms_norm(x, ly.norm2)
    gate, up = (h @ ly.gate_up.t()).chunk(2, dim=-1)
    return x + all_reduce((F.silu(gate) * up) @ ly.down.t(), tp)


class Timer:
    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.cuda = device.type == "cuda"
        self.warmup, self.repeats = warmup, repeats

    def __call__(self, fn: Callable[[], object]) -> list[float]:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times


def graphed(
    fn: Callable[[], object], device: torch.device, tp: int
) -> tuple[Callable[[], object], bool]:
    """Capture ``fn`` in a CUDA graph (decode steps run that way in vLLM); eager on failure."""
    if device.type != "cuda":
        return fn, False
    ok = True
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # any capture failure falls back to eager timing
        print(f"graph capture failed ({exc!r}); timing eagerly", file=sys.stderr)
        ok = False
        torch.cuda.synchronize()
    if tp > 1:  # every rank must take the same path
        flag = torch.tensor([1 if ok else 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = bool(flag.item())
    return (graph.replay, True) if ok else (fn, False)


def row(shape: str, phase: str, tp: int, layers: int, batch: int, context: int, tokens: int,
        graph: bool, times: list[float]) -> dict[str, Any]:  # fmt: skip
    qs = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {
        "shape": shape, "phase": phase, "tp": tp, "layers": layers, "batch": batch,
        "context": context, "tokens": tokens, "graph": int(graph),
        "median_s": statistics.median(times), "p10_s": qs[0], "p90_s": qs[-1],
        "repeats": len(times),
    }  # fmt: skip


Grid = list[tuple[int, int]]
QUICK_DECODE: Grid = [(1, 128), (4, 256)]
QUICK_PREFILL: Grid = [(1, 64), (2, 32)]
# (batch, context): at most 1M cached tokens, 4.3 GB of KV per layer for these shapes.
DECODE: Grid = [
    (b, c) for b in (1, 8, 32, 64, 128, 256) for c in (128, 512, 2048, 8192) if b * c <= 1 << 20
] + [(16, 1024)]
# (sequences, tokens each)
PREFILL: Grid = [(1, t) for t in (128, 256, 512, 1024, 2048, 4096, 8192)] + [
    (4, 512), (8, 256), (4, 2048), (16, 128), (2, 4096),
]  # fmt: skip
FULL_DECODE: Grid = [(1, 512), (16, 1024), (64, 2048), (128, 1024), (256, 512)]
FULL_PREFILL: Grid = [(1, 512), (1, 2048), (1, 8192), (4, 1024)]


def measure_shape(
    s: Shape, tp: int, n_layers: int, device: torch.device, timer: Timer,
    out: list[dict[str, Any]], decode: Grid, prefill: Grid, head: bool,
) -> None:  # fmt: skip
    layers = [Layer(s, tp, device) for _ in range(n_layers)]
    for batch, context in decode:
        try:
            out.append(decode_point(s, layers, tp, batch, context, device, timer))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"skip {s.name} decode {batch}x{context}: {exc}", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for seqs, tokens in prefill:
        try:
            out.append(prefill_point(s, layers, tp, seqs, tokens, device, timer))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"skip {s.name} prefill {seqs}x{tokens}: {exc}", file=sys.stderr)
    if head:
        w = torch.randn(s.vocab // tp, s.hidden, device=device, dtype=DTYPE) / 64
        for tokens in [1, 8, 32, 64, 128, 256] if len(decode) > 2 else [1, 4]:
            x = torch.randn(tokens, s.hidden, device=device, dtype=DTYPE)
            fn, is_graph = graphed(lambda x=x: x @ w.t(), device, tp)
            out.append(row(s.name, "lm_head", tp, 0, tokens, 0, tokens, is_graph, timer(fn)))
    if device.type == "cuda":
        torch.cuda.empty_cache()


def decode_point(
    s: Shape, layers: list[Layer], tp: int, batch: int, context: int, device: torch.device,
    timer: Timer,
) -> dict[str, Any]:  # fmt: skip
    kvh, hd = layers[0].kv_heads, s.head_dim
    x = torch.randn(batch, s.hidden, device=device, dtype=DTYPE)
    caches = [
        (torch.randn(batch, kvh, context, hd, device=device, dtype=DTYPE),
         torch.randn(batch, kvh, context, hd, device=device, dtype=DTYPE))
        for _ in layers
    ]  # fmt: skip
    pos = torch.full((batch,), context - 1, device=device)
    cs = tuple(t[:, None, :] for t in rope_tables(pos, hd))

    def step(x: torch.Tensor = x, caches: Any = caches, cs: Any = cs) -> torch.Tensor:
        y = x
        for ly, (kc, vc) in zip(layers, caches, strict=True):
            y = decode_layer(ly, y, kc, vc, cs, tp)
        return y

    fn, is_graph = graphed(step, device, tp)
    return row(s.name, "decode", tp, len(layers), batch, context, batch, is_graph, timer(fn))


def prefill_point(
    s: Shape, layers: list[Layer], tp: int, seqs: int, tokens: int, device: torch.device,
    timer: Timer,
) -> dict[str, Any]:  # fmt: skip
    hd = s.head_dim
    x = torch.randn(seqs, tokens, s.hidden, device=device, dtype=DTYPE)
    positions = torch.arange(tokens, device=device)
    cs = tuple(t[None, :, None, :] for t in rope_tables(positions, hd))

    def pre(x: torch.Tensor = x, cs: Any = cs) -> torch.Tensor:
        y = x
        for ly in layers:
            y = prefill_layer(ly, y, cs, tp)
        return y

    times = timer(pre)
    return row(s.name, "prefill", tp, len(layers), seqs, tokens, seqs * tokens, False, times)


# (decode batch, decode context, prompt tokens in the same step)
MIXED = [(b, 1024, t) for b in (16, 64, 128) for t in (256, 512, 2048)] + [(32, 4096, 1024)]


def measure_mixed(
    s: Shape, device: torch.device, timer: Timer, out: list[dict[str, Any]]
) -> None:  # fmt: skip
    layers = [Layer(s, 1, device) for _ in range(4)]
    kvh, hd = layers[0].kv_heads, s.head_dim
    for batch, context, prompt in MIXED:
        x = torch.randn(batch + prompt, s.hidden, device=device, dtype=DTYPE)
        caches = [
            (torch.randn(batch, kvh, context, hd, device=device, dtype=DTYPE),
             torch.randn(batch, kvh, context, hd, device=device, dtype=DTYPE))
            for _ in layers
        ]  # fmt: skip
        pos = torch.full((batch,), context - 1, device=device)
        cs_dec = tuple(t[:, None, :] for t in rope_tables(pos, hd))
        positions = torch.arange(prompt, device=device)
        cs_pre = tuple(t[None, :, None, :] for t in rope_tables(positions, hd))

        def step(x: torch.Tensor = x, caches: Any = caches, b: int = batch,
                 cd: Any = cs_dec, cp: Any = cs_pre) -> torch.Tensor:  # fmt: skip
            y = x
            for ly, (kc, vc) in zip(layers, caches, strict=True):
                y = mixed_layer(ly, y, b, kc, vc, cd, cp, 1)
            return y

        times = timer(step)
        out.append(row(s.name, "mixed", 1, 4, batch, context, batch + prompt, False, times))
        del caches
        if device.type == "cuda":
            torch.cuda.empty_cache()


def ceilings(device: torch.device) -> dict[str, float]:
    """Measured copy bandwidth and bf16 matmul rate (METHOD.md: use these, not the datasheet)."""
    if device.type != "cuda":
        return {}
    timer = Timer(device, 3, 10)
    a = torch.empty(1 << 30, device=device, dtype=torch.uint8).random_()
    b = torch.empty_like(a)
    copy_s = statistics.median(timer(lambda: b.copy_(a)))
    m = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    n = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    mm_s = statistics.median(timer(lambda: m @ n))
    return {
        "copy_bytes_per_s": 2 * (1 << 30) / copy_s,
        "bf16_matmul_flops_per_s": 2 * 8192**3 / mm_s,
    }


def tp_worker(rank: int, world: int, args: argparse.Namespace, path: str) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    torch.distributed.init_process_group(
        "nccl", init_method="tcp://127.0.0.1:29511", rank=rank, world_size=world, device_id=device
    )
    timer = Timer(device, args.warmup, args.repeats)
    out: list[dict[str, Any]] = []
    warm = torch.ones(1, device=device)
    torch.distributed.all_reduce(warm)
    for shape in SHAPES[:2]:
        measure_shape(shape, world, 4, device, timer, out, DECODE, PREFILL, head=False)
    for size in [1 << k for k in range(13, 29, 1)]:  # 8 KiB .. 256 MiB
        buf = torch.randn(size // 2, device=device, dtype=DTYPE)
        times = timer(lambda buf=buf: torch.distributed.all_reduce(buf))
        out.append(row("allreduce", "allreduce", world, 0, 1, 0, size, False, times))
    if rank == 0:
        with open(path, "w") as f:
            json.dump(out, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def save(out: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Written after every block, so a run cut short still returns what it measured."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "layers.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--no-tp", action="store_true")
    parser.add_argument("--tp-only", action="store_true")
    parser.add_argument("--mixed-only", action="store_true")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel degree of the TP sweep")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, 3
    device = torch.device(args.device)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # KINDS.md: never NVLink multicast there
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    started = time.time()
    meta: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "started_unix": started, "dtype": "bfloat16", "warmup": args.warmup,
        "repeats": args.repeats, "shapes": [s.__dict__ for s in SHAPES],
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(
            gpu=props.name, gpu_memory_bytes=props.total_memory,
            sm_count=props.multi_processor_count, cuda=torch.version.cuda,
            gpus=torch.cuda.device_count(), driver=os.popen(
                "nvidia-smi --query-gpu=driver_version --format=csv,noheader").read().strip(),
        )  # fmt: skip
        meta.update(ceilings(device))
        print(json.dumps(meta), flush=True)
    timer = Timer(device, args.warmup, args.repeats)
    rows: list[dict[str, Any]] = []
    shapes = SHAPES if not args.quick else [Shape("tiny", 256, 8, 2, 32, 512, 1000)]
    if args.tp_only or args.mixed_only:
        shapes = []
    if args.mixed_only:
        for shape in SHAPES[:3]:
            measure_mixed(shape, device, timer, rows)
            print(f"mixed {shape.name}: {len(rows)} rows, {time.time() - started:.0f}s", flush=True)
        save(args.out, rows, meta)
    grids = (QUICK_DECODE, QUICK_PREFILL) if args.quick else (DECODE, PREFILL)
    for shape in shapes:
        measure_shape(shape, 1, 4, device, timer, rows, *grids, head=True)
        print(f"{shape.name}: {len(rows)} rows, {time.time() - started:.0f}s", flush=True)
        save(args.out, rows, meta)
    # A whole Llama-3-8B (32 layers) for checking that per-layer fits compose into a full step.
    if not args.quick and not args.tp_only and not args.mixed_only:
        full_timer = Timer(device, 3, 10)
        measure_shape(SHAPES[0], 1, 32, device, full_timer, rows, FULL_DECODE, FULL_PREFILL, False)
        print(f"full llama-3-8b: {len(rows)} rows, {time.time() - started:.0f}s", flush=True)
        save(args.out, rows, meta)
    multi = torch.cuda.device_count() >= args.tp > 1 and not (args.no_tp or args.mixed_only)
    if device.type == "cuda" and multi:
        path = os.path.join(args.out, "tp_rows.json")
        torch.multiprocessing.spawn(tp_worker, args=(args.tp, args, path), nprocs=args.tp)
        with open(path) as f:
            rows.extend(json.load(f))
        os.remove(path)
        print(f"tp={args.tp}: {len(rows)} rows, {time.time() - started:.0f}s", flush=True)
    meta["elapsed_s"] = time.time() - started
    save(args.out, rows, meta)
    for r in rows[:: max(1, len(rows) // 25)]:
        print({k: r[k] for k in ("shape", "phase", "tp", "layers", "batch", "context", "median_s")})


if __name__ == "__main__":
    main()
