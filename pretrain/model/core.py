"""The Transformer trunk shared by the encoder and the decoder, read top to bottom:
norms and position tables -> embeddings -> attention -> MLP -> block -> Transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TransformerConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each (B, kv_heads, T, head_dim)
RotaryTables = tuple[torch.Tensor, torch.Tensor]

ACTIVATIONS = {  # keyed as config.Activation
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


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
    # MLM logits: (B, T, V) without labels; (N, V) at the N labelled positions with labels under no_grad;
    # None in training with labels (the decoder runs chunk by chunk inside the loss)
    prediction_logits: torch.Tensor | None = None
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
        self.word = nn.Embedding(config.padded_vocab_size, config.hidden_size)
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
            # one token type (RoBERTa's single row) tells nothing apart: every token gets that row, whatever ids a
            # BERT tokenizer gave a pair's second text (1 would index a row the model does not have)
            one_type = token_type_ids is None or self.segment.num_embeddings == 1
            x = x + (self.segment.weight[0] if one_type else self.segment(token_type_ids))
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
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """`rows` (flat indices into batch x length): the output projection runs at these rows only,
        giving (len(rows), hidden); attention itself still runs at every position."""
        batch, length, hidden = x.shape
        groups = self.num_heads // self.kv_heads
        qkv = self.qkv(x).view(batch, length, groups + 2, self.kv_heads, self.head_dim)
        if groups == 1:  # unbound along the (q, k, v) dim: backward stacks the gradients back with no extra copy
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))
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
                scores = scores.masked_fill(mask.logical_not(), float("-inf"))
            elif is_causal:
                scores = scores.masked_fill(_causal_bool(length, k.size(2), x.device).logical_not(), float("-inf"))
            probs = scores.softmax(dim=-1)
            y = F.dropout(probs, dropout_p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=groups > 1
            )
        y = y.transpose(1, 2).reshape(batch, length, hidden)
        return self.proj(take_rows(y, rows)), cache, probs


class MLP(nn.Module):
    """fc -> act -> proj; gated (SwiGLU / GeGLU): fc computes [gate; up] in one matmul and
    proj(act(gate) * up)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gated = config.gated_mlp
        self.fc = nn.Linear(config.hidden_size, config.ffn_size * (2 if self.gated else 1), bias=config.bias)
        self.proj = nn.Linear(config.ffn_size, config.hidden_size, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]

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

    def forward(self, x, mask, is_causal, past=None, need_weights=False, rope=None, rows=None):
        """`rows` (flat indices into batch x length): only these positions' outputs, (len(rows), hidden).
        Attention needs every position's keys and values; everything after it is per position."""
        if self.pre_norm:  # GPT-2: x + f(LN(x))
            a, kv, probs = self.attn(self.attn_norm(x), mask, is_causal, past, need_weights, rope, rows)
            x = take_rows(x, rows) + self.dropout(a)
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        else:  # BERT / original Transformer: LN(x + f(x))
            a, kv, probs = self.attn(x, mask, is_causal, past, need_weights, rope, rows)
            x = self.attn_norm(take_rows(x, rows) + self.dropout(a))
            x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, kv, probs


def take_rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(batch, length, hidden) -> (len(rows), hidden) at flat positions `rows`; x itself when rows is None."""
    return x if rows is None else x.reshape(-1, x.size(-1)).index_select(0, rows)


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
        zero_padded_vocab_rows(self.embeddings.word.weight, config.vocab_size)
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
        output_positions: torch.Tensor | None = None,
    ) -> ModelOutput:
        """`output_positions` (flat indices into batch x length, e.g. BERT's masked positions): the last
        block runs attention everywhere but its output projection, MLP and norms only at these rows, and
        `last_hidden_state` is (len(output_positions), hidden). The pooler still reads each [CLS]. Exact (with
        dropout off; on, the rows draw other masks): nothing after attention mixes positions."""
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
        mask, is_causal = self._attention_mask(attention_mask, batch, length, past_len, x.device)
        rope = local_rope = local_mask = None
        if cfg.position_embedding == "rotary":
            rope = rotary_tables(position_ids, cfg.head_dim, cfg.rope_theta, x.dtype)
            local_rope = rope
            if cfg.local_rope_theta is not None and cfg.local_rope_theta != cfg.rope_theta:
                local_rope = rotary_tables(position_ids, cfg.head_dim, cfg.local_rope_theta, x.dtype)
        if cfg.local_attention:
            local_mask = self._local_mask(attention_mask, length, x.device)

        rows = output_positions
        if rows is not None and self.pooler is not None:  # each row's first position ([CLS]) first, for the pooler
            rows = torch.cat([torch.arange(batch, device=x.device) * length, rows])
        new_cache: KVCache = []
        attentions = []
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values else None
            last_rows = rows if i == len(self.blocks) - 1 else None
            if block.local:
                x, kv, probs = block(x, local_mask, False, past, output_attentions, local_rope, last_rows)
            else:
                x, kv, probs = block(x, mask, is_causal, past, output_attentions, rope, last_rows)
            if use_cache:
                new_cache.append(kv)
            if output_attentions:
                attentions.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pooled = None
        if self.pooler is not None:
            first, x = (x[:, 0], x) if rows is None else (x[:batch], x[batch:])  # [CLS] rows went first
            pooled = torch.tanh(self.pooler(first))
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
        total = cfg.positions_needed(past_len + input_ids.size(1))
        if total > cfg.max_positions:
            raise ValueError(
                f"sequence of {total} tokens is longer than the position table ({cfg.max_positions}); "
                "truncate the input (data.max_length) or use a model with larger max_positions"
            )
        # value checks read the ids on the host: only outside training, on CPU tensors and in eager mode, so a
        # training forward (whose ids come from the model's own tokenizer, checked at start-up), an accelerator's
        # forward and a compiled graph never wait on them (out-of-range ids then fail inside the embedding)
        if self.training or input_ids.device.type != "cpu" or torch.compiler.is_compiling():
            return
        if input_ids.numel():
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()
            if low < 0 or high >= cfg.vocab_size:
                raise ValueError(
                    f"token id {high if high >= cfg.vocab_size else low} is outside the vocabulary "
                    f"[0, {cfg.vocab_size}); the tokenizer does not match the model (vocab_size={cfg.vocab_size})"
                )
        if token_type_ids is not None and token_type_ids.numel() and cfg.segment_vocab_size > 1:  # see Embeddings
            low, high = torch.stack(torch.aminmax(token_type_ids)).tolist()
            if low < 0 or high >= cfg.segment_vocab_size:
                raise ValueError(f"token_type_ids must be in [0, {cfg.segment_vocab_size})")

    def _attention_mask(self, attention_mask, batch, length, past_len, device):
        """Returns (boolean mask or None, is_causal flag) for scaled_dot_product_attention.

        Decided from shapes alone, never from the mask's values (that would make the host wait for the
        device): no `attention_mask` means no padding, so bidirectional attention needs no mask and causal
        attention goes through SDPA's `is_causal`; data collators leave the mask out of unpadded batches.
        Given a mask, padding keys are masked with a boolean (B, 1, 1, Tk) mask, (B, 1, Tq, Tk) when causal."""
        causal = self.config.causal
        key_len = past_len + length
        if attention_mask is None:
            if not causal or past_len == 0 or length == 1:
                # a single new query under a cache may see every key, so no mask is needed there either
                return None, causal and past_len == 0 and length > 1
            return _causal_bool(length, key_len, device)[None, None], False
        if attention_mask.shape != (batch, key_len):
            raise ValueError(f"attention_mask must have shape {(batch, key_len)}, got {tuple(attention_mask.shape)}")
        allowed = attention_mask.bool()[:, None, None, :]
        if causal:
            allowed = allowed & _causal_bool(length, key_len, device)
        return _attend_somewhere(allowed), False

    def _local_mask(self, attention_mask, length, device) -> torch.Tensor | None:
        """Sliding-window mask of local layers: query i sees keys j with |i - j| <= local_attention // 2
        (and not padding). None when the window covers the whole unpadded sequence."""
        half = self.config.local_attention // 2
        if length - 1 <= half and attention_mask is None:
            return None
        positions = torch.arange(length, device=device)
        allowed = ((positions[:, None] - positions[None, :]).abs() <= half)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        return _attend_somewhere(allowed)


def _attend_somewhere(allowed: torch.Tensor) -> torch.Tensor:
    """A query that may see no key at all (a padding query of a left-padded causal row, a fully padded
    row) attends to every key instead, as Hugging Face does: its output is never used, but a softmax over
    nothing would be NaN in some kernels, and NaN poisons the gradients. No host sync: pure tensor ops."""
    return allowed | ~allowed.any(dim=-1, keepdim=True)


@torch.no_grad()
def zero_padded_vocab_rows(weight: torch.Tensor, vocab_size: int) -> None:
    """The rows past the true vocabulary (config.padded_vocab_size) start at zero and stay there: no id
    looks them up and no logit of theirs is scored, so they get no gradient (exports drop them)."""
    weight[vocab_size:].zero_()


def init_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
