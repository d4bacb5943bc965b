"""The routing benchmark's workloads, each a list of ``workload.Request`` with send times.

- ``mooncake``: the Mooncake synthetic trace (FAST'25). A row lists one hash id per 512-token
  block; equal ids are a shared prefix. Each id becomes one pseudo-random text block of
  ``block_tokens`` tokens (the same text every time it appears), so equal ids give equal token
  prefixes, scaled down to fit the tiny model. Requests are sampled by prefix group (all rows that
  share their first block, as a tenant's or a conversation's do), in trace order, and the trace's
  own timestamps, rescaled to the offered rate, are the send times.
- ``conversations``: multi-turn chats built from AlpacaEval: one system prompt, then user turns
  (AlpacaEval instructions) where each turn resends the whole history plus the previous answer
  (a real model's answer to that instruction, from ``alpaca_eval/outputs.jsonl.gz``, cut to
  ``answer_words`` words, so the schedule does not depend on what the random-weight model says).
  Sessions are interleaved; send times follow the Azure conversation trace's gaps.
- ``unique``: single AlpacaEval prompts, each opened by a unique ticket number: no two requests
  share more than the chat template's first tokens (the "no shared prefixes" workload).
- ``tenants``: KV-cache pressure, after llm-d's precise-prefix-cache benchmark: many tenants,
  each with a long context of its own that every one of its requests opens with, then a short
  question (an AlpacaEval instruction). run.py sizes the tenants' distinct prefixes to overflow
  one replica's KV cache and fit in the replicas' together (docs/bench-routing.md).

Every contender and rate replays its own ``salt``: the same structure and lengths with different
text, so no contender finds another's prompts in the engines' prefix caches.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from workload import Corpus, Request, arrival_times, load_answers, load_prompts

WORDS_RE = re.compile(r"[a-z]{3,10}")


@dataclass(frozen=True)
class Schedule:
    """One workload at one rate: the requests and their send times (seconds from 0)."""

    requests: list[Request]
    arrivals: list[float]
    warmup: Schedule | None = None
    """Sent first and left out of the measurement (the engines' counters are read after it):
    what a long-running service would already hold."""


def vocabulary(prompts: Sequence[str]) -> list[str]:
    words = sorted({w for p in prompts for w in WORDS_RE.findall(p.lower())})
    return words


class BlockText:
    """The text of one Mooncake block id: ``words`` words drawn from a fixed vocabulary by a
    generator seeded with (salt, id); ``words`` is calibrated so a block is ~``block_tokens``
    tokens of the engine's tokenizer."""

    def __init__(self, vocabulary: list[str], tokenizer: Tokenizer, block_tokens: int) -> None:
        self.vocabulary = vocabulary
        sample = " ".join(random.Random(0).choices(vocabulary, k=2000))
        per_word = len(tokenizer.encode(sample, add_special_tokens=False).ids) / 2000
        self.words = max(1, round(block_tokens / per_word))
        self.tokens_per_word = per_word

    def __call__(self, salt: str, block_id: int) -> str:
        seed = int.from_bytes(
            hashlib.blake2b(f"{salt}:{block_id}".encode(), digest_size=8).digest()
        )
        return " ".join(random.Random(seed).choices(self.vocabulary, k=self.words)) + "\n"


@dataclass(frozen=True)
class MooncakeRow:
    timestamp_s: float
    hash_ids: tuple[int, ...]
    output_length: int


def load_mooncake(path: Path) -> list[MooncakeRow]:
    rows = []
    with path.open() as handle:
        for line in handle:
            row = json.loads(line)
            rows.append(
                MooncakeRow(row["timestamp"] / 1000, tuple(row["hash_ids"]), row["output_length"])
            )
    return rows


def sample_by_prefix_group(rows: list[MooncakeRow], count: int, seed: int) -> list[MooncakeRow]:
    """Whole prefix groups (rows sharing their first block), drawn by picking random rows and
    taking each one's group, until ``count`` rows; in trace order. Size-biased as the trace is:
    a row of a large group is as likely to be drawn as any other row."""
    groups: dict[int, list[MooncakeRow]] = defaultdict(list)
    for row in rows:
        groups[row.hash_ids[0]].append(row)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    taken: dict[int, None] = {}
    total = 0
    for i in order:
        first = rows[i].hash_ids[0]
        if first in taken:
            continue
        taken[first] = None
        total += len(groups[first])
        if total >= count:
            break
    chosen = [r for first in taken for r in groups[first]][: max(count, 0)]
    chosen.sort(key=lambda r: r.timestamp_s)
    return chosen


def ideal_prefix_hit_rate(chains: Sequence[Sequence[int]]) -> float:
    """Fraction of blocks whose prefix an unbounded single cache would already hold."""
    seen: set[tuple[int, ...]] = set()
    hit = total = 0
    for chain in chains:
        matched = 0
        while matched < len(chain) and tuple(chain[: matched + 1]) in seen:
            matched += 1
        hit += matched
        total += len(chain)
        seen.update(tuple(chain[: j + 1]) for j in range(len(chain)))
    return hit / total if total else 0.0


def trace_arrivals(stamps: Sequence[float], rate: float) -> list[float]:
    """The trace's own send times, shifted to 0 and rescaled to a mean of ``rate`` per second."""
    t = np.asarray(stamps, dtype=float) - stamps[0]
    span = float(t[-1])
    if span <= 0:
        return [i / rate for i in range(len(stamps))]
    return (t * ((len(stamps) - 1) / rate) / span).tolist()


@dataclass
class Mooncake:
    rows: list[MooncakeRow]
    blocks: BlockText
    max_blocks: int
    output_scale: float
    max_output: int

    def chains(self) -> list[tuple[int, ...]]:
        return [r.hash_ids[: self.max_blocks] for r in self.rows]

    def schedule(self, rate: float, salt: str) -> Schedule:
        requests = []
        for i, row in enumerate(self.rows):
            ids = row.hash_ids[: self.max_blocks]
            prompt = "".join(self.blocks(salt, h) for h in ids)
            output = max(1, min(self.max_output, round(row.output_length * self.output_scale)))
            tokens = round(len(ids) * self.blocks.words * self.blocks.tokens_per_word)
            requests.append(Request(i, ids[0], prompt, tokens, output, row.output_length))
        return Schedule(requests, trace_arrivals([r.timestamp_s for r in self.rows], rate))


@dataclass
class Conversations:
    """``sessions`` conversations of ``turns`` turns; a turn is sent once the session's
    previous turn has been sent (interleaved round-robin in a random order per round)."""

    system: str
    turns: list[list[tuple[str, str]]]  # per session: (instruction, answer) per turn
    gaps: np.ndarray
    max_output: int
    seed: int

    def schedule(self, rate: float, salt: str) -> Schedule:
        rng = random.Random(self.seed)
        order: list[tuple[int, int]] = []
        for turn in range(max(len(t) for t in self.turns)):
            active = [s for s, t in enumerate(self.turns) if turn < len(t)]
            rng.shuffle(active)
            order += [(s, turn) for s in active]
        system = f"Session key {salt}. {self.system}"
        requests = []
        for i, (s, turn) in enumerate(order):
            messages: list[tuple[str, str]] = [("system", system)]
            for instruction, answer in self.turns[s][:turn]:
                messages += [("user", instruction), ("assistant", answer)]
            instruction, answer = self.turns[s][turn]
            messages.append(("user", instruction))
            output = min(self.max_output, max(1, len(answer.split())))
            prompt = "\n".join(text for _, text in messages)
            requests.append(
                Request(
                    i, s, prompt, len(prompt) // 4, output, output,
                    messages=tuple(messages), session=f"{salt}-s{s}",
                )
            )  # fmt: skip
        arrivals = arrival_times(self.gaps, len(requests), rate, self.seed).tolist()
        return Schedule(requests, arrivals)


SYSTEM_PROMPT = (
    "You are the support assistant of a cloud platform for serving language models. Answer the "
    "user's questions precisely and briefly. When a question concerns quotas, billing, model "
    "deployment, autoscaling or latency objectives, state the relevant limit or setting, say "
    "where in the console or the API it is changed, and give one example. Never invent a number "
    "you were not given; say so when you do not know. Keep a friendly, professional tone, use "
    "short paragraphs and lists where they help, and end with one question that moves the user "
    "forward. The platform's regions are north, south and east; each deployment names its "
    "model, its replicas, its objectives for time to first token and time per output token, "
    "and its routing policy. "
)


def load_conversations(
    data_dir: Path,
    *,
    sessions: int,
    turns: int,
    answer_words: int,
    answers_model: str,
    gaps: np.ndarray,
    max_output: int,
    seed: int,
) -> Conversations:
    prompts = load_prompts(data_dir)
    answers = load_answers(data_dir, answers_model)
    # Short instructions keep a whole conversation within the tiny model's context.
    ids = sorted(p for p in set(prompts) & set(answers) if len(prompts[p]) <= 400)
    random.Random(seed).shuffle(ids)
    if len(ids) < sessions * turns:
        raise ValueError("not enough AlpacaEval prompts for the conversations asked for")
    chats = []
    for s in range(sessions):
        chat = []
        for t in range(turns):
            p = ids[s * turns + t]
            chat.append((prompts[p], " ".join(answers[p].split()[:answer_words])))
        chats.append(chat)
    return Conversations(SYSTEM_PROMPT, chats, gaps, max_output, seed)


@dataclass
class Unique:
    corpus: Corpus
    gaps: np.ndarray
    count: int
    seed: int

    def schedule(self, rate: float, salt: str) -> Schedule:
        requests = []
        for i, r in enumerate(self.corpus.take(self.count)):
            ticket = hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=6).hexdigest()
            requests.append(
                Request(
                    i, r.prompt_id, f"Ticket {ticket}. {r.prompt}", r.prompt_tokens,
                    r.output_tokens, r.real_output_tokens,
                )
            )  # fmt: skip
        return Schedule(requests, arrival_times(self.gaps, self.count, rate, self.seed).tolist())


@dataclass
class Tenants:
    """``tenants`` tenants, each with a context of ``prefix_blocks`` text blocks of its own (a
    system prompt and documents, the same in each of its requests), then a short question (an
    AlpacaEval instruction, a different one per request). Tenants are drawn uniformly, or
    Zipf-distributed with exponent ``zipf`` (tenant 0 the most frequent); arrivals are Poisson.

    The same seed gives every contender and rate the same tenant sequence and arrival shape; the
    salt changes only the text. ``warmup``: each tenant once, so that what is measured is the
    steady state (which prefixes stay resident), not the first touch every router pays alike."""

    tenants: int
    prefix_blocks: int
    blocks: BlockText
    questions: list[Request]
    count: int
    zipf: float
    seed: int

    def prefix(self, salt: str, tenant: int) -> str:
        head = f"Tenant {tenant} knowledge base ({salt}).\n"
        body = "".join(self.blocks(f"{salt}:tenant-{tenant}", j) for j in range(self.prefix_blocks))
        return head + body

    def _request(self, index: int, tenant: int, question: Request, prefix: str) -> Request:
        messages = (("system", prefix), ("user", question.prompt))
        tokens = round(self.prefix_blocks * self.blocks.words * self.blocks.tokens_per_word)
        return Request(
            index, tenant, f"{prefix}\n{question.prompt}", tokens + question.prompt_tokens,
            question.output_tokens, question.real_output_tokens, messages=messages,
        )  # fmt: skip

    def draws(self) -> list[int]:
        """The tenant of each request, in order."""
        weights = 1.0 / np.arange(1, self.tenants + 1) ** self.zipf
        rng = np.random.default_rng(self.seed)
        return [int(t) for t in rng.choice(self.tenants, self.count, p=weights / weights.sum())]

    def schedule(self, rate: float, salt: str) -> Schedule:
        prefixes = [self.prefix(salt, t) for t in range(self.tenants)]
        n = len(self.questions)
        requests = [
            self._request(i, t, self.questions[i % n], prefixes[t])
            for i, t in enumerate(self.draws())
        ]
        gaps = np.random.default_rng(self.seed + 1).exponential(1.0 / rate, self.count - 1)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps)]).tolist()
        order = list(range(self.tenants))
        random.Random(self.seed).shuffle(order)
        warm = [
            self._request(i, t, self.questions[(self.count + i) % n], prefixes[t])
            for i, t in enumerate(order)
        ]
        warmup = Schedule(warm, [i / rate for i in range(len(warm))])
        return Schedule(requests, arrivals, warmup)


def size_tenants(
    *,
    kv_cache_tokens: int,
    engine_block: int,
    replicas: int,
    prefix_tokens: int,
    pressure: float,
    zipf: float,
    blocks: BlockText,
    corpus: Corpus,
    tokenizer: Tokenizer,
    max_model_len: int,
    max_question_tokens: int,
    seed: int,
) -> tuple[Tenants, dict[str, object]]:
    """The tenants workload sized from one replica's KV cache: as many tenants of
    ``prefix_tokens`` each as make their distinct prefixes ``pressure`` x that cache (more than
    one replica holds, less than all do); the facts say what was measured, not what was aimed at.
    """
    prefix_blocks = max(1, round(prefix_tokens / (blocks.words * blocks.tokens_per_word)))
    count = max(2, round(pressure * kv_cache_tokens / prefix_tokens))
    questions = [r for r in corpus.requests if r.prompt_tokens <= max_question_tokens]
    tenants = Tenants(count, prefix_blocks, blocks, questions, 0, zipf, seed)
    measured = [
        len(tokenizer.encode(tenants.prefix("sizing", t), add_special_tokens=False).ids)
        for t in range(count)
    ]
    longest = max(measured) + max_question_tokens + max(r.output_tokens for r in questions)
    if longest + 32 > max_model_len:  # 32: the chat template's tokens, with room to spare
        raise ValueError(f"a tenant's request may reach {longest} tokens of {max_model_len}")
    distinct = sum(measured)
    cacheable = sum(engine_block * (m // engine_block) for m in measured)
    facts: dict[str, object] = {
        "source": "BlockText contexts (AlpacaEval vocabulary) + alpaca_eval/prompts.jsonl "
        "questions",
        "tenants": count,
        "prefix_tokens_mean": round(sum(measured) / count, 1),
        "distinct_prefix_tokens": distinct,
        "kv_cache_tokens_per_replica": kv_cache_tokens,
        "distinct_prefix_vs_one_replica_kv": round(distinct / kv_cache_tokens, 3),
        "distinct_prefix_vs_all_replicas_kv": round(distinct / (replicas * kv_cache_tokens), 3),
        "cacheable_prefix_tokens": cacheable,
        "pressure_asked": pressure,
        "questions": len(questions),
        "max_question_tokens": max_question_tokens,
        "draws": "uniform" if zipf == 0 else f"Zipf, exponent {zipf}",
        "arrivals": "Poisson",
        "warmup": "each tenant once through the contender's own routing, before the counters "
        "are read (steady state)",
    }
    return tenants, facts
