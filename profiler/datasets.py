"""Loaders for the profiler's real data: AlpacaEval responses and production length traces.

Output length is what the length predictor learns, so it is counted in tokens by a real tokenizer:
the SentencePiece vocabulary of Mistral-7B-Instruct-v0.1/v0.2 and Mixtral-8x7B (32,000 tokens,
``tokenizer.model.v1``) that the ``mistral-common`` package ships inside its wheel, so counting
works offline. The 16 AlpacaEval models use other tokenizers (Llama-2 and Mistral: 32k
SentencePiece; Llama-3, Qwen, Gemma, GPT-4: 100k-256k BPE). Counts under a larger vocabulary are
a near-constant fraction of these (see ``docs/profiler-length.md``), which a per-model verbosity
scale absorbs, and rank metrics (Kendall tau) are unaffected by such a scale.

Token counts are cached under ``~/.cache/goodput/token_counts`` keyed by the data file's digest
and the tokenizer's name, because tokenising 10k responses takes tens of seconds on two cores.

Splits are deterministic and keyed by content, never by row order: a prompt goes to the held-out
side when a hash of its id falls below the fraction, so adding data never reshuffles old prompts.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "AlpacaEvalSet",
    "LengthTrace",
    "MistralV1TokenCounter",
    "PreferenceSet",
    "RequestTrace",
    "TokenCounter",
    "cache_dir",
    "hash_fraction",
    "leave_one_model_out",
    "load_alpaca_eval",
    "load_alpaca_preferences",
    "load_azure_trace",
    "load_sharegpt_lengths",
    "prompt_folds",
    "shared_data_dir",
    "split_prompts",
]

TOKENIZER_NAME = "mistral-v1-spm32k"


def shared_data_dir() -> Path:
    """``$GOODPUT_SHARED_DIR/data``, by default ``<repo root>/../shared/data``."""
    env = os.environ.get("GOODPUT_SHARED_DIR")
    if env:
        return Path(env) / "data"
    # profiler/datasets.py -> repo root is two levels up once symlinks are resolved.
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def cache_dir() -> Path:
    """Where derived data (token counts) is cached: outside the checkout, survives fresh clones."""
    root = os.environ.get("GOODPUT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "goodput"
    return base


class TokenCounter(Protocol):
    """Counts tokens of a text the way a serving engine would (no BOS/EOS)."""

    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class MistralV1TokenCounter:
    """Mistral-7B v0.1/v0.2 and Mixtral-8x7B's 32k SentencePiece tokenizer, from mistral-common.

    Chosen because it is a real serving tokenizer of two of the AlpacaEval models and its
    vocabulary ships inside a registry package (no hub download at run time).
    """

    name = TOKENIZER_NAME

    def __init__(self) -> None:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        self._tokenizer = MistralTokenizer.v1().instruct_tokenizer.tokenizer

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, bos=False, eos=False))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def hash_fraction(key: str, salt: str = "") -> float:
    """A stable uniform number in [0, 1) for ``key``: the basis of every split here."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class AlpacaEvalSet:
    """One row per (prompt, model) response, as parallel arrays; prompts are shared across models.

    ``output_tokens`` and ``prompt_tokens`` are counted by ``tokenizer``.
    """

    prompt_ids: npt.NDArray[np.int64]
    models: tuple[str, ...]
    prompts: tuple[str, ...]
    datasets: tuple[str, ...]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    tokenizer: str

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @cached_property
    def model_names(self) -> list[str]:
        return sorted(set(self.models))

    @cached_property
    def model_array(self) -> npt.NDArray[np.str_]:
        return np.asarray(self.models)

    def subset(self, mask: npt.NDArray[np.bool_]) -> AlpacaEvalSet:
        """The rows where ``mask`` holds."""
        idx = np.flatnonzero(mask)
        return AlpacaEvalSet(
            prompt_ids=self.prompt_ids[idx],
            models=tuple(self.models[i] for i in idx),
            prompts=tuple(self.prompts[i] for i in idx),
            datasets=tuple(self.datasets[i] for i in idx),
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            tokenizer=self.tokenizer,
        )


def _read_jsonl(path: Path) -> Iterator[dict[str, object]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_alpaca_eval(
    data_dir: Path | None = None,
    counter: TokenCounter | None = None,
    *,
    use_cache: bool = True,
) -> AlpacaEvalSet:
    """AlpacaEval's 678 prompts x 16 models with token counts (cached by file digest)."""
    root = (data_dir or shared_data_dir()) / "alpaca_eval"
    prompts_path, outputs_path = root / "prompts.jsonl", root / "outputs.jsonl.gz"
    if not outputs_path.exists():
        raise FileNotFoundError(f"AlpacaEval data not found at {root} (set GOODPUT_SHARED_DIR)")
    prompts: dict[int, tuple[str, str]] = {}
    for row in _read_jsonl(prompts_path):
        prompts[int(str(row["prompt_id"]))] = (str(row["instruction"]), str(row["dataset"]))
    rows = [
        (int(str(r["prompt_id"])), str(r["model"]), str(r["output"]))
        for r in _read_jsonl(outputs_path)
    ]
    rows = [r for r in rows if r[0] in prompts]
    rows.sort(key=lambda r: (r[1], r[0]))

    tokenizer_name = counter.name if counter is not None else TOKENIZER_NAME
    digests = f"{_file_digest(prompts_path)}-{_file_digest(outputs_path)}"
    cache_path = cache_dir() / "token_counts" / f"alpaca_eval-{digests}-{tokenizer_name}.json"
    cached: dict[str, dict[str, int]] | None = None
    if use_cache and cache_path.exists():
        cached = json.loads(cache_path.read_text())
    if cached is None:
        tok = counter or MistralV1TokenCounter()
        cached = {
            "prompt": {str(pid): tok.count(text) for pid, (text, _) in prompts.items()},
            "output": {f"{pid}\t{model}": tok.count(out) for pid, model, out in rows},
        }
        if use_cache:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cached))
            tmp.replace(cache_path)
    return AlpacaEvalSet(
        prompt_ids=np.array([r[0] for r in rows], dtype=np.int64),
        models=tuple(r[1] for r in rows),
        prompts=tuple(prompts[r[0]][0] for r in rows),
        datasets=tuple(prompts[r[0]][1] for r in rows),
        prompt_tokens=np.array([cached["prompt"][str(r[0])] for r in rows], dtype=np.int64),
        output_tokens=np.array([cached["output"][f"{r[0]}\t{r[1]}"] for r in rows], dtype=np.int64),
        tokenizer=tokenizer_name,
    )


@dataclass(frozen=True)
class PreferenceSet:
    """AlpacaEval's judge verdicts, one row per (prompt, model): ``verdict`` in [0, 1] is the
    judged chance that the model's answer beats the reference's on that prompt."""

    prompt_ids: npt.NDArray[np.int64]
    prompts: tuple[str, ...]
    models: tuple[str, ...]
    verdicts: npt.NDArray[np.float64]
    judges: dict[str, str]
    """The judge whose verdicts were kept, per model."""
    reference: str


# Where a model was judged twice, the verdicts kept: the weighted judge (a probability) before
# the chain-of-thought one before the plain one.
_JUDGE_ORDER = (
    "weighted_alpaca_eval_gpt4_turbo",
    "alpaca_eval_cot_gpt4_turbo_fn",
    "alpaca_eval_gpt4_turbo_fn",
)


def load_alpaca_preferences(data_dir: Path | None = None) -> PreferenceSet:
    """``preferences.jsonl.gz`` joined to the prompts, one judge per model."""
    root = (data_dir or shared_data_dir()) / "alpaca_eval"
    prefs_path = root / "preferences.jsonl.gz"
    if not prefs_path.exists():
        raise FileNotFoundError(f"AlpacaEval preferences not found at {root}")
    prompts = {
        int(str(r["prompt_id"])): str(r["instruction"]) for r in _read_jsonl(root / "prompts.jsonl")
    }
    rows = [r for r in _read_jsonl(prefs_path) if int(str(r["prompt_id"])) in prompts]
    judged: dict[str, set[str]] = {}
    for r in rows:
        judged.setdefault(str(r["model"]), set()).add(str(r["judge"]))

    def rank(judge: str) -> tuple[int, str]:
        return (_JUDGE_ORDER.index(judge) if judge in _JUDGE_ORDER else len(_JUDGE_ORDER), judge)

    judges = {model: min(found, key=rank) for model, found in judged.items()}
    kept = sorted(
        (int(str(r["prompt_id"])), str(r["model"]), float(str(r["preference"])) - 1.0)
        for r in rows
        if r["preference"] is not None and judges[str(r["model"])] == r["judge"]
    )
    references = {str(r["reference"]) for r in rows}
    if len(references) != 1:
        raise ValueError(f"expected one reference model, found {sorted(references)}")
    return PreferenceSet(
        prompt_ids=np.array([k[0] for k in kept], dtype=np.int64),
        prompts=tuple(prompts[k[0]] for k in kept),
        models=tuple(k[1] for k in kept),
        verdicts=np.clip(np.array([k[2] for k in kept], dtype=np.float64), 0.0, 1.0),
        judges=judges,
        reference=references.pop(),
    )


def split_prompts(
    prompt_ids: npt.ArrayLike, test_fraction: float = 0.25, salt: str = "goodput-v1"
) -> npt.NDArray[np.bool_]:
    """True for rows whose prompt is held out: every model's response to it goes the same way."""
    ids = np.asarray(prompt_ids)
    return np.array([hash_fraction(str(int(p)), salt) < test_fraction for p in ids], dtype=bool)


def prompt_folds(
    prompt_ids: npt.ArrayLike, n_folds: int, salt: str = "goodput-v1"
) -> npt.NDArray[np.int64]:
    """Fold number in [0, n_folds) of each row, by hashed prompt id (for K-fold by prompt)."""
    ids = np.asarray(prompt_ids)
    return np.array([int(hash_fraction(str(int(p)), salt) * n_folds) for p in ids], dtype=np.int64)


def leave_one_model_out(models: Sequence[str]) -> Iterator[tuple[str, npt.NDArray[np.bool_]]]:
    """For each model, a mask of its rows (the held-out side); sorted for determinism."""
    arr = np.asarray(models)
    for name in sorted(set(models)):
        yield name, arr == name


@dataclass(frozen=True)
class RequestTrace:
    """A production request trace: arrival times (seconds from the first) and token lengths."""

    name: str
    arrival_s: npt.NDArray[np.float64]
    context_tokens: npt.NDArray[np.int64]
    generated_tokens: npt.NDArray[np.int64]


def load_azure_trace(kind: Literal["conv", "code"], data_dir: Path | None = None) -> RequestTrace:
    """Azure LLM inference trace 2023 (Splitwise): one hour of conversation or coding requests."""
    path = (data_dir or shared_data_dir()) / "traces" / f"azure_llm_2023_{kind}.csv"
    stamps: list[float] = []
    ctx: list[int] = []
    gen: list[int] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            # Seven fractional digits: more than fromisoformat accepts before 3.11's relaxed parser.
            ts = row["TIMESTAMP"]
            head, _, frac = ts.partition(".")
            stamps.append(datetime.fromisoformat(head).timestamp() + float("0." + (frac or "0")))
            ctx.append(int(row["ContextTokens"]))
            gen.append(int(row["GeneratedTokens"]))
    t = np.array(stamps, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    return RequestTrace(
        name=f"azure-{kind}",
        arrival_s=t[order] - t[order][0],
        context_tokens=np.array(ctx, dtype=np.int64)[order],
        generated_tokens=np.array(gen, dtype=np.int64)[order],
    )


@dataclass(frozen=True)
class LengthTrace:
    """Prompt and response lengths without text or timing (ShareGPT, Llama-2 tokenizer)."""

    name: str
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]


def load_sharegpt_lengths(data_dir: Path | None = None) -> LengthTrace:
    """ShareGPT conversation lengths as processed by project-etalon (Llama-2 tokenizer)."""
    path = (data_dir or shared_data_dir()) / "traces" / "sharegpt_lengths_llama2_tokenizer.csv"
    prefill: list[int] = []
    decode: list[int] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            prefill.append(int(float(row["num_prefill_tokens"])))
            decode.append(int(float(row["num_decode_tokens"])))
    return LengthTrace(
        name="sharegpt",
        prompt_tokens=np.array(prefill, dtype=np.int64),
        output_tokens=np.array(decode, dtype=np.int64),
    )
