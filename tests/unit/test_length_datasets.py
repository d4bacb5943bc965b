"""Loaders of the shared data and their splits. Skips when ../shared is not beside the repo."""

from __future__ import annotations

import numpy as np
import pytest

from goodput.profiler.datasets import (
    MistralV1TokenCounter,
    leave_one_model_out,
    load_alpaca_eval,
    load_azure_trace,
    load_sharegpt_lengths,
    prompt_folds,
    shared_data_dir,
    split_prompts,
)

needs_shared = pytest.mark.skipif(
    not (shared_data_dir() / "alpaca_eval" / "outputs.jsonl.gz").exists(),
    reason=f"shared data not found at {shared_data_dir()} (set GOODPUT_SHARED_DIR)",
)


def test_tokenizer_is_mistral_v1_offline() -> None:
    counter = MistralV1TokenCounter()
    assert counter.count("") == 0
    # SentencePiece: a common word is one piece, a long rare word several.
    assert counter.count("Hello world") == 2
    assert counter.count("antidisestablishmentarianism") > 3


def test_splits_are_by_prompt_and_stable() -> None:
    ids = np.repeat(np.arange(400), 3)  # three models answered each prompt
    held = split_prompts(ids, 0.25)
    assert 0.18 < held.mean() < 0.32
    for pid in range(400):  # every response to a prompt goes the same way
        assert len(set(held[ids == pid])) == 1
    assert np.array_equal(held, split_prompts(ids[::-1], 0.25)[::-1])
    folds = prompt_folds(ids, 5)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    models = ["b", "a", "b", "c"]
    assert [name for name, _ in leave_one_model_out(models)] == ["a", "b", "c"]


@needs_shared
def test_alpaca_eval_counts_tokens_for_every_response() -> None:
    data = load_alpaca_eval()
    assert len(data) == 10847 and len(data.model_names) == 16
    assert len(set(data.prompt_ids.tolist())) == 678
    assert data.tokenizer == "mistral-v1-spm32k"
    assert data.output_tokens.min() >= 0 and 300 < np.median(data.output_tokens) < 500
    assert np.all(data.prompt_tokens > 0)


@needs_shared
def test_traces_load() -> None:
    conv = load_azure_trace("conv")
    assert conv.arrival_s.shape[0] == 19366 and conv.arrival_s[0] == 0.0
    assert np.all(np.diff(conv.arrival_s) >= 0) and 3000 < conv.arrival_s[-1] < 3700
    code = load_azure_trace("code")
    assert code.generated_tokens.shape[0] == 8819
    share = load_sharegpt_lengths()
    assert share.output_tokens.shape[0] == 30731
