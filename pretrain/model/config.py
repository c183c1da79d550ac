"""The model's one config: the architecture as a typed dataclass, checked on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]


@dataclass
class TransformerConfig:
    vocab_size: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_size: int = 3072
    max_positions: int = 512
    segment_vocab_size: int = 2  # token-type ids; 0 = no segment embeddings
    dropout: float = 0.1  # embeddings, residual branches, classifier
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    position_embedding: Literal["learned", "sinusoidal", "rotary"] = "learned"
    norm_placement: Literal["post", "pre"] = "post"  # post-LN: BERT; pre-LN + final LN: GPT-2
    activation: Activation = "gelu"
    causal: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # the modern switches (defaults reproduce BERT / GPT-2)
    num_kv_heads: int | None = None  # grouped-query attention: fewer K/V heads than query heads (None: all)
    rope_theta: float = 10000.0  # rotary base (global layers)
    local_rope_theta: float | None = None  # rotary base of local-attention layers (None: rope_theta)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    bias: bool = True  # biases in the linears and the norms
    gated_mlp: bool = False  # act(gate(x)) * up(x): SwiGLU with silu, GeGLU with gelu
    embedding_norm: bool | None = None  # a norm on the embedding sum (None: post-LN models only)
    local_attention: int = 0  # sliding window: a token sees keys within local_attention // 2 (0: off)
    global_attn_every_n_layers: int = 1  # with local_attention: layers 0, n, 2n, ... stay global
    positions_skip_padding: bool = False  # RoBERTa: positions count non-padding tokens from pad_token_id + 1
    head_transform: bool = False  # ModernBERT: task heads start with dense -> act -> norm (no tanh pooler)
    classifier_pooling: Literal["cls", "mean"] = "cls"  # encoders with head_transform (ModernBERT)
    # the embedding / LM head / MLM decoder get ceil(vocab_size / m) * m rows (aligned matmuls on accelerators);
    # the extra ids are never input, never predicted (their logits are masked or sliced off), never exported
    pad_vocab_multiple: int = 64

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model config: hidden_size ({self.hidden_size}) is not divisible by num_heads "
                f"({self.num_heads}); pick a head count that divides it, e.g. {_divisor_hint(self.hidden_size)}"
            )
        if not isinstance(self.pad_vocab_multiple, int) or self.pad_vocab_multiple < 1:
            raise ValueError(
                "model config: pad_vocab_multiple must be an integer >= 1 (1 = no padding), "
                f"got {self.pad_vocab_multiple!r}"
            )
        if self.segment_vocab_size < 0:
            raise ValueError("model config: segment_vocab_size must be >= 0 (0 = no segment embeddings)")
        if self.position_embedding == "sinusoidal" and self.hidden_size % 2:
            raise ValueError("model config: sinusoidal positions need an even hidden_size")
        kv_heads = self.num_kv_heads if self.num_kv_heads is not None else self.num_heads
        if kv_heads <= 0 or self.num_heads % kv_heads:
            raise ValueError(
                f"model config: num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads}); "
                "each K/V head serves a whole group of query heads"
            )
        if self.position_embedding == "rotary" and self.head_dim % 2:
            raise ValueError("model config: rotary positions need an even head dimension (hidden_size / num_heads)")
        if self.local_attention < 0 or self.local_attention % 2:
            raise ValueError(
                f"model config: local_attention must be an even window size >= 0 (0 = off), got {self.local_attention}"
            )
        if self.local_attention and self.causal:
            raise ValueError("model config: local_attention is implemented for encoders only (causal=false)")
        if self.global_attn_every_n_layers < 1:
            raise ValueError("model config: global_attn_every_n_layers must be >= 1")
        for name in ("rope_theta", "local_rope_theta"):  # NaN fails `> 0` too
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"model config: {name} must be a positive number, got {value!r}")
        if self.positions_skip_padding and self.pad_token_id is None:
            raise ValueError("model config: positions_skip_padding needs a pad_token_id")
        _check_choice("position_embedding", self.position_embedding, ("learned", "sinusoidal", "rotary"))
        _check_choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("classifier_pooling", self.classifier_pooling, ("cls", "mean"))
        _check_choice("norm_placement", self.norm_placement, ("post", "pre"))
        _check_choice("activation", self.activation, get_args(Activation))
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the vocabulary matrices: vocab_size rounded up to a multiple of pad_vocab_multiple."""
        return -(-self.vocab_size // self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def has_embedding_norm(self) -> bool:
        return self.norm_placement == "post" if self.embedding_norm is None else self.embedding_norm

    def positions_needed(self, length: int) -> int:
        """Rows of the position table a sequence of `length` tokens reaches (RoBERTa's start after pad_token_id)."""
        return length + (self.pad_token_id + 1 if self.positions_skip_padding else 0)

    def is_local_layer(self, index: int) -> bool:
        return bool(self.local_attention) and index % self.global_attn_every_n_layers != 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        values = {"pad_vocab_multiple": 1, **values}  # saved before vocabularies were padded: stored unpadded
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model config: {name}={value!r} is not one of {list(choices)}")


def _divisor_hint(n: int) -> int:
    return next(h for h in (16, 12, 8, 4, 2, 1) if n % h == 0)
