"""The tiny model is deterministic and self-consistent: what vLLM needs to load and serve it."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import load_file
from tokenizers import Tokenizer

from goodput.dev.tiny_model import SPECIAL_TOKENS, TinyLlamaSpec, write_tiny_model

SMALL = TinyLlamaSpec(
    num_layers=1,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=1024,
)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_generation_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_tiny_model(SMALL, first)
    write_tiny_model(SMALL, second)
    assert _files(first) == _files(second)


def test_a_different_seed_gives_different_weights_and_another_cache_key(tmp_path: Path) -> None:
    other = TinyLlamaSpec(**{**SMALL.__dict__, "seed": 1})
    assert other.digest() != SMALL.digest()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_tiny_model(SMALL, a)
    write_tiny_model(other, b)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_config_weights_and_tokenizer_agree(tmp_path: Path) -> None:
    write_tiny_model(SMALL, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert config["vocab_size"] == tokenizer.get_vocab_size() == SMALL.vocab_size
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], 32)
    assert weights["lm_head.weight"].shape == (config["vocab_size"], 32)
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)  # 1 KV head of 16
    assert len(weights) == 2 + 9 * SMALL.num_layers + 1
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == index
    assert config["bos_token_id"] == tokenizer.token_to_id("<s>")
    assert config["eos_token_id"] == tokenizer.token_to_id("</s>")


def test_tokenizer_round_trips_any_text_and_prepends_bos(tmp_path: Path) -> None:
    write_tiny_model(SMALL, tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "Explain photosynthesis — in 3 steps, s'il vous plaît! 光合作用 🌱"
    encoding = tokenizer.encode(text)
    assert encoding.ids[0] == tokenizer.token_to_id("<s>")
    assert tokenizer.token_to_id("<unk>") not in encoding.ids
    assert tokenizer.decode(encoding.ids) == text
