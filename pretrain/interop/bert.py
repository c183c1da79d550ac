"""BERT: post-LN encoder, learned positions, token types, separate Q/K/V (joined into our fused QKV)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..model import BertPretraining, TransformerConfig
from .activations import ACT_TO_HF, activation_from_hf
from .base import Adapter, AnyModel, Pair, is_modern, joined, register_family


def encoder_layer_pairs(ours: str, theirs: str, hidden_size: int) -> list[Pair]:
    """One BERT-layout encoder layer (BERT and RoBERTa share it)."""
    pairs: list[Pair] = []
    for p in ("weight", "bias"):
        qkv = tuple(f"{theirs}attention.self.{n}.{p}" for n in ("query", "key", "value"))
        pairs += [
            (f"{ours}attn.qkv.{p}", qkv, joined(hidden_size, hidden_size, hidden_size)),
            (f"{ours}attn.proj.{p}", f"{theirs}attention.output.dense.{p}", "copy"),
            (f"{ours}attn_norm.{p}", f"{theirs}attention.output.LayerNorm.{p}", "copy"),
            (f"{ours}mlp.fc.{p}", f"{theirs}intermediate.dense.{p}", "copy"),
            (f"{ours}mlp.proj.{p}", f"{theirs}output.dense.{p}", "copy"),
            (f"{ours}mlp_norm.{p}", f"{theirs}output.LayerNorm.{p}", "copy"),
        ]
    return pairs


class BertAdapter(Adapter):
    model_type = "bert"
    prefix = "bert."
    trunk_names = ("embeddings.", "encoder.", "pooler.")
    architectures = {
        "base": "BertModel",
        "pretraining": "BertForPreTraining",
        "mlm": "BertForMaskedLM",
        "classification": "BertForSequenceClassification",
        "qa": "BertForQuestionAnswering",
        "token_classification": "BertForTokenClassification",
        "multiple_choice": "BertForMultipleChoice",
    }
    description = "BERT (BertModel, BertForPreTraining, BertForMaskedLM, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        modern = is_modern(config) or config.norm_placement == "pre"
        return not config.causal and not modern and not config.positions_skip_padding

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        cfg = model.config
        problems = []
        if cfg.position_embedding != "learned":
            problems.append(f"position_embedding={cfg.position_embedding!r} (HF BERT has learned positions only)")
        if cfg.norm_placement != "post":
            problems.append("norm_placement='pre' (HF BERT is post-LN)")
        if not cfg.has_embedding_norm:
            problems.append("embedding_norm=False (HF BERT normalises the embedding sum)")
        hf = {
            "model_type": "bert",
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_size,
            "hidden_act": ACT_TO_HF[cfg.activation],
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attention_dropout,
            "max_position_embeddings": cfg.max_positions,
            # a model without segments exports one all-zero token-type row: the same function
            "type_vocab_size": max(cfg.segment_vocab_size, 1),
            "layer_norm_eps": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
        return hf, problems

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"unsupported BERT position_embedding_type={hf['position_embedding_type']!r}")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ConfigError("unsupported BERT variant: decoder / cross-attention BERT checkpoints are not supported")
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            ffn_size=hf["intermediate_size"],
            max_positions=hf["max_position_embeddings"],
            segment_vocab_size=hf.get("type_vocab_size", 2),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=activation_from_hf(hf.get("hidden_act", "gelu")),
            norm_placement="post",
            causal=False,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id", 0),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )

    def trunk_pairs(self, config: TransformerConfig, has_pooler: bool) -> list[Pair]:
        pairs: list[Pair] = [
            ("embeddings.word.weight", "embeddings.word_embeddings.weight", "copy"),
            ("embeddings.position.weight", "embeddings.position_embeddings.weight", "copy"),
            ("embeddings.norm.weight", "embeddings.LayerNorm.weight", "copy"),
            ("embeddings.norm.bias", "embeddings.LayerNorm.bias", "copy"),
        ]
        if has_pooler:
            pairs += [("pooler.weight", "pooler.dense.weight", "copy"), ("pooler.bias", "pooler.dense.bias", "copy")]
        if config.segment_vocab_size:
            pairs.append(("embeddings.segment.weight", "embeddings.token_type_embeddings.weight", "copy"))
        for i in range(config.num_layers):
            pairs += encoder_layer_pairs(f"blocks.{i}.", f"encoder.layer.{i}.", config.hidden_size)
        return pairs

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        if head in ("pretraining", "mlm"):
            pairs: list[Pair] = [
                ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight", "copy"),
                ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias", "copy"),
                ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight", "copy"),
                ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias", "copy"),
                ("mlm_head.bias", "cls.predictions.bias", "copy"),
            ]
            if not model.config.tie_embeddings:  # untied, HF's decoder keeps a bias of its own, which it adds
                pairs.append(("mlm_head.decoder.weight", "cls.predictions.decoder.weight", "copy"))
                pairs.append(("mlm_head.bias", "cls.predictions.decoder.bias", "copy"))
            if isinstance(model, BertPretraining) and model.nsp_head is not None:
                pairs += [
                    ("nsp_head.weight", "cls.seq_relationship.weight", "copy"),
                    ("nsp_head.bias", "cls.seq_relationship.bias", "copy"),
                ]
            return pairs
        if head in ("classification", "token_classification", "multiple_choice"):
            return [("classifier.weight", "classifier.weight", "copy"), ("classifier.bias", "classifier.bias", "copy")]
        if head == "qa":
            return [("qa_outputs.weight", "qa_outputs.weight", "copy"), ("qa_outputs.bias", "qa_outputs.bias", "copy")]
        return []

    def extra_hf_weights(self, model: AnyModel) -> dict[str, torch.Tensor]:
        if model.config.segment_vocab_size:
            return {}
        return {"embeddings.token_type_embeddings.weight": torch.zeros(1, model.config.hidden_size)}

    def normalise_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Old BERT checkpoints name LayerNorm parameters gamma/beta."""
        return {
            k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in state.items()
        }


BERT = register_family(BertAdapter())
