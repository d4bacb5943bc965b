"""A tiny Llama with random weights and a real BPE tokenizer, generated offline, deterministically.

Tests and benchmarks need a model the real vLLM engine can serve on a CPU, and no model hub is
reachable. The weights are random (a fixed seed), so the text is gibberish, but everything the
serving path depends on is real: the Llama architecture, the KV cache, tokenization, the chat
template and EOS handling. The tokenizer is a byte-level BPE trained with ``tokenizers`` on the
Python language reference that ships with CPython (``pydoc_data.topics``): English prose, present
on every machine, so token counts of English prompts are in the range of real LLM tokenizers.

The result is cached under ``<cache>/models/tiny-llama-<hash>``, the hash covering every generator
parameter and the corpus, so a change to either builds a new directory instead of reusing a stale
one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from goodput.dev.cache import exclusive
from goodput.dev.paths import cache_root

# Bump when the files written change in a way the parameters below do not capture.
GENERATOR_VERSION = 1

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")
UNK, BOS, EOS, PAD = SPECIAL_TOKENS[:4]

# Role markers, then the content, then EOS: the model learns nothing, but vLLM and the gateway
# exercise the same template path as with a real chat model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Every parameter that determines the generated files."""

    num_layers: int = 4
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    vocab_size: int = 8192  # the BPE target; the model uses what the trainer reaches
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    init_std: float = 0.02
    seed: int = 0

    def digest(self) -> str:
        """Content hash of the spec, the corpus and the generator version."""
        payload = json.dumps(
            {"spec": asdict(self), "corpus": corpus_digest(), "generator": GENERATOR_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def training_corpus() -> list[str]:
    """The Python language reference shipped with CPython, in a stable order."""
    from pydoc_data.topics import topics  # stdlib: the text behind ``help('topic')``

    return [topics[key] for key in sorted(topics)]


def corpus_digest() -> str:
    return hashlib.sha256("\x00".join(training_corpus()).encode()).hexdigest()[:16]


def tiny_model_dir(spec: TinyLlamaSpec | None = None) -> Path:
    """Where the model for ``spec`` lives once built (it may not exist yet)."""
    spec = spec or TinyLlamaSpec()
    return cache_root() / "models" / f"tiny-llama-{spec.digest()}"


def ensure_tiny_model(spec: TinyLlamaSpec | None = None) -> Path:
    """Return the model directory for ``spec``, generating it first if it is not cached."""
    spec = spec or TinyLlamaSpec()
    return build_once(tiny_model_dir(spec), "config.json", lambda out: write_tiny_model(spec, out))


def build_once(target: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """``target``, written by ``write`` unless ``target/marker`` exists already.

    Built in a temporary sibling and renamed into place, under a lock, so a reader never sees a
    half-written directory and two concurrent callers build it once.
    """
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target.with_name(target.name + ".lock")):
        if (target / marker).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            staging.chmod(0o755)
            write(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def write_tiny_model(spec: TinyLlamaSpec, out: Path) -> None:
    """Write config, tokenizer and weights for ``spec`` into the existing directory ``out``."""
    # The model's vocabulary is exactly the tokenizer's: an id the tokenizer cannot decode would
    # be sampled now and then from random weights and break detokenization.
    vocab_size = _write_tokenizer(spec, out)
    _write_config(spec, vocab_size, out)
    _write_weights(spec, vocab_size, out)
    manifest = {
        "generator": "goodput.dev.tiny_model",
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "digest": spec.digest(),
        "tokenizer_corpus": "CPython pydoc_data.topics",
        "tokenizer_corpus_digest": corpus_digest(),
        "vocab_size": vocab_size,
    }
    (out / "goodput-tiny-model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _write_tokenizer(spec: TinyLlamaSpec, out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Byte-level: any UTF-8 input round-trips, so no prompt ever maps to <unk>.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        # The corpus is small: merging pairs seen once is what fills the vocabulary to its target.
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.save(str(out / "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return int(tokenizer.get_vocab_size())


def _write_config(spec: TinyLlamaSpec, vocab_size: int, out: Path) -> None:
    ids = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.hidden_size // spec.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        # float32: AVX2 CPUs lack native bf16 arithmetic, and the weights are stored as float32.
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _write_weights(spec: TinyLlamaSpec, vocab_size: int, out: Path) -> None:
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    hidden, inter = spec.hidden_size, spec.intermediate_size
    head_dim = hidden // spec.num_attention_heads
    kv_dim = spec.num_key_value_heads * head_dim

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, spec.init_std, size=shape).astype(np.float32)

    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab_size, hidden)}
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(hidden, hidden)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_dim, hidden)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_dim, hidden)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, hidden)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        tensors[f"{prefix}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["lm_head.weight"] = normal(vocab_size, hidden)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
