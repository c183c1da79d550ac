"""Llama: pre-RMSNorm decoder, rotary positions, SwiGLU MLP, grouped-query attention, optional biases,
tied or untied embeddings. Q/K/V and gate/up are joined into our fused projections."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model import TransformerConfig
from .activations import ACT_TO_HF, activation_from_hf
from .base import Adapter, AnyModel, Pair, head_name, is_modern, joined, register_family


class LlamaAdapter(Adapter):
    model_type = "llama"
    prefix = "model."
    trunk_names = ("embed_tokens.", "layers.", "norm.")
    architectures = {
        "base": "LlamaModel",
        "causal_lm": "LlamaForCausalLM",
        "classification": "LlamaForSequenceClassification",
        "token_classification": "LlamaForTokenClassification",
        "qa": "LlamaForQuestionAnswering",
    }
    description = "Llama (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        return config.causal and is_modern(config)

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        cfg = model.config
        expected = {
            "position_embedding": "rotary",
            "norm": "rmsnorm",
            "norm_placement": "pre",
            "gated_mlp": True,
            "segment_vocab_size": 0,
            "local_attention": 0,
            "has_embedding_norm": False,
            "positions_skip_padding": False,
        }
        problems = [
            f"{name}={getattr(cfg, name)!r} (HF Llama has {value!r})"
            for name, value in expected.items()
            if getattr(cfg, name) != value
        ]
        hf = {
            "model_type": "llama",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.ffn_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": ACT_TO_HF[cfg.activation],
            "max_position_embeddings": cfg.max_positions,
            "rms_norm_eps": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "attention_dropout": cfg.attention_dropout,
            "tie_word_embeddings": cfg.tie_embeddings,
            # explicit, so HF's defaults (1 and 2) are not written for a model without them
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }
        return hf, problems

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise ConfigError(f"unsupported Llama RoPE scaling {rope or hf.get('rope_scaling')}; only default RoPE is")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ConfigError("unsupported Llama variant: attention_bias and mlp_bias differ (one bias switch here)")
        heads = hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
            raise ConfigError(f"unsupported Llama variant: head_dim={hf['head_dim']} != hidden_size / heads")
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            ffn_size=hf["intermediate_size"],
            max_positions=hf.get("max_position_embeddings", 2048),
            segment_vocab_size=0,
            dropout=0.0,
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
            activation=activation_from_hf(hf.get("hidden_act", "silu")),
            position_embedding="rotary",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm="rmsnorm",
            norm_placement="pre",
            gated_mlp=True,
            bias=bool(hf.get("attention_bias", False)),
            causal=True,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id") if not isinstance(hf.get("eos_token_id"), list) else None,
        )

    def trunk_pairs(self, config: TransformerConfig, has_pooler: bool) -> list[Pair]:
        q, kv = config.num_heads * config.head_dim, config.kv_heads * config.head_dim
        params = ("weight", "bias") if config.bias else ("weight",)
        pairs: list[Pair] = [
            ("embeddings.word.weight", "embed_tokens.weight", "copy"),
            ("final_norm.weight", "norm.weight", "copy"),
        ]
        for i in range(config.num_layers):
            ours, theirs = f"blocks.{i}.", f"layers.{i}."
            pairs += [
                (f"{ours}attn_norm.weight", f"{theirs}input_layernorm.weight", "copy"),
                (f"{ours}mlp_norm.weight", f"{theirs}post_attention_layernorm.weight", "copy"),
            ]
            for p in params:
                qkv = tuple(f"{theirs}self_attn.{n}_proj.{p}" for n in "qkv")
                gate_up = (f"{theirs}mlp.gate_proj.{p}", f"{theirs}mlp.up_proj.{p}")
                pairs += [
                    (f"{ours}attn.qkv.{p}", qkv, joined(q, kv, kv)),
                    (f"{ours}attn.proj.{p}", f"{theirs}self_attn.o_proj.{p}", "copy"),
                    (f"{ours}mlp.fc.{p}", gate_up, joined(config.ffn_size, config.ffn_size)),
                    (f"{ours}mlp.proj.{p}", f"{theirs}mlp.down_proj.{p}", "copy"),
                ]
        return pairs

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        if head == "causal_lm":
            return [] if model.config.tie_embeddings else [("lm_head.weight", "lm_head.weight", "copy")]
        if head == "classification":
            return [("classifier.weight", "score.weight", "copy")]
        if head == "token_classification":  # unlike the sequence score, this one has a bias
            return [("classifier.weight", "score.weight", "copy"), ("classifier.bias", "score.bias", "copy")]
        if head == "qa":
            return [("qa_outputs.weight", "qa_outputs.weight", "copy"), ("qa_outputs.bias", "qa_outputs.bias", "copy")]
        return []

    def prefix_for(self, model: AnyModel) -> str:
        return "transformer." if head_name(model) == "qa" else self.prefix  # LlamaForQuestionAnswering's own name


LLAMA = register_family(LlamaAdapter())
