"""The Transformer core shared by the BERT-style encoder and the GPT-style decoder, and its heads.

Read top to bottom: config -> embeddings -> attention -> MLP -> block -> Transformer (the trunk)
-> heads and task models (BERT pretraining, causal LM, sequence classification, span QA).
The model knows nothing of data or training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100
KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each (B, kv_heads, T, head_dim)
RotaryTables = tuple[torch.Tensor, torch.Tensor]

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


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
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
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
        if self.segment_vocab_size < 0:
            raise ValueError("model config: segment_vocab_size must be >= 0 (0 = no segment embeddings)")
        if self.position_embedding == "sinusoidal" and self.hidden_size % 2:
            raise ValueError("model config: sinusoidal positions need an even hidden_size")
        kv_heads = self.num_kv_heads or self.num_heads
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
        if self.positions_skip_padding and self.pad_token_id is None:
            raise ValueError("model config: positions_skip_padding needs a pad_token_id")
        _check_choice("position_embedding", self.position_embedding, ("learned", "sinusoidal", "rotary"))
        _check_choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("classifier_pooling", self.classifier_pooling, ("cls", "mean"))
        _check_choice("norm_placement", self.norm_placement, ("post", "pre"))
        _check_choice("activation", self.activation, tuple(_ACTIVATIONS))
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def has_embedding_norm(self) -> bool:
        return self.norm_placement == "post" if self.embedding_norm is None else self.embedding_norm

    def is_local_layer(self, index: int) -> bool:
        return bool(self.local_attention) and index % self.global_attn_every_n_layers != 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
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


def make_norm(config: TransformerConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> RotaryTables:
    """(cos, sin), each (..., T, head_dim), in the half-split layout of Llama / ModernBERT (rotate_half)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D) or (B, T, D)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)  # tables may be fp32 under autocast


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The original Transformer's fixed table: sin on even dims, cos on odd, base 10000."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


@dataclass
class ModelOutput:
    """What every model here returns. `loss_terms` maps a loss name to (sum, count) so a training
    loop can normalise over a whole accumulated batch; `loss` is the sum of the per-term means."""

    last_hidden_state: torch.Tensor
    loss: torch.Tensor | None = None
    loss_terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # LM logits (causal) or classification logits
    prediction_logits: torch.Tensor | None = None  # MLM logits: (B, T, V), or (N, V) at the N labelled positions
    seq_relationship_logits: torch.Tensor | None = None  # NSP logits (B, 2)
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------- the core


class Embeddings(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = (
            nn.Embedding(config.max_positions, config.hidden_size) if config.position_embedding == "learned" else None
        )
        if config.position_embedding == "sinusoidal":
            self.register_buffer(
                "position_table", sinusoidal_table(config.max_positions, config.hidden_size), persistent=False
            )
        self.segment = (
            nn.Embedding(config.segment_vocab_size, config.hidden_size) if config.segment_vocab_size else None
        )
        # post-LN models (BERT) normalise the embedding sum; pre-LN models (GPT-2) leave it to the first block,
        # except ModernBERT, which normalises both (its first block then has no attention norm)
        self.norm = make_norm(config) if config.has_embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor:
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(position_ids)
        elif hasattr(self, "position_table"):
            x = x + self.position_table[position_ids].to(x.dtype)
        if self.segment is not None:
            x = x + (self.segment(token_type_ids) if token_type_ids is not None else self.segment.weight[0])
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with one fused Q/K/V projection: queries for every head,
    then keys and values for the (possibly fewer, grouped-query) K/V heads. Rotary positions, when
    given, rotate queries and keys; the KV cache stores the K/V heads only."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = config.num_heads, config.kv_heads, config.head_dim
        qkv_size = (config.num_heads + 2 * config.kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.hidden_size, qkv_size, bias=config.bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_weights: bool = False,
        rope: RotaryTables | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        batch, length, hidden = x.shape
        groups = self.num_heads // self.kv_heads
        qkv = self.qkv(x).view(batch, length, groups + 2, self.kv_heads, self.head_dim)
        if groups == 1:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
        else:
            q = qkv[:, :, :groups].reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            k, v = qkv[:, :, groups:].permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        cache = (k, v)
        dropout_p = self.attention_dropout if self.training else 0.0
        probs = None
        if need_weights:  # explicit path so the probabilities can be returned (for plots); slower
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(_causal_bool(length, k.size(2), x.device).logical_not(), float("-inf"))
            probs = scores.softmax(dim=-1)
            y = F.dropout(probs, dropout_p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=groups > 1
            )
        y = y.transpose(1, 2).reshape(batch, length, hidden)
        return self.proj(y), cache, probs


class MLP(nn.Module):
    """fc -> act -> proj; gated (SwiGLU / GeGLU): fc computes [gate; up] in one matmul and
    proj(act(gate) * up)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gated = config.gated_mlp
        self.fc = nn.Linear(config.hidden_size, config.ffn_size * (2 if self.gated else 1), bias=config.bias)
        self.proj = nn.Linear(config.ffn_size, config.hidden_size, bias=config.bias)
        self.act = _ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.fc(x).chunk(2, dim=-1)
            return self.proj(self.act(gate) * up)
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, index: int = 0):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.local = config.is_local_layer(index)
        self.attn = SelfAttention(config)
        # pre-LN after a normalised embedding (ModernBERT): the first block's input is already normalised
        first_after_norm = self.pre_norm and index == 0 and config.has_embedding_norm
        self.attn_norm = nn.Identity() if first_after_norm else make_norm(config)
        self.mlp = MLP(config)
        self.mlp_norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, is_causal, past=None, need_weights=False, rope=None):
        if self.pre_norm:  # GPT-2: x + f(LN(x))
            a, kv, probs = self.attn(self.attn_norm(x), mask, is_causal, past, need_weights, rope)
            x = x + self.dropout(a)
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        else:  # BERT / original Transformer: LN(x + f(x))
            a, kv, probs = self.attn(x, mask, is_causal, past, need_weights, rope)
            x = self.attn_norm(x + self.dropout(a))
            x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, kv, probs


def _causal_bool(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) True where allowed: query i (at absolute position key_len - query_len + i) sees keys <= it."""
    offset = key_len - query_len
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=offset)


class Transformer(nn.Module):
    """The trunk: embeddings, blocks, the final LayerNorm of pre-LN models, and BERT's tanh pooler
    (encoders only; it reads the first token, [CLS])."""

    def __init__(self, config: TransformerConfig, pooler: bool | None = None):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config) if config.norm_placement == "pre" else None
        pooler = not config.causal and not config.head_transform if pooler is None else pooler
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.apply(self._init_weights)
        if config.norm_placement == "pre":  # GPT-2: scale residual projections by 1/sqrt(2 * layers)
            for block in self.blocks:
                for proj in (block.attn.proj, block.mlp.proj):
                    nn.init.normal_(proj.weight, std=config.init_std / math.sqrt(2 * config.num_layers))

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, self.config.init_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        self._check_inputs(input_ids, token_type_ids, past_key_values)
        batch, length = input_ids.shape
        cfg = self.config
        past_len = past_key_values[0][0].size(2) if past_key_values else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=input_ids.device)
            if cfg.positions_skip_padding:  # RoBERTa: padding gets pad_token_id, real tokens count on from it
                real = input_ids.ne(cfg.pad_token_id)
                position_ids = (real.cumsum(dim=1) + past_len) * real + cfg.pad_token_id
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        mask, is_causal = self._attention_mask(attention_mask, batch, length, past_len, x.dtype, x.device)
        rope = local_rope = local_mask = None
        if cfg.position_embedding == "rotary":
            rope = rotary_tables(position_ids, cfg.head_dim, cfg.rope_theta, x.dtype)
            local_rope = rope
            if cfg.local_rope_theta is not None and cfg.local_rope_theta != cfg.rope_theta:
                local_rope = rotary_tables(position_ids, cfg.head_dim, cfg.local_rope_theta, x.dtype)
        if cfg.local_attention:
            local_mask = self._local_mask(attention_mask, length, x.dtype, x.device)

        new_cache: KVCache = []
        attentions = []
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values else None
            if block.local:
                x, kv, probs = block(x, local_mask, False, past, output_attentions, local_rope)
            else:
                x, kv, probs = block(x, mask, is_causal, past, output_attentions, rope)
            if use_cache:
                new_cache.append(kv)
            if output_attentions:
                attentions.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return ModelOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            past_key_values=new_cache if use_cache else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def _check_inputs(self, input_ids, token_type_ids, past_key_values) -> None:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        past_len = past_key_values[0][0].size(2) if past_key_values else 0
        total = past_len + input_ids.size(1)
        if cfg.positions_skip_padding:  # positions start after pad_token_id
            total += cfg.pad_token_id + 1
        if total > cfg.max_positions:
            raise ValueError(
                f"sequence of {total} tokens is longer than the position table ({cfg.max_positions}); "
                "truncate the input (data.max_length) or use a model with larger max_positions"
            )
        # value checks read the ids on the host: free on a CPU, a sync per forward on an accelerator, where
        # they are skipped (the data side builds the ids from the model's own tokenizer, checked at start-up)
        on_host = input_ids.device.type == "cpu"
        if input_ids.numel() and on_host:
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()
            if low < 0 or high >= cfg.vocab_size:
                raise ValueError(
                    f"token id {high if high >= cfg.vocab_size else low} is outside the vocabulary "
                    f"[0, {cfg.vocab_size}); the tokenizer does not match the model (vocab_size={cfg.vocab_size})"
                )
        if on_host and token_type_ids is not None and token_type_ids.numel() and cfg.segment_vocab_size:
            if int(token_type_ids.max()) >= cfg.segment_vocab_size or int(token_type_ids.min()) < 0:
                raise ValueError(f"token_type_ids must be in [0, {cfg.segment_vocab_size})")

    def _attention_mask(self, attention_mask, batch, length, past_len, dtype, device):
        """Returns (additive float mask or None, is_causal flag) for scaled_dot_product_attention.

        Fast paths pass no mask at all. Otherwise masked entries get the dtype's minimum rather than
        -inf, so a fully padded row softmaxes to uniform weights instead of NaN."""
        causal = self.config.causal
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (not causal or past_len == 0 or length == 1):
            # a single new query under a cache may see every key, so no mask is needed there either
            return None, causal and past_len == 0 and length > 1
        key_len = past_len + length
        allowed = torch.ones(batch, 1, length, key_len, dtype=torch.bool, device=device)
        if padded:
            if attention_mask.shape != (batch, key_len):
                raise ValueError(
                    f"attention_mask must have shape {(batch, key_len)}, got {tuple(attention_mask.shape)}"
                )
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        if causal:
            allowed = allowed & _causal_bool(length, key_len, device)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min), False

    def _local_mask(self, attention_mask, length, dtype, device) -> torch.Tensor | None:
        """Sliding-window mask of local layers: query i sees keys j with |i - j| <= local_attention // 2
        (and not padding). None when the window covers the whole unpadded sequence."""
        half = self.config.local_attention // 2
        padded = attention_mask is not None and not bool(attention_mask.all())
        if length - 1 <= half and not padded:
            return None
        positions = torch.arange(length, device=device)
        allowed = ((positions[:, None] - positions[None, :]).abs() <= half)[None, None]
        if padded:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def init_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- heads and task models


class HeadTransform(nn.Module):
    """dense -> activation -> norm: what ModernBERT's task heads apply before their output layer."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.act = _ACTIVATIONS[config.activation]
        self.norm = make_norm(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


class MLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder (tied to the word embeddings) + bias."""

    def __init__(self, config: TransformerConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.act = _ACTIVATIONS[config.activation]
        self.norm = make_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(h)))) + self.bias


class PretrainedModel(nn.Module):
    """Shared plumbing of the task models: a `transformer` trunk plus heads, built from one config."""

    family_heads: tuple[str, ...] = ()

    def __init__(self, config: TransformerConfig, pooler: bool = False):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config, pooler=pooler)

    def _init_heads(self, *modules: nn.Module) -> None:
        for m in modules:
            m.apply(lambda mod: init_weights(mod, self.config.init_std))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # GPT's fine-tuning heads may add the LM loss as an auxiliary objective (0.5 in the GPT paper)

    def _add_aux_lm_head(self, weight: float) -> None:
        if self.config.causal and weight:
            self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
            self.lm_head.weight = self.transformer.embeddings.word.weight

    def _aux_lm_term(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX) if attention_mask is not None else input_ids
        total, count = lm_loss_term(self.lm_head(hidden), labels)
        return total * weight, count

    @staticmethod
    def _aux_lm_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch.get("attention_mask")
        return mask[..., 1:].sum() if mask is not None else torch.tensor(batch["input_ids"][..., 1:].numel())

    @staticmethod
    def loss_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError


def _terms_to_loss(terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    if not terms:
        return None
    return sum(total / count.clamp(min=1) for total, count in terms.values())


def _ce_term(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


class BertPretraining(PretrainedModel):
    """BERT pretraining: masked-LM head (+ next-sentence head unless `nsp=False`).

    With MLM `labels` given, the MLM head runs only on the labelled positions: at ~15% of tokens
    that is most of the step's compute and memory saved."""

    def __init__(self, config: TransformerConfig, nsp: bool = True):
        if config.causal:
            raise ValueError("BertPretraining needs a bidirectional model (causal=false)")
        super().__init__(config, pooler=nsp)  # as in HF: the pooler exists for the NSP head only
        self.mlm_head = MLMHead(config, self.transformer.embeddings.word)
        self.nsp_head = nn.Linear(config.hidden_size, 2) if nsp else None
        self._init_heads(*(m for m in (self.mlm_head.dense, self.mlm_head.norm, self.nsp_head) if m is not None))
        if not config.tie_embeddings:
            self._init_heads(self.mlm_head.decoder)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        h = out.last_hidden_state
        if labels is not None:
            selected = labels != IGNORE_INDEX
            out.prediction_logits = self.mlm_head(h[selected])
            out.loss_terms["mlm"] = _ce_term(out.prediction_logits, labels[selected])
        else:
            out.prediction_logits = self.mlm_head(h)
        if self.nsp_head is not None:
            out.seq_relationship_logits = self.nsp_head(out.pooler_output)
            if next_sentence_label is not None:
                out.loss_terms["nsp"] = _ce_term(out.seq_relationship_logits, next_sentence_label)
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    @staticmethod
    def loss_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counts = {}
        if "labels" in batch:
            counts["mlm"] = (batch["labels"] != IGNORE_INDEX).sum()
        if "next_sentence_label" in batch:
            counts["nsp"] = (batch["next_sentence_label"] != IGNORE_INDEX).sum()
        return counts


class CausalLM(PretrainedModel):
    """GPT: causal decoder with a (tied) language-model head; next-token loss."""

    def __init__(self, config: TransformerConfig):
        if not config.causal:
            raise ValueError("CausalLM needs a causal model (causal=true)")
        super().__init__(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.embeddings.word.weight
        else:
            self._init_heads(self.lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, past_key_values, use_cache, output_attentions)
        if labels is not None and torch.is_grad_enabled():
            # training: the LM head and its loss run chunk by chunk; the (tokens x vocab) logits and their
            # gradient never exist whole (for GPT-2's 50k words they are most of a small model's memory)
            out.loss_terms["lm"] = chunked_lm_loss_term(out.last_hidden_state, self.lm_head.weight, labels)
            out.loss = _terms_to_loss(out.loss_terms)
            return out  # out.logits stays None; call under torch.no_grad() (or without labels) to get them
        out.logits = self.lm_head(out.last_hidden_state)
        if labels is not None:
            out.loss_terms["lm"] = lm_loss_term(out.logits, labels)
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    @staticmethod
    def loss_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"lm": (batch["labels"][:, 1:] != IGNORE_INDEX).sum()} if "labels" in batch else {}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy (default) or sampled continuation of an unpadded batch of prompts.

        With the KV cache each step feeds only the newest token, so n new tokens cost O(n)
        forward positions. Finished rows (after `eos_token_id`) are padded with it."""
        if input_ids.size(1) + max_new_tokens > self.config.max_positions:
            raise ValueError(
                f"prompt ({input_ids.size(1)}) + max_new_tokens ({max_new_tokens}) exceeds the position table "
                f"({self.config.max_positions}); shorten the prompt or ask for fewer tokens"
            )
        was_training = self.training
        self.eval()
        tokens, cache = input_ids, None
        finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            step_input = tokens[:, -1:] if cache is not None else tokens
            out = self(step_input, past_key_values=cache, use_cache=use_cache)
            cache = out.past_key_values if use_cache else None
            logits = out.logits[:, -1, :].float()
            next_token = _pick_next_token(logits, do_sample, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                next_token = next_token.masked_fill(finished, eos_token_id)
                finished |= next_token == eos_token_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        self.train(was_training)
        return tokens


def lm_loss_term(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss: logits at t predict labels at t + 1. The labels are shifted, not the logits,
    so the (batch x length x vocab) tensor is never copied."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return _ce_term(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def chunked_lm_loss_term(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_elements: int = 2**23
) -> tuple[torch.Tensor, torch.Tensor]:
    """lm_loss_term(hidden @ weight.T, labels) without the whole logits: `chunk_elements` logits at a time."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    rows = max(1, chunk_elements // weight.size(0))
    total = _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, targets, rows)
    return total, (targets != IGNORE_INDEX).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T) against targets, `rows` at a time. The gradients
    are computed in the forward pass, chunk by chunk (the loss is a sum, so backward only scales
    them by the incoming gradient): the logits and their gradient exist for one chunk at a time and
    nothing of size vocab is kept for backward. Ignored targets (-100) are masked with arithmetic,
    not boolean indexing, so there is no data-dependent shape and no host sync."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            h, y = hidden[start : start + rows], targets[start : start + rows]
            logits = (h @ weight.t()).float()
            valid = (y != IGNORE_INDEX).float()
            index = y.clamp(min=0)[:, None]
            log_z = logits.logsumexp(dim=-1)
            total += ((log_z - logits.gather(1, index).squeeze(1)) * valid).sum()
            if need_hidden or need_weight:
                grad = logits.sub_(log_z[:, None]).exp_()  # softmax, in place of the logits
                grad.scatter_add_(1, index, -valid[:, None])  # minus the one-hot target
                grad.mul_(valid[:, None])
                grad = grad.to(weight.dtype)
                if need_hidden:
                    grad_hidden[start : start + rows] = grad @ weight
                if need_weight:
                    grad_weight += grad.t() @ h.to(grad.dtype)
        ctx.save_for_backward(
            grad_hidden if need_hidden else None, grad_weight.to(weight.dtype) if need_weight else None
        )
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total if grad_hidden is not None else None,
            grad_weight * grad_total if grad_weight is not None else None,
            None,
            None,
        )


def _pick_next_token(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


class SequenceClassifier(PretrainedModel):
    """BERT reads the pooled [CLS]; GPT reads the last non-padding token and may add the LM loss
    as an auxiliary objective (weight `lm_loss_weight`, 0.5 in the GPT paper). `num_labels=1` is regression.

    `symmetric=True` is the GPT paper's similarity: inputs are (batch, 2, length), the pair in both
    orders; each order is run on its own and the two final representations are added before the head."""

    def __init__(
        self, config: TransformerConfig, num_labels: int, lm_loss_weight: float = 0.0, symmetric: bool = False
    ):
        super().__init__(config, pooler=not config.causal and not config.head_transform)
        if num_labels < 1:
            raise ValueError("num_labels must be >= 1 (1 = regression)")
        self.num_labels = num_labels
        self.lm_loss_weight = lm_loss_weight
        self.symmetric = symmetric
        self.dropout = nn.Dropout(config.dropout)
        self.head = HeadTransform(config) if config.head_transform and not config.causal else None
        # GPT-2's HF head has no bias; keep ours exportable
        self.classifier = nn.Linear(config.hidden_size, num_labels, bias=not config.causal)
        self._init_heads(*(m for m in (self.head, self.classifier) if m is not None))
        self._add_aux_lm_head(lm_loss_weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        if self.symmetric:  # (B, 2, T) -> (2B, T): both orders in one forward pass
            if input_ids.dim() != 3 or input_ids.size(1) != 2:
                raise ValueError(
                    f"a symmetric classifier takes (batch, 2, length) inputs, not {tuple(input_ids.shape)}"
                )
            input_ids, attention_mask, token_type_ids = (
                x.flatten(0, 1) if x is not None else None for x in (input_ids, attention_mask, token_type_ids)
            )
        position_ids = None
        if self.config.causal and attention_mask is not None:  # left padding: count positions from the first token
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.transformer(
            input_ids, attention_mask, token_type_ids, output_attentions=output_attentions, position_ids=position_ids
        )
        if self.config.causal:  # the rightmost attended position (left or right padding)
            features = last_token_features(out.last_hidden_state, attention_mask)
        elif self.head is not None:  # ModernBERT: pool ([CLS] or the mean of real tokens), then transform
            h = out.last_hidden_state
            if self.config.classifier_pooling == "mean":
                weights = torch.ones_like(h[..., 0]) if attention_mask is None else attention_mask.to(h.dtype)
                h = (h * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
            else:
                h = h[:, 0]
            features = self.head(h)
        else:
            features = out.pooler_output
        if self.symmetric:
            features = features.view(-1, 2, features.size(-1)).sum(dim=1)
        out.logits = self.classifier(self.dropout(features))
        if labels is not None:
            if self.num_labels == 1:
                n = torch.tensor(labels.numel(), device=labels.device)
                out.loss_terms["cls"] = (F.mse_loss(out.logits.squeeze(-1).float(), labels.float(), reduction="sum"), n)
            else:
                out.loss_terms["cls"] = _ce_term(out.logits, labels)
            if self.lm_loss_weight and self.config.causal:
                out.loss_terms["lm_aux"] = self._aux_lm_term(
                    out.last_hidden_state, input_ids, attention_mask, self.lm_loss_weight
                )
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    def loss_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "labels" not in batch:
            return {}
        labels = batch["labels"]
        counts = {"cls": (labels != IGNORE_INDEX).sum() if self.num_labels > 1 else torch.tensor(labels.numel())}
        if self.lm_loss_weight and self.config.causal:
            counts["lm_aux"] = self._aux_lm_count(batch)
        return counts


class SpanQA(PretrainedModel):
    """Extractive QA: a start vector and an end vector scored against every token.
    Unanswerable questions point at position 0 ([CLS])."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.head = HeadTransform(config) if config.head_transform else None
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._init_heads(*(m for m in (self.head, self.qa_outputs) if m is not None))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        h = out.last_hidden_state if self.head is None else self.head(out.last_hidden_state)
        start, end = self.qa_outputs(h).unbind(dim=-1)
        out.start_logits, out.end_logits = start, end
        if start_positions is not None and end_positions is not None:
            # as in BERT: the mean of the start and end losses
            s_total, count = _ce_term(start, start_positions)
            e_total, _ = _ce_term(end, end_positions)
            out.loss_terms["span"] = ((s_total + e_total) / 2, count)
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    @staticmethod
    def loss_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"span": (batch["start_positions"] != IGNORE_INDEX).sum()} if "start_positions" in batch else {}


def last_token_features(h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, H) at the rightmost attended position (GPT's classification token)."""
    if attention_mask is None:
        return h[:, -1]
    positions = torch.arange(h.size(1), device=h.device)
    last = (positions * attention_mask.long()).argmax(dim=-1)
    return h[torch.arange(h.size(0), device=h.device), last]


class TokenClassifier(PretrainedModel):
    """A label for every token (chunking, named entities): dropout and a linear layer on each final
    hidden state, cross-entropy on the labelled positions (the rest carry IGNORE_INDEX)."""

    def __init__(self, config: TransformerConfig, num_labels: int):
        super().__init__(config)
        if num_labels < 2:
            raise ValueError("num_labels must be >= 2 for token classification")
        self.num_labels = num_labels
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._init_heads(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        out.logits = self.classifier(self.dropout(out.last_hidden_state))
        if labels is not None:
            out.loss_terms["tokens"] = _ce_term(out.logits.view(-1, self.num_labels), labels.reshape(-1))
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    @staticmethod
    def loss_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tokens": (batch["labels"] != IGNORE_INDEX).sum()} if "labels" in batch else {}


class MultipleChoice(PretrainedModel):
    """One score per `context + choice` sequence, a softmax across the choices of an example, and
    cross-entropy on the right one. Inputs are (batch, choices, length). BERT scores the pooled [CLS];
    GPT the last non-padding token, optionally with the auxiliary LM loss on every choice."""

    def __init__(self, config: TransformerConfig, lm_loss_weight: float = 0.0):
        super().__init__(config, pooler=not config.causal)
        self.lm_loss_weight = lm_loss_weight
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self._init_heads(self.classifier)
        self._add_aux_lm_head(lm_loss_weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be (batch, choices, length), got shape {tuple(input_ids.shape)}")
        batch, choices, length = input_ids.shape
        flat = [x.reshape(batch * choices, length) if x is not None else None for x in (attention_mask, token_type_ids)]
        ids = input_ids.reshape(batch * choices, length)
        out = self.transformer(ids, flat[0], flat[1], output_attentions=output_attentions)
        if self.config.causal:
            features = last_token_features(out.last_hidden_state, flat[0])
        else:
            features = out.pooler_output
        out.logits = self.classifier(self.dropout(features)).view(batch, choices)
        if labels is not None:
            out.loss_terms["choice"] = _ce_term(out.logits, labels)
            if self.lm_loss_weight and self.config.causal:
                out.loss_terms["lm_aux"] = self._aux_lm_term(out.last_hidden_state, ids, flat[0], self.lm_loss_weight)
        out.loss = _terms_to_loss(out.loss_terms)
        return out

    def loss_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "labels" not in batch:
            return {}
        counts = {"choice": (batch["labels"] != IGNORE_INDEX).sum()}
        if self.lm_loss_weight and self.config.causal:
            counts["lm_aux"] = self._aux_lm_count(batch)
        return counts
