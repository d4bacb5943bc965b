"""The replayed workload: real prompts, one real model's output lengths, real arrival burstiness.

- Prompts: AlpacaEval instructions (``alpaca_eval/prompts.jsonl``).
- Output lengths: the chosen model's actual answers to those instructions
  (``alpaca_eval/outputs.jsonl.gz``), counted in tokens of the tiny model's tokenizer (what the
  engine will generate) and multiplied by ``output_scale`` so a sweep fits the time budget on a
  2-core CPU; the shape of the distribution (its skew and tail) is kept.
- Arrivals: the inter-arrival gaps of the Azure LLM 2023 conversation trace, a contiguous window,
  rescaled so their mean is ``1 / rate``: the burstiness is real, the rate is ours.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def shared_data_dir() -> Path:
    """``$GOODPUT_SHARED_DIR/data``, by default ``<repo root>/../shared/data``."""
    root = os.environ.get("GOODPUT_SHARED_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared"
    return base / "data"


@dataclass(frozen=True)
class Request:
    """One request of the replay."""

    index: int
    prompt_id: int
    prompt: str
    prompt_tokens: int  # the instruction alone, tiny tokenizer, without the chat template
    output_tokens: int  # what the engine must generate (the scaled real length)
    real_output_tokens: int  # the chosen model's answer length before scaling
    # A whole conversation instead of ``prompt`` alone: (role, content) pairs, sent as they are
    # (bench/routing's multi-turn sessions); and the session it belongs to (x-session-id).
    messages: tuple[tuple[str, str], ...] = ()
    session: str | None = None


@dataclass(frozen=True)
class Corpus:
    """Every usable (prompt, true length) pair for the chosen model, in a seeded random order."""

    model: str
    requests: tuple[Request, ...]

    @classmethod
    def load(
        cls,
        data_dir: Path,
        tokenizer_file: Path,
        *,
        model: str,
        output_scale: float,
        max_model_len: int,
        seed: int,
    ) -> Corpus:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        prompts = load_prompts(data_dir)
        answers = load_answers(data_dir, model)
        ids = sorted(set(prompts) & set(answers))
        random.Random(seed).shuffle(ids)
        requests: list[Request] = []
        # Room for the chat template (a few tokens) and for the engine's own accounting.
        template_margin = 16
        for prompt_id in ids:
            prompt = prompts[prompt_id]
            prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids)
            real = len(tokenizer.encode(answers[prompt_id], add_special_tokens=False).ids)
            room = max_model_len - prompt_tokens - template_margin
            output = min(max(1, round(real * output_scale)), room)
            if output < 1:
                continue
            requests.append(Request(len(requests), prompt_id, prompt, prompt_tokens, output, real))
        return cls(model, tuple(requests))

    def take(self, count: int, offset: int = 0) -> list[Request]:
        """``count`` requests starting at ``offset``, wrapping around the corpus."""
        n = len(self.requests)
        return [self.requests[(offset + i) % n] for i in range(count)]


def load_prompts(data_dir: Path) -> dict[int, str]:
    """AlpacaEval's instructions by prompt id."""
    prompts: dict[int, str] = {}
    with (data_dir / "alpaca_eval" / "prompts.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            prompts[int(row["prompt_id"])] = row["instruction"]
    return prompts


def load_answers(data_dir: Path, model: str) -> dict[int, str]:
    """``model``'s AlpacaEval answers by prompt id."""
    answers: dict[int, str] = {}
    with gzip.open(data_dir / "alpaca_eval" / "outputs.jsonl.gz", "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["model"] == model:
                answers[int(row["prompt_id"])] = row["output"]
    if not answers:
        raise ValueError(f"no alpaca_eval outputs for model {model!r}")
    return answers


def trace_gaps(trace_csv: Path) -> np.ndarray:
    """Inter-arrival gaps (seconds) of a trace with a ``TIMESTAMP`` column, in trace order."""
    with trace_csv.open() as handle:
        stamps = sorted(
            datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            for row in csv.DictReader(handle)
        )
    gaps = np.diff(np.asarray(stamps))
    return gaps[gaps >= 0]


def arrival_times(gaps: np.ndarray, count: int, rate: float, seed: int) -> np.ndarray:
    """``count`` send times (seconds from 0) with the trace's burstiness at mean ``rate``/s.

    A contiguous window of gaps keeps bursts together; rescaling keeps their relative sizes.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    start = random.Random(seed).randrange(0, len(gaps) - count)
    window = gaps[start : start + count - 1]
    mean = float(window.mean()) if len(window) else 1.0
    scaled = window * ((1.0 / rate) / mean) if mean > 0 else np.full(len(window), 1.0 / rate)
    return np.concatenate([[0.0], np.cumsum(scaled)])
