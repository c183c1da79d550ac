"""GPT-2: pre-LN decoder, learned positions, final LayerNorm, Conv1D weights (transposed)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError
from ..model import TransformerConfig
from .activations import ACT_TO_HF, activation_from_hf
from .base import Adapter, AnyModel, Pair, is_modern, register_family

log = logging.getLogger(__name__)


class GPT2Adapter(Adapter):
    model_type = "gpt2"
    prefix = "transformer."
    trunk_names = ("wte.", "wpe.", "h.", "ln_f.")
    architectures = {
        "base": "GPT2Model",
        "causal_lm": "GPT2LMHeadModel",
        "classification": "GPT2ForSequenceClassification",
        "qa": "GPT2ForQuestionAnswering",
        "token_classification": "GPT2ForTokenClassification",
        # GPT2DoubleHeadsModel's multiple-choice summary is our head read at the token passed as
        # mc_token_ids (give it the last non-padding position); its LM head is tied to the embeddings
        "multiple_choice": "GPT2DoubleHeadsModel",
    }
    description = "GPT-2 (GPT2Model, GPT2LMHeadModel, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        return config.causal and not is_modern(config)

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        cfg = model.config
        problems = []
        if cfg.position_embedding != "learned":
            problems.append(f"position_embedding={cfg.position_embedding!r} (HF GPT-2 has learned positions only)")
        if cfg.norm_placement != "pre":
            problems.append("norm_placement='post' (HF GPT-2 is pre-LN)")
        if cfg.segment_vocab_size:
            problems.append("segment_vocab_size > 0 (HF GPT-2 has no separate segment embeddings)")
        if cfg.has_embedding_norm:
            problems.append("embedding_norm=True (HF GPT-2 has no norm on the embedding sum)")
        if cfg.positions_skip_padding:
            problems.append("positions_skip_padding=True (HF GPT-2 counts positions from 0 over padding too)")
        if cfg.dropout != cfg.attention_dropout:
            log.info("GPT-2 export: attention_dropout %s kept as attn_pdrop", cfg.attention_dropout)
        hf = {
            "model_type": "gpt2",
            "n_embd": cfg.hidden_size,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.ffn_size,
            "n_positions": cfg.max_positions,
            "activation_function": ACT_TO_HF[cfg.activation],
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "tie_word_embeddings": cfg.tie_embeddings,
            # explicit, so HF's defaults (50256) are not written for a model without them
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }
        return hf, problems

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            raise ConfigError("unsupported GPT-2 variant: non-standard attention scaling")
        if hf.get("add_cross_attention"):
            raise ConfigError("unsupported GPT-2 variant: cross-attention")
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            ffn_size=hf.get("n_inner") or 4 * hf["n_embd"],
            max_positions=hf["n_positions"],
            segment_vocab_size=0,
            dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
            norm_placement="pre",
            causal=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )

    def trunk_pairs(self, config: TransformerConfig, has_pooler: bool) -> list[Pair]:
        pairs: list[Pair] = [
            ("embeddings.word.weight", "wte.weight", "copy"),
            ("embeddings.position.weight", "wpe.weight", "copy"),
            ("final_norm.weight", "ln_f.weight", "copy"),
            ("final_norm.bias", "ln_f.bias", "copy"),
        ]
        for i in range(config.num_layers):
            ours, theirs = f"blocks.{i}.", f"h.{i}."
            pairs += [
                (f"{ours}attn_norm.weight", f"{theirs}ln_1.weight", "copy"),
                (f"{ours}attn_norm.bias", f"{theirs}ln_1.bias", "copy"),
                (f"{ours}attn.qkv.weight", f"{theirs}attn.c_attn.weight", "conv1d"),
                (f"{ours}attn.qkv.bias", f"{theirs}attn.c_attn.bias", "copy"),
                (f"{ours}attn.proj.weight", f"{theirs}attn.c_proj.weight", "conv1d"),
                (f"{ours}attn.proj.bias", f"{theirs}attn.c_proj.bias", "copy"),
                (f"{ours}mlp_norm.weight", f"{theirs}ln_2.weight", "copy"),
                (f"{ours}mlp_norm.bias", f"{theirs}ln_2.bias", "copy"),
                (f"{ours}mlp.fc.weight", f"{theirs}mlp.c_fc.weight", "conv1d"),
                (f"{ours}mlp.fc.bias", f"{theirs}mlp.c_fc.bias", "copy"),
                (f"{ours}mlp.proj.weight", f"{theirs}mlp.c_proj.weight", "conv1d"),
                (f"{ours}mlp.proj.bias", f"{theirs}mlp.c_proj.bias", "copy"),
            ]
        return pairs

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        if head == "causal_lm":
            return [] if model.config.tie_embeddings else [("lm_head.weight", "lm_head.weight", "copy")]
        if head == "classification":
            return [("classifier.weight", "score.weight", "copy")]
        if head == "qa":
            return [("qa_outputs.weight", "qa_outputs.weight", "copy"), ("qa_outputs.bias", "qa_outputs.bias", "copy")]
        if head == "token_classification":
            return [("classifier.weight", "classifier.weight", "copy"), ("classifier.bias", "classifier.bias", "copy")]
        if head == "multiple_choice":
            return [
                ("classifier.weight", "multiple_choice_head.summary.weight", "copy"),
                ("classifier.bias", "multiple_choice_head.summary.bias", "copy"),
            ]
        return []


GPT2 = register_family(GPT2Adapter())
