"""RoBERTa: BERT's layers with positions that count real tokens from pad_token_id + 1, one token type,
no next-sentence head, and its own head names (lm_head; a classifier whose dense + tanh is our pooler)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..model import TransformerConfig
from .base import AnyModel, Pair, is_modern, register_family
from .bert import BertAdapter


class RobertaAdapter(BertAdapter):
    model_type = "roberta"
    prefix = "roberta."
    architectures = {
        "base": "RobertaModel",
        "mlm": "RobertaForMaskedLM",
        "classification": "RobertaForSequenceClassification",
        "qa": "RobertaForQuestionAnswering",
        "token_classification": "RobertaForTokenClassification",  # BERT's heads: classifier on the tokens,
        "multiple_choice": "RobertaForMultipleChoice",  # on the pooler (dense + tanh on <s>) of each choice
    }
    description = "RoBERTa (RobertaModel, RobertaForMaskedLM, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        return not config.causal and config.positions_skip_padding and not is_modern(config)

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        hf, problems = super().config_to_hf(model)
        hf["model_type"] = "roberta"
        hf.update(bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id)  # not HF's 0, 2
        return hf, [p.replace("HF BERT", "HF RoBERTa") for p in problems]

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        return dataclasses.replace(super().config_from_hf({"pad_token_id": 1, **hf}), positions_skip_padding=True)

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        if head == "mlm":
            pairs: list[Pair] = [
                ("mlm_head.dense.weight", "lm_head.dense.weight", "copy"),
                ("mlm_head.dense.bias", "lm_head.dense.bias", "copy"),
                ("mlm_head.norm.weight", "lm_head.layer_norm.weight", "copy"),
                ("mlm_head.norm.bias", "lm_head.layer_norm.bias", "copy"),
                ("mlm_head.bias", "lm_head.bias", "copy"),
            ]
            if not model.config.tie_embeddings:  # as BERT's: the untied decoder's own bias is the one HF adds
                pairs.append(("mlm_head.decoder.weight", "lm_head.decoder.weight", "copy"))
                pairs.append(("mlm_head.bias", "lm_head.decoder.bias", "copy"))
            return pairs
        if head == "classification":  # RobertaClassificationHead: dense -> tanh on <s> (our pooler) -> out_proj
            return [
                ("transformer.pooler.weight", "classifier.dense.weight", "copy"),
                ("transformer.pooler.bias", "classifier.dense.bias", "copy"),
                ("classifier.weight", "classifier.out_proj.weight", "copy"),
                ("classifier.bias", "classifier.out_proj.bias", "copy"),
            ]
        return super().head_pairs(model, head)

    def full_table(self, model: AnyModel) -> tuple[list[Pair], list[Pair]]:
        trunk, heads = super().full_table(model)
        if any(o == "transformer.pooler.weight" for o, _, _ in heads):  # the pooler lives in the classifier
            trunk = [pair for pair in trunk if not pair[0].startswith("transformer.pooler.")]
        return trunk, heads


ROBERTA = register_family(RobertaAdapter())
