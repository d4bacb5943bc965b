"""The shape of a decoder-only transformer, read from a Hugging Face ``config.json``.

Everything the memory and latency models need (parameter counts, KV heads, FLOPs per token) follows
from a handful of config fields, so the profiler can size a model it has never downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Model types whose attention projections carry a bias (Qwen2 always has q/k/v biases).
_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe"})
# Gemma-2 puts a norm before *and* after both attention and MLP: four norms per layer.
_FOUR_NORM_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})


@dataclass(frozen=True)
class ModelArchitecture:
    """A decoder-only transformer's dimensions; ``from_hf_config`` reads them from config.json."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_experts: int = 0  # 0: a dense MLP; otherwise routed experts per MoE layer
    experts_per_token: int = 0
    shared_expert_intermediate_size: int = 0
    qkv_bias: bool = False
    norms_per_layer: int = 2
    sliding_window: int | None = None
    sliding_window_layers: int = 0  # how many layers attend only within ``sliding_window``
    max_position_embeddings: int = 8192
    torch_dtype: str = "bfloat16"

    @classmethod
    def from_hf_config(
        cls, config: Mapping[str, Any], name: str | None = None
    ) -> ModelArchitecture:
        """Read a parsed Hugging Face ``config.json`` (Llama, Mistral, Mixtral, Qwen2, Gemma)."""
        model_type = str(config.get("model_type", "llama"))
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        layers = int(config["num_hidden_layers"])
        experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
        # Qwen2-MoE names the per-expert width separately from the (unused) dense width.
        intermediate = int(config.get("moe_intermediate_size") or config["intermediate_size"])
        if experts == 0:
            intermediate = int(config["intermediate_size"])
        window_raw = config.get("sliding_window")
        window = int(window_raw) if window_raw else None
        if model_type.startswith("qwen2") and not config.get("use_sliding_window", False):
            window = None  # Qwen2 configs carry a window value that is switched off
        window_layers = 0
        if window is not None:
            # Gemma-2 alternates local and global attention; Mistral v0.1 windows every layer.
            window_layers = layers // 2 if model_type in _FOUR_NORM_MODEL_TYPES else layers
        default_tie = model_type.startswith("gemma")
        return cls(
            name=name or str(config.get("_name_or_path") or model_type),
            model_type=model_type,
            num_layers=layers,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", default_tie)),
            num_experts=experts,
            experts_per_token=int(config.get("num_experts_per_tok") or 0) if experts else 0,
            shared_expert_intermediate_size=int(config.get("shared_expert_intermediate_size") or 0),
            qkv_bias=bool(config.get("attention_bias", False))
            or model_type in _QKV_BIAS_MODEL_TYPES,
            norms_per_layer=4 if model_type in _FOUR_NORM_MODEL_TYPES else 2,
            sliding_window=window,
            sliding_window_layers=window_layers,
            max_position_embeddings=int(config.get("max_position_embeddings") or 8192),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        )

    # --- dimensions derived from the config -------------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of K (and of V) for one token and one layer."""
        return self.num_kv_heads * self.head_dim

    # --- parameter counts -------------------------------------------------------------------

    @property
    def attention_params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.q_size, self.kv_size
        bias = q + 2 * kv if self.qkv_bias else 0
        return h * q + 2 * h * kv + q * h + bias

    @property
    def mlp_params_per_expert(self) -> int:
        """A gated MLP (SwiGLU / GeGLU): gate, up and down projections."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def mlp_params_per_layer(self) -> int:
        if not self.is_moe:
            return self.mlp_params_per_expert
        router = self.hidden_size * self.num_experts
        shared = 0
        if self.shared_expert_intermediate_size:
            shared = 3 * self.hidden_size * self.shared_expert_intermediate_size + self.hidden_size
        return self.num_experts * self.mlp_params_per_expert + router + shared

    @property
    def active_mlp_params_per_layer(self) -> int:
        """MLP weights one token multiplies by (only its routed experts for MoE)."""
        if not self.is_moe:
            return self.mlp_params_per_expert
        shared = 3 * self.hidden_size * self.shared_expert_intermediate_size
        return self.experts_per_token * self.mlp_params_per_expert + shared

    @property
    def linear_params_per_layer(self) -> int:
        """The quantizable matrices of one layer (attention and MLP projections)."""
        return self.attention_params_per_layer + self.mlp_params_per_layer

    @property
    def norm_params_per_layer(self) -> int:
        return self.norms_per_layer * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_parameters(self) -> int:
        per_layer = self.linear_params_per_layer + self.norm_params_per_layer
        return (
            self.num_layers * per_layer
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size  # final norm
        )

    @property
    def num_active_parameters(self) -> int:
        """Parameters a single token touches: all of them for dense models, fewer for MoE."""
        per_layer = (
            self.attention_params_per_layer
            + self.active_mlp_params_per_layer
            + self.norm_params_per_layer
        )
        return self.num_layers * per_layer + self.embedding_params + self.lm_head_params

    # --- compute ---------------------------------------------------------------------------

    def matmul_flops_per_token(self) -> float:
        """FLOPs of one token's weight-matrix products (2 per multiply-add), LM head included."""
        per_layer = self.attention_params_per_layer + self.active_mlp_params_per_layer
        return 2.0 * (self.num_layers * per_layer + self.vocab_size * self.hidden_size)

    def attention_flops(self, query_tokens: int, context_tokens: int) -> float:
        """FLOPs of QK^T and PV in all layers for queries attending over context tokens."""
        return 4.0 * self.num_layers * query_tokens * context_tokens * self.q_size
