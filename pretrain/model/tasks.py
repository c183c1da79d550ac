"""The fine-tuning models: sequence classification, span QA, token classification, multiple choice."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TransformerConfig
from .core import ModelOutput
from .heads import HeadTransform, PretrainedModel
from .losses import LossTerm, ce_term, mean_loss


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
        lm_labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        if self.symmetric:  # (B, 2, T) -> (2B, T): both orders in one forward pass
            if input_ids.dim() != 3 or input_ids.size(1) != 2:
                raise ValueError(
                    f"a symmetric classifier takes (batch, 2, length) inputs, not {tuple(input_ids.shape)}"
                )
            input_ids, attention_mask, token_type_ids, lm_labels = (
                x.flatten(0, 1) if x is not None else None
                for x in (input_ids, attention_mask, token_type_ids, lm_labels)
            )
        position_ids = None
        if self.config.causal and attention_mask is not None:  # left padding: count positions from the first token
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.transformer(
            input_ids, attention_mask, token_type_ids, output_attentions=output_attentions, position_ids=position_ids
        )
        if self.config.causal:  # the rightmost attended position (left or right padding)
            features = last_token_features(out.last_hidden_state, attention_mask, input_ids, self.config.pad_token_id)
        elif self.head is not None:
            features = pooled_features(out.last_hidden_state, attention_mask, self.head, self.config.classifier_pooling)
        else:
            features = out.pooler_output
        if self.symmetric:
            features = features.view(-1, 2, features.size(-1)).sum(dim=1)
        out.logits = self.classifier(self.dropout(features))
        if labels is not None:
            if self.num_labels == 1:
                n = torch.tensor(labels.numel(), device=labels.device)
                total = F.mse_loss(out.logits.squeeze(-1).float(), labels.float(), reduction="sum")
                out.loss_terms["cls"] = LossTerm(total, n, "labels")
            else:
                out.loss_terms["cls"] = ce_term(out.logits, labels)
        if lm_labels is not None and self.lm_loss_weight and self.config.causal:
            out.loss_terms["lm_aux"] = self._aux_lm_term(out.last_hidden_state, lm_labels)
        out.loss = mean_loss(out.loss_terms)
        return out


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
            start_term, end_term = ce_term(start, start_positions), ce_term(end, end_positions)
            out.loss_terms["span"] = LossTerm(
                (start_term.total + end_term.total) / 2, start_term.count, "start_positions"
            )
        out.loss = mean_loss(out.loss_terms)
        return out


def pooled_features(
    h: torch.Tensor, attention_mask: torch.Tensor | None, head: nn.Module, pooling: str
) -> torch.Tensor:
    """(B, T, H) -> (B, H) as ModernBERT's sequence heads read it: [CLS] (`pooling="cls"`) or the mean of the real
    tokens, then its head transform (dense -> act -> norm) instead of BERT's tanh pooler."""
    if pooling == "mean":
        weights = torch.ones_like(h[..., 0]) if attention_mask is None else attention_mask.to(h.dtype)
        return head((h * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True))
    return head(h[:, 0])


def last_token_features(
    h: torch.Tensor, attention_mask: torch.Tensor | None, input_ids: torch.Tensor, pad_token_id: int | None
) -> torch.Tensor:
    """(B, T, H) -> (B, H) at the rightmost attended position (GPT's classification token). Without a mask,
    as Hugging Face's GPT-2 and Llama classifiers read: the rightmost token that is not padding."""
    if attention_mask is None and pad_token_id is not None:
        attention_mask = input_ids.ne(pad_token_id)
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
        self.head = HeadTransform(config) if config.head_transform else None  # ModernBERT: on every token
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._init_heads(*(m for m in (self.head, self.classifier) if m is not None))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        h = out.last_hidden_state if self.head is None else self.head(out.last_hidden_state)
        out.logits = self.classifier(self.dropout(h))
        if labels is not None:
            out.loss_terms["tokens"] = ce_term(out.logits.view(-1, self.num_labels), labels.reshape(-1))
        out.loss = mean_loss(out.loss_terms)
        return out


class MultipleChoice(PretrainedModel):
    """One score per `context + choice` sequence, a softmax across the choices of an example, and
    cross-entropy on the right one. Inputs are (batch, choices, length). BERT scores the pooled [CLS];
    GPT the last non-padding token, optionally with the auxiliary LM loss on every choice."""

    def __init__(self, config: TransformerConfig, lm_loss_weight: float = 0.0):
        super().__init__(config, pooler=not config.causal and not config.head_transform)
        self.lm_loss_weight = lm_loss_weight
        self.head = HeadTransform(config) if config.head_transform and not config.causal else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self._init_heads(*(m for m in (self.head, self.classifier) if m is not None))
        self._add_aux_lm_head(lm_loss_weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be (batch, choices, length), got shape {tuple(input_ids.shape)}")
        batch, choices, length = input_ids.shape
        flat = [x.reshape(batch * choices, length) if x is not None else None for x in (attention_mask, token_type_ids)]
        ids = input_ids.reshape(batch * choices, length)
        out = self.transformer(ids, flat[0], flat[1], output_attentions=output_attentions)
        if self.config.causal:
            features = last_token_features(out.last_hidden_state, flat[0], ids, self.config.pad_token_id)
        elif self.head is not None:
            features = pooled_features(out.last_hidden_state, flat[0], self.head, self.config.classifier_pooling)
        else:
            features = out.pooler_output
        out.logits = self.classifier(self.dropout(features)).view(batch, choices)
        if labels is not None:
            out.loss_terms["choice"] = ce_term(out.logits, labels)
        if lm_labels is not None and self.lm_loss_weight and self.config.causal:
            out.loss_terms["lm_aux"] = self._aux_lm_term(out.last_hidden_state, lm_labels.flatten(0, 1))
        out.loss = mean_loss(out.loss_terms)
        return out
