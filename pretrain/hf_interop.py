"""Hugging Face interop, both ways: `load_hf` (BERT / GPT-2 checkpoints -> our models) and
`save_hf` (our models -> a directory that `transformers.AutoModel*.from_pretrained` loads as it is).

As in torchtitan's state_dict_adapter, the whole mapping is one table of name pairs per family plus
two reshapes: BERT's separate query/key/value are joined into our fused QKV (and split on export),
and GPT-2's Conv1D weights are transposed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .model import (
    BertPretraining,
    CausalLM,
    MultipleChoice,
    PretrainedModel,
    SequenceClassifier,
    SpanQA,
    TokenClassifier,
    Transformer,
    TransformerConfig,
)

log = logging.getLogger(__name__)

HEADS = ("base", "pretraining", "mlm", "causal_lm", "classification", "qa", "token_classification", "multiple_choice")

# Hugging Face activation names <-> ours
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}

# (ours, theirs, how): how is "copy", "qkv" (theirs is a tuple of three, joined on dim 0) or "conv1d" (transpose)
Pair = tuple[str, Any, str]


def _bert_trunk(cfg: TransformerConfig, has_pooler: bool) -> list[Pair]:
    pairs: list[Pair] = [
        ("embeddings.word.weight", "embeddings.word_embeddings.weight", "copy"),
        ("embeddings.position.weight", "embeddings.position_embeddings.weight", "copy"),
        ("embeddings.norm.weight", "embeddings.LayerNorm.weight", "copy"),
        ("embeddings.norm.bias", "embeddings.LayerNorm.bias", "copy"),
    ]
    if has_pooler:
        pairs += [("pooler.weight", "pooler.dense.weight", "copy"), ("pooler.bias", "pooler.dense.bias", "copy")]
    if cfg.segment_vocab_size:
        pairs.append(("embeddings.segment.weight", "embeddings.token_type_embeddings.weight", "copy"))
    for i in range(cfg.num_layers):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            qkv = tuple(f"{theirs}attention.self.{n}.{p}" for n in ("query", "key", "value"))
            pairs += [
                (f"{ours}attn.qkv.{p}", qkv, "qkv"),
                (f"{ours}attn.proj.{p}", f"{theirs}attention.output.dense.{p}", "copy"),
                (f"{ours}attn_norm.{p}", f"{theirs}attention.output.LayerNorm.{p}", "copy"),
                (f"{ours}mlp.fc.{p}", f"{theirs}intermediate.dense.{p}", "copy"),
                (f"{ours}mlp.proj.{p}", f"{theirs}output.dense.{p}", "copy"),
                (f"{ours}mlp_norm.{p}", f"{theirs}output.LayerNorm.{p}", "copy"),
            ]
    return pairs


def _gpt2_trunk(cfg: TransformerConfig) -> list[Pair]:
    pairs: list[Pair] = [
        ("embeddings.word.weight", "wte.weight", "copy"),
        ("embeddings.position.weight", "wpe.weight", "copy"),
        ("final_norm.weight", "ln_f.weight", "copy"),
        ("final_norm.bias", "ln_f.bias", "copy"),
    ]
    for i in range(cfg.num_layers):
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


def _head_pairs(model: PretrainedModel | Transformer) -> tuple[list[Pair], str]:
    """Head weights of `model` (ours relative to the model, theirs absolute) and the HF architecture."""
    cfg = model.config
    bert = not cfg.causal
    if isinstance(model, Transformer):
        return [], "BertModel" if bert else "GPT2Model"
    if isinstance(model, BertPretraining):
        pairs = [
            ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight", "copy"),
            ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias", "copy"),
            ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight", "copy"),
            ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias", "copy"),
            ("mlm_head.bias", "cls.predictions.bias", "copy"),
        ]
        if not cfg.tie_embeddings:
            pairs.append(("mlm_head.decoder.weight", "cls.predictions.decoder.weight", "copy"))
        if model.nsp_head is None:
            return pairs, "BertForMaskedLM"
        pairs += [
            ("nsp_head.weight", "cls.seq_relationship.weight", "copy"),
            ("nsp_head.bias", "cls.seq_relationship.bias", "copy"),
        ]
        return pairs, "BertForPreTraining"
    if isinstance(model, CausalLM):
        return ([] if cfg.tie_embeddings else [("lm_head.weight", "lm_head.weight", "copy")]), "GPT2LMHeadModel"
    if isinstance(model, SequenceClassifier):
        if bert:
            pairs = [("classifier.weight", "classifier.weight", "copy"), ("classifier.bias", "classifier.bias", "copy")]
            return pairs, "BertForSequenceClassification"
        return [("classifier.weight", "score.weight", "copy")], "GPT2ForSequenceClassification"
    if isinstance(model, SpanQA):
        pairs = [("qa_outputs.weight", "qa_outputs.weight", "copy"), ("qa_outputs.bias", "qa_outputs.bias", "copy")]
        return pairs, "BertForQuestionAnswering" if bert else "GPT2ForQuestionAnswering"
    if isinstance(model, TokenClassifier):
        pairs = [("classifier.weight", "classifier.weight", "copy"), ("classifier.bias", "classifier.bias", "copy")]
        return pairs, "BertForTokenClassification" if bert else "GPT2ForTokenClassification"
    if isinstance(model, MultipleChoice):
        if bert:
            pairs = [("classifier.weight", "classifier.weight", "copy"), ("classifier.bias", "classifier.bias", "copy")]
            return pairs, "BertForMultipleChoice"
        # GPT-2's double-heads model: its multiple-choice summary is our classifier read at the token
        # given as mc_token_ids (pass the last non-padding position); its LM head is tied
        pairs = [
            ("classifier.weight", "multiple_choice_head.summary.weight", "copy"),
            ("classifier.bias", "multiple_choice_head.summary.bias", "copy"),
        ]
        return pairs, "GPT2DoubleHeadsModel"
    raise TypeError(f"no Hugging Face mapping for {type(model).__name__}")


def _full_table(model: PretrainedModel | Transformer) -> tuple[list[Pair], list[Pair], str]:
    """(trunk pairs, head pairs, architecture) with full names on both sides."""
    cfg = model.config
    trunk_module = model if isinstance(model, Transformer) else model.transformer
    trunk = _bert_trunk(cfg, trunk_module.pooler is not None) if not cfg.causal else _gpt2_trunk(cfg)
    heads, arch = _head_pairs(model)
    if isinstance(model, Transformer):
        return trunk, heads, arch
    hf_prefix = "bert." if not cfg.causal else "transformer."
    trunk = [("transformer." + o, _prefix(hf_prefix, t), how) for o, t, how in trunk]
    return trunk, heads, arch


def _prefix(prefix: str, theirs: Any) -> Any:
    return tuple(prefix + t for t in theirs) if isinstance(theirs, tuple) else prefix + theirs


# ----------------------------------------------------------------------------- configs


def hf_config_dict(model: PretrainedModel | Transformer) -> dict[str, Any]:
    """The Hugging Face config of our model; refuses what the HF architecture cannot express."""
    cfg = model.config
    _, _, arch = _full_table(model)
    problems = []
    if cfg.position_embedding != "learned":
        problems.append(f"position_embedding={cfg.position_embedding!r} (HF BERT/GPT-2 have learned positions only)")
    common: dict[str, Any] = {"architectures": [arch], "vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id}
    if cfg.bos_token_id is not None:
        common["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        common["eos_token_id"] = cfg.eos_token_id
    if isinstance(model, SequenceClassifier):
        labels = getattr(model, "id2label", None) or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        common["id2label"] = {int(k): v for k, v in labels.items()}
        common["label2id"] = {v: int(k) for k, v in labels.items()}
        common["problem_type"] = "regression" if model.num_labels == 1 else "single_label_classification"
        if model.symmetric:
            log.warning(
                "symmetric classifier exported as %s: Hugging Face runs one order of a pair; our logits are "
                "its logits of (a, b) plus those of (b, a), minus the classifier bias once",
                arch,
            )
    if isinstance(model, TokenClassifier):
        labels = getattr(model, "id2label", None) or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        common["id2label"] = {int(k): v for k, v in labels.items()}
        common["label2id"] = {v: int(k) for k, v in labels.items()}
    if isinstance(model, MultipleChoice) and cfg.causal:
        common["summary_first_dropout"] = cfg.dropout  # the other summary_* defaults are our head
    if not cfg.causal:
        if cfg.norm_placement != "post":
            problems.append("norm_placement='pre' (HF BERT is post-LN)")
        hf = {
            "model_type": "bert",
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_size,
            "hidden_act": _ACT_TO_HF[cfg.activation],
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
    else:
        if cfg.norm_placement != "pre":
            problems.append("norm_placement='post' (HF GPT-2 is pre-LN)")
        if cfg.segment_vocab_size:
            problems.append("segment_vocab_size > 0 (HF GPT-2 has no separate segment embeddings)")
        if cfg.dropout != cfg.attention_dropout:
            log.info("GPT-2 export: attention_dropout %s kept as attn_pdrop", cfg.attention_dropout)
        hf = {
            "model_type": "gpt2",
            "n_embd": cfg.hidden_size,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.ffn_size,
            "n_positions": cfg.max_positions,
            "activation_function": _ACT_TO_HF[cfg.activation],
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    if problems:
        raise ValueError(
            f"cannot export to Hugging Face {arch}: the model uses "
            + "; ".join(problems)
            + ". Train with a config the HF architecture supports, or keep our own checkpoint format."
        )
    return {**hf, **common}


def config_from_hf(hf: dict[str, Any]) -> TransformerConfig:
    model_type = hf.get("model_type")
    if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported BERT position_embedding_type={hf['position_embedding_type']!r}")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("unsupported BERT variant: decoder / cross-attention BERT checkpoints are not supported")
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
            activation=_activation_from_hf(hf.get("hidden_act", "gelu")),
            norm_placement="post",
            causal=False,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id", 0),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
    if model_type == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            raise ValueError("unsupported GPT-2 variant: non-standard attention scaling")
        if hf.get("add_cross_attention"):
            raise ValueError("unsupported GPT-2 variant: cross-attention")
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
            activation=_activation_from_hf(hf.get("activation_function", "gelu_new")),
            norm_placement="pre",
            causal=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
    raise ValueError(
        f"unsupported architecture: model_type={model_type!r} ({hf.get('architectures')}); "
        "load_hf supports BERT (BertModel, BertForPreTraining, BertForMaskedLM, ...) "
        "and GPT-2 (GPT2Model, GPT2LMHeadModel, ...)"
    )


def _activation_from_hf(name: str) -> str:
    if name not in _ACT_FROM_HF:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[name]


# ----------------------------------------------------------------------------- export


def hf_state_dict(model: PretrainedModel | Transformer) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names (tied weights once, as HF saves them)."""
    ours = model.state_dict()
    trunk, heads, _ = _full_table(model)
    out: dict[str, torch.Tensor] = {}
    for o, t, how in trunk + heads:
        if o not in ours:  # e.g. segment embeddings of a model without segments
            continue
        w = ours[o]
        if how == "qkv":
            for name, part in zip(t, w.chunk(3, dim=0), strict=True):
                out[name] = part
        elif how == "conv1d":
            out[t] = w.t()
        else:
            out[t] = w
    if not model.config.causal and not model.config.segment_vocab_size:
        prefix = "" if isinstance(model, Transformer) else "bert."
        out[prefix + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, model.config.hidden_size)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_hf(model: PretrainedModel | Transformer, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) loadable by `transformers` as is."""
    out = Path(out_dir)
    config = hf_config_dict(model)  # refuses inexpressible configs before anything is written
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoConfig

    model_type = config.pop("model_type")
    AutoConfig.for_model(model_type, **config).save_pretrained(out)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- import

_ARCH_TO_HEAD = {
    "BertModel": "base",
    "BertForPreTraining": "pretraining",
    "BertForMaskedLM": "mlm",
    "BertForSequenceClassification": "classification",
    "BertForQuestionAnswering": "qa",
    "BertForTokenClassification": "token_classification",
    "BertForMultipleChoice": "multiple_choice",
    "GPT2ForTokenClassification": "token_classification",
    "GPT2DoubleHeadsModel": "multiple_choice",
    "GPT2Model": "base",
    "GPT2LMHeadModel": "causal_lm",
    "GPT2ForSequenceClassification": "classification",
    "GPT2ForQuestionAnswering": "qa",
}


def head_name(model: PretrainedModel | Transformer) -> str:
    """The head name (one of HEADS) that rebuilds `model` with build_model."""
    return _ARCH_TO_HEAD[_head_pairs(model)[1]]


# weights a task cannot do without: missing ones are an error, not a silent random init
_PRETRAINED_HEADS = ("mlm_head.", "nsp_head.", "lm_head.")


def build_model(config: TransformerConfig, head: str, **head_kwargs: Any) -> PretrainedModel | Transformer:
    """Our model class for a head name."""
    builders: dict[str, Callable[..., Any]] = {
        "base": Transformer,
        "pretraining": BertPretraining,
        "mlm": lambda c: BertPretraining(c, nsp=False),
        "causal_lm": CausalLM,
        "classification": SequenceClassifier,
        "qa": SpanQA,
        "token_classification": TokenClassifier,
        "multiple_choice": MultipleChoice,
    }
    if head not in builders:
        raise ValueError(f"unknown head {head!r}; choose one of {list(builders)}")
    return builders[head](config, **head_kwargs)


def load_hf(src: Any, head: str | None = None, **head_kwargs: Any) -> PretrainedModel | Transformer:
    """Our model from a Hugging Face BERT or GPT-2 checkpoint.

    `src`: a checkpoint directory, a hub name (downloaded by huggingface_hub; needs internet) or a
    built `transformers` model. `head`: one of HEADS; by default the checkpoint's own architecture.
    Pretraining heads the checkpoint lacks are an error; fine-tuning heads (classification, qa, token_classification,
    multiple_choice) it lacks are initialised fresh and logged."""
    hf_config, state = _read_hf(src)
    config = config_from_hf(hf_config)
    arch = (hf_config.get("architectures") or ["BertModel" if not config.causal else "GPT2Model"])[0]
    head = head or _ARCH_TO_HEAD.get(arch)
    if head is None:
        raise ValueError(f"unsupported architecture {arch!r}; pass head= one of {HEADS}")
    if head in ("classification", "token_classification") and "num_labels" not in head_kwargs:
        head_kwargs["num_labels"] = len(hf_config.get("id2label") or {0: 0, 1: 1})
    model = build_model(config, head, **head_kwargs)
    if head in ("classification", "token_classification") and hf_config.get("id2label"):
        model.id2label = {int(k): v for k, v in hf_config["id2label"].items()}
    load_hf_state_dict(model, state, source=str(src) if not hasattr(src, "config") else type(src).__name__)
    return model


def load_hf_state_dict(
    model: PretrainedModel | Transformer, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    state = _normalise_keys(state, model)
    trunk, heads, _ = _full_table(model)
    ours: dict[str, torch.Tensor] = {}
    missing_trunk, missing_heads = [], []
    for o, t, how in trunk + heads:
        names = t if isinstance(t, tuple) else (t,)
        if not all(n in state for n in names):
            (missing_trunk if (o, t, how) in trunk else missing_heads).append(o)
            continue
        if how == "qkv":
            ours[o] = torch.cat([state[n] for n in names], dim=0)
        elif how == "conv1d":
            ours[o] = state[t].t()
        else:
            ours[o] = state[t]
    required = [o for o in missing_trunk if not o.endswith(("pooler.weight", "pooler.bias"))]
    required += [o for o in missing_heads if o.startswith(_PRETRAINED_HEADS)]
    needs_pooler = isinstance(model, BertPretraining) and model.nsp_head is not None
    required += [o for o in missing_trunk if o.endswith(("pooler.weight", "pooler.bias")) and needs_pooler]
    if required:
        raise ValueError(
            f"{source} has no weights for {required[:6]}{' ...' if len(required) > 6 else ''}: "
            f"it lacks the head that {type(model).__name__} needs. Load it with head='base', or with a "
            "fine-tuning head (classification, qa) whose fresh weights are initialised."
        )
    fresh = [o for o in missing_trunk + missing_heads if o not in required]
    if fresh:
        log.warning("%s: newly initialised (not in the checkpoint): %s", source, fresh)
    result = model.load_state_dict(ours, strict=False)
    leftover = [k for k in result.missing_keys if k not in fresh and not _is_tied(model, k)]
    if leftover or result.unexpected_keys:
        raise RuntimeError(f"internal mapping error: missing {leftover}, unexpected {result.unexpected_keys}")


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key.endswith(("mlm_head.decoder.weight", "lm_head.weight")) and model.config.tie_embeddings


def _normalise_keys(state: dict[str, torch.Tensor], model: PretrainedModel | Transformer) -> dict[str, torch.Tensor]:
    """Old BERT checkpoints name LayerNorm parameters gamma/beta; base-model checkpoints have no
    `bert.` / `transformer.` prefix while head models do (and vice versa)."""
    renamed = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[k] = v
    prefix = "bert." if not model.config.causal else "transformer."
    if isinstance(model, Transformer):
        return {k.removeprefix(prefix): v for k, v in renamed.items()}
    trunk_names = ("embeddings.", "encoder.", "pooler.", "wte.", "wpe.", "h.", "ln_f.")
    return {(prefix + k if k.startswith(trunk_names) else k): v for k, v in renamed.items()}


def _read_hf(src: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if hasattr(src, "config") and hasattr(src, "state_dict"):  # a built transformers model
        config = src.config.to_dict()
        config["architectures"] = [type(src).__name__]  # what it is, whatever its config says
        return config, {k: v.detach() for k, v in src.state_dict().items()}
    path = Path(src)
    if not path.is_dir():
        if path.exists() or str(src).startswith((".", "/")):
            raise FileNotFoundError(f"{src}: not a Hugging Face checkpoint directory")
        from huggingface_hub import snapshot_download  # a hub name: needs internet

        path = Path(
            snapshot_download(str(src), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"])
        )
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    return json.loads(config_file.read_text()), read_weights(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint directory: safetensors (single or sharded), else .bin loaded
    with weights_only=True so no arbitrary object is unpickled."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(path / shard)).items()}
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
