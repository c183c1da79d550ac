"""ModernBERT: pre-LN encoder with a normalised embedding (so its first block has no attention norm),
rotary positions with separate global / local bases, sliding-window local layers alternating with global
ones, GeGLU MLP, bias-free linears and norms, a final norm, and task heads that start with
dense -> act -> norm. Its fused Wqkv and Wi already have our layout: plain copies."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model import TransformerConfig
from .activations import ACT_TO_HF, activation_from_hf
from .base import Adapter, AnyModel, Pair, is_modern, register_family

FULL, SLIDING = "full_attention", "sliding_attention"


class ModernBertAdapter(Adapter):
    model_type = "modernbert"
    prefix = "model."
    trunk_names = ("embeddings.", "layers.", "final_norm.")
    architectures = {
        "base": "ModernBertModel",
        "mlm": "ModernBertForMaskedLM",
        "classification": "ModernBertForSequenceClassification",
        "qa": "ModernBertForQuestionAnswering",
        "token_classification": "ModernBertForTokenClassification",
        "multiple_choice": "ModernBertForMultipleChoice",
    }
    description = "ModernBERT (ModernBertModel, ModernBertForMaskedLM, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        return not config.causal and (is_modern(config) or config.norm_placement == "pre")

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        cfg = model.config
        expected = {
            "position_embedding": "rotary",
            "norm": "layernorm",
            "norm_placement": "pre",
            "gated_mlp": True,
            "has_embedding_norm": True,
            "head_transform": True,
            "segment_vocab_size": 0,
            "num_kv_heads": None,
            "positions_skip_padding": False,
        }
        problems = [
            f"{name}={getattr(cfg, name)!r} (HF ModernBERT has {value!r})"
            for name, value in expected.items()
            if getattr(cfg, name) != value and not (name == "num_kv_heads" and cfg.kv_heads == cfg.num_heads)
        ]
        if cfg.activation not in ACT_TO_HF:
            problems.append(f"activation={cfg.activation!r}")
        layer_types = [SLIDING if cfg.is_local_layer(i) else FULL for i in range(cfg.num_layers)]
        local_theta = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
        hf = {
            "model_type": "modernbert",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.ffn_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "hidden_activation": ACT_TO_HF.get(cfg.activation, cfg.activation),
            "classifier_activation": ACT_TO_HF.get(cfg.activation, cfg.activation),
            "max_position_embeddings": cfg.max_positions,
            "initializer_range": cfg.init_std,
            "norm_eps": cfg.layer_norm_eps,
            "norm_bias": cfg.bias,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "classifier_bias": cfg.bias,
            "decoder_bias": True,
            "attention_dropout": cfg.attention_dropout,
            "embedding_dropout": cfg.dropout,
            "mlp_dropout": cfg.dropout,
            "classifier_dropout": cfg.dropout,
            "classifier_pooling": cfg.classifier_pooling,
            # HF ModernBERT always builds the window; with no local layer it is never used
            "local_attention": cfg.local_attention or 2 * cfg.max_positions,
            "layer_types": layer_types,
            "rope_parameters": {
                FULL: {"rope_type": "default", "rope_theta": cfg.rope_theta},
                SLIDING: {"rope_type": "default", "rope_theta": local_theta},
            },
            "tie_word_embeddings": cfg.tie_embeddings,
            # explicit, so HF's defaults (ids of its own 50k vocabulary) are not written for a model without them
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "cls_token_id": cfg.bos_token_id,
            "sep_token_id": cfg.eos_token_id,
        }
        return hf, problems

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        biases = {name: hf.get(name, False) for name in ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")}
        if len(set(biases.values())) > 1:
            raise ConfigError(f"unsupported ModernBERT variant: bias switches differ {biases} (one bias switch here)")
        if not hf.get("decoder_bias", True):
            raise ConfigError("unsupported ModernBERT variant: decoder_bias=false (our MLM decoder has a bias)")
        act = hf.get("hidden_activation", "gelu")
        if hf.get("classifier_activation", "gelu") != act:
            raise ConfigError("unsupported ModernBERT variant: classifier_activation differs from hidden_activation")
        layers = hf["num_hidden_layers"]
        every = hf.get("global_attn_every_n_layers", 3)
        layer_types = hf.get("layer_types") or [SLIDING if i % every else FULL for i in range(layers)]
        local = [i for i, t in enumerate(layer_types) if t == SLIDING]
        full = [i for i, t in enumerate(layer_types) if t == FULL]
        every = 1 if not local else full[1] if len(full) > 1 else layers  # the period of the global layers
        if layer_types != [SLIDING if i % every else FULL for i in range(layers)]:
            raise ConfigError(f"unsupported ModernBERT layer pattern {layer_types}: global layers must be every n-th")
        rope = hf.get("rope_parameters") or {}
        for kind in (FULL, SLIDING):
            if (rope.get(kind) or {}).get("rope_type", "default") != "default":
                raise ConfigError(f"unsupported ModernBERT RoPE scaling {rope[kind]}; only default RoPE is")
        global_theta = (rope.get(FULL) or {}).get("rope_theta", hf.get("global_rope_theta", 160000.0))
        local_theta = (rope.get(SLIDING) or {}).get("rope_theta", hf.get("local_rope_theta", 10000.0))
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=layers,
            num_heads=hf["num_attention_heads"],
            ffn_size=hf["intermediate_size"],
            max_positions=hf.get("max_position_embeddings", 8192),
            segment_vocab_size=0,
            dropout=float(hf.get("mlp_dropout", 0.0)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            layer_norm_eps=hf.get("norm_eps", 1e-5),
            activation=activation_from_hf(act),
            position_embedding="rotary",
            rope_theta=float(global_theta),
            local_rope_theta=float(local_theta),
            norm_placement="pre",
            norm="layernorm",
            bias=bool(biases["norm_bias"]),
            gated_mlp=True,
            embedding_norm=True,
            local_attention=hf.get("local_attention", 128) if local else 0,
            global_attn_every_n_layers=every,
            head_transform=True,
            classifier_pooling=hf.get("classifier_pooling", "cls"),
            causal=False,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("cls_token_id", hf.get("bos_token_id")),
            eos_token_id=hf.get("sep_token_id", hf.get("eos_token_id")),
        )

    def trunk_pairs(self, config: TransformerConfig, has_pooler: bool) -> list[Pair]:
        params = ("weight", "bias") if config.bias else ("weight",)
        pairs: list[Pair] = [("embeddings.word.weight", "embeddings.tok_embeddings.weight", "copy")]
        pairs += [(f"embeddings.norm.{p}", f"embeddings.norm.{p}", "copy") for p in params]
        pairs += [(f"final_norm.{p}", f"final_norm.{p}", "copy") for p in params]
        for i in range(config.num_layers):
            ours, theirs = f"blocks.{i}.", f"layers.{i}."
            names = [("attn.qkv", "attn.Wqkv"), ("attn.proj", "attn.Wo"), ("mlp_norm", "mlp_norm")]
            names += [("mlp.fc", "mlp.Wi"), ("mlp.proj", "mlp.Wo")]
            if i > 0:  # layer 0's attention norm is the identity
                names.append(("attn_norm", "attn_norm"))
            pairs += [(f"{ours}{o}.{p}", f"{theirs}{t}.{p}", "copy") for o, t in names for p in params]
        return pairs

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        params = ("weight", "bias") if model.config.bias else ("weight",)
        transform = [(f"{{}}.{n}.{p}", f"head.{n}.{p}") for n in ("dense", "norm") for p in params]
        if head == "mlm":
            pairs: list[Pair] = [(o.format("mlm_head"), t, "copy") for o, t in transform]
            pairs.append(("mlm_head.bias", "decoder.bias", "copy"))
            if not model.config.tie_embeddings:
                pairs.append(("mlm_head.decoder.weight", "decoder.weight", "copy"))
            return pairs
        if head in ("classification", "qa", "token_classification", "multiple_choice"):  # head, then classifier
            out = "qa_outputs" if head == "qa" else "classifier"
            pairs = [(o.format("head"), t, "copy") for o, t in transform]
            return pairs + [(f"{out}.{p}", f"classifier.{p}", "copy") for p in ("weight", "bias")]
        return []


MODERNBERT = register_family(ModernBertAdapter())
