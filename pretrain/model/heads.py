"""The pretraining models: BERT (masked LM + next sentence) and GPT (causal LM), on the shared trunk."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..targets import labelled_positions
from .config import TransformerConfig
from .core import ACTIVATIONS, KVCache, ModelOutput, Transformer, init_weights, make_norm, zero_padded_vocab_rows
from .generation import generate
from .losses import LossTerm, ce_term, chunked_lm_loss_term, linear_ce_term, lm_loss_term, mean_loss

# the number of masked positions changes every step, and the chunk loop runs over it in Python: under
# torch.compile that would recompile per count, so this one call stays eager (it is matmul-bound anyway)
eager_linear_ce_term = torch.compiler.disable(linear_ce_term)


def true_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The logits of the real vocabulary: the matmul runs over the padded rows (config.padded_vocab_size,
    aligned), the padded ids' columns are dropped (a view), so no loss, argmax or sample can see them."""
    return logits[..., :vocab_size]


class HeadTransform(nn.Module):
    """dense -> activation -> norm: what ModernBERT's task heads apply before their output layer."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]
        self.norm = make_norm(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


class MLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder (tied to the word embeddings) + bias."""

    def __init__(self, config: TransformerConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]
        self.norm = make_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.vocab_size = config.vocab_size

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return true_vocab(self.decoder(self.transform(h)), self.vocab_size) + self.bias


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
            self.lm_head = nn.Linear(self.config.hidden_size, self.config.padded_vocab_size, bias=False)
            self.lm_head.weight = self.transformer.embeddings.word.weight

    def _aux_lm_term(self, hidden: torch.Tensor, lm_labels: torch.Tensor) -> LossTerm:
        logits = true_vocab(self.lm_head(hidden), self.config.vocab_size)
        total, count, targets = lm_loss_term(logits, lm_labels, "lm_labels")
        return LossTerm(total * self.lm_loss_weight, count, targets)


class BertPretraining(PretrainedModel):
    """BERT pretraining: masked-LM head (+ next-sentence head unless `nsp=False`).

    With MLM `labels` given, only the labelled positions are predicted: the MLM head, and everything in
    the last block after its attention, run at those rows (and [CLS] for the pooler). At ~15% of tokens
    that saves most of the head's compute and memory and most of a layer's; in training the decoder and
    its loss run a chunk at a time (no logits returned). The positions are
    `mlm_positions` (flat indices into batch x length, in order, as the MLM collator computes them on the
    host), or, without it, found from `labels` (which makes an accelerator wait for the device). With labels,
    `last_hidden_state` holds those N rows only, (N, hidden)."""

    def __init__(self, config: TransformerConfig, nsp: bool = True):
        if config.causal:
            raise ValueError("BertPretraining needs a bidirectional model (causal=false)")
        super().__init__(config, pooler=nsp)  # as in HF: the pooler exists for the NSP head only
        self.mlm_head = MLMHead(config, self.transformer.embeddings.word)
        self.nsp_head = nn.Linear(config.hidden_size, 2) if nsp else None
        self._init_heads(*(m for m in (self.mlm_head.dense, self.mlm_head.norm, self.nsp_head) if m is not None))
        if not config.tie_embeddings:
            self._init_heads(self.mlm_head.decoder)
            zero_padded_vocab_rows(self.mlm_head.decoder.weight, config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        output_attentions: bool = False,
        mlm_positions: torch.Tensor | None = None,
    ) -> ModelOutput:
        if labels is not None and mlm_positions is None:
            mlm_positions = labelled_positions(labels)
        out = self.transformer(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=output_attentions,
            output_positions=mlm_positions if labels is not None else None,
        )
        h, head = out.last_hidden_state, self.mlm_head
        if labels is None:
            out.prediction_logits = head(h)
        else:
            targets = labels.reshape(-1).index_select(0, mlm_positions)
            if torch.is_grad_enabled():  # training: the decoder and its loss a chunk at a time, as CausalLM's
                weight, vocab = head.decoder.weight, head.vocab_size
                out.loss_terms["mlm"] = eager_linear_ce_term(head.transform(h), weight, targets, head.bias, vocab)
                # out.prediction_logits stays None; call under torch.no_grad() to get them
            else:
                out.prediction_logits = head(h)  # (N, V) at the N labelled positions
                out.loss_terms["mlm"] = ce_term(out.prediction_logits, targets)
        if self.nsp_head is not None:
            out.seq_relationship_logits = self.nsp_head(out.pooler_output)
            if next_sentence_label is not None:
                out.loss_terms["nsp"] = ce_term(out.seq_relationship_logits, next_sentence_label, "next_sentence_label")
        out.loss = mean_loss(out.loss_terms)
        return out


class CausalLM(PretrainedModel):
    """GPT: causal decoder with a (tied) language-model head; next-token loss."""

    def __init__(self, config: TransformerConfig):
        if not config.causal:
            raise ValueError("CausalLM needs a causal model (causal=true)")
        super().__init__(config)
        self.lm_head = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.embeddings.word.weight
        else:
            self._init_heads(self.lm_head)
            zero_padded_vocab_rows(self.lm_head.weight, config.vocab_size)

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
            out.loss_terms["lm"] = chunked_lm_loss_term(
                out.last_hidden_state, self.lm_head.weight, labels, vocab_size=self.config.vocab_size
            )
            out.loss = mean_loss(out.loss_terms)
            return out  # out.logits stays None; call under torch.no_grad() (or without labels) to get them
        out.logits = true_vocab(self.lm_head(out.last_hidden_state), self.config.vocab_size)
        if labels is not None:
            out.loss_terms["lm"] = lm_loss_term(out.logits, labels)
        out.loss = mean_loss(out.loss_terms)
        return out

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
        """Greedy (default) or sampled continuation; see pretrain.model.generation.generate."""
        return generate(self, input_ids, max_new_tokens, **options)
