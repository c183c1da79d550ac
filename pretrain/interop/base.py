"""What every family adapter shares: the registry of heads, the adapter base class, and the one
generic conversion that applies an adapter's name table to a state dict, both ways.

An adapter (one module per family, as torchtitan's state_dict_adapter) declares
- its Hugging Face `model_type`, the prefix of the trunk inside HF head models, and the HF class of each head;
- the config mapping (`config_to_hf` / `config_from_hf`);
- the state-dict name table (`trunk_pairs` / `head_pairs`): (ours, theirs, how) triples, where `how` names
  one of the few reshapes in `RESHAPES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..model import (
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

AnyModel = PretrainedModel | Transformer

# (ours, theirs, how): theirs is one HF name, or a tuple of names joined into one tensor of ours (see How)
Pair = tuple[str, Any, Any]


# ----------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class Head:
    """A task head: how to build it, how to recognise a built model, and which of its weights a
    checkpoint must provide (a missing pretrained head is an error, not a silent random init)."""

    name: str
    model_class: type[nn.Module]
    build: Callable[..., nn.Module]
    required: tuple[str, ...] = ()  # prefixes of our parameter names that must come from the checkpoint
    matches: Callable[[nn.Module], bool] = lambda model: True


HEADS: dict[str, Head] = {}


def register_head(head: Head) -> Head:
    if head.name in HEADS:
        raise ValueError(f"head {head.name!r} is registered twice")
    HEADS[head.name] = head
    return head


# Order matters for head_name: the first head whose class and predicate match a model names it.
register_head(Head("base", Transformer, Transformer))
register_head(
    Head(
        "pretraining",
        BertPretraining,
        BertPretraining,
        required=("mlm_head.", "nsp_head.", "transformer.pooler."),
        matches=lambda m: m.nsp_head is not None,
    )
)
register_head(
    Head(
        "mlm",
        BertPretraining,
        lambda c: BertPretraining(c, nsp=False),
        required=("mlm_head.",),
        matches=lambda m: m.nsp_head is None,
    )
)
register_head(Head("causal_lm", CausalLM, CausalLM, required=("lm_head.",)))
register_head(Head("classification", SequenceClassifier, SequenceClassifier))
register_head(Head("qa", SpanQA, SpanQA))
register_head(Head("token_classification", TokenClassifier, TokenClassifier))
register_head(Head("multiple_choice", MultipleChoice, MultipleChoice))


def head_name(model: AnyModel) -> str:
    """The head name (a key of HEADS) that rebuilds `model` with build_model."""
    for head in HEADS.values():
        if isinstance(model, head.model_class) and head.matches(model):
            return head.name
    raise TypeError(f"no registered head builds {type(model).__name__}")


def build_model(config: TransformerConfig, head: str, **head_kwargs: Any) -> AnyModel:
    """Our model class for a head name."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    return HEADS[head].build(config, **head_kwargs)


# ----------------------------------------------------------------------------- reshapes

# `how` of a pair: "copy"; "conv1d" (GPT-2's Conv1D stores (in, out): transpose); or ("cat", sizes): several HF
# tensors (theirs is a tuple) joined on dim 0 into one of ours, e.g. separate Q/K/V into our fused QKV, and split
# back into `sizes` rows on export.
How = str | tuple[str, tuple[int, ...]]


def joined(*sizes: int) -> How:
    return ("cat", tuple(sizes))


def ours_from_hf(theirs: Any, how: How) -> torch.Tensor:
    if how == "copy":
        return theirs
    if how == "conv1d":
        return theirs.t()
    return torch.cat(theirs, dim=0)


def hf_from_ours(ours: torch.Tensor, how: How) -> Any:
    if how == "copy":
        return ours
    if how == "conv1d":
        return ours.t()
    return ours.split(list(how[1]), dim=0)


def modern_switches(config: TransformerConfig) -> list[str]:
    """The switches on that neither BERT nor GPT-2 has (a model with any exports as ModernBERT or Llama)."""
    switches = {
        "position_embedding='rotary'": config.position_embedding == "rotary",
        "norm='rmsnorm'": config.norm == "rmsnorm",
        "gated_mlp=true": config.gated_mlp,
        f"num_kv_heads={config.num_kv_heads}": config.kv_heads != config.num_heads,
        "bias=false": not config.bias,
        f"local_attention={config.local_attention}": bool(config.local_attention),
        "head_transform=true": config.head_transform,
    }
    return [name for name, on in switches.items() if on]


def is_modern(config: TransformerConfig) -> bool:
    return bool(modern_switches(config))


# ----------------------------------------------------------------------------- adapters


class Adapter:
    """One Hugging Face family. Subclasses fill in the class attributes and the four mappings."""

    model_type: str = ""
    prefix: str = ""  # the trunk's attribute in HF head models, with the dot: "bert."
    trunk_names: tuple[str, ...] = ()  # top-level names of the HF trunk's own weights
    architectures: dict[str, str] = {}  # our head name -> HF class name
    description: str = ""  # for error messages: "BERT (BertModel, BertForMaskedLM, ...)"

    def exports(self, config: TransformerConfig) -> bool:
        """Whether a model of ours with this config is exported as this family."""
        raise NotImplementedError

    def config_to_hf(self, model: AnyModel) -> tuple[dict[str, Any], list[str]]:
        """(HF config values, problems the HF architecture cannot express)."""
        raise NotImplementedError

    def config_from_hf(self, hf: dict[str, Any]) -> TransformerConfig:
        raise NotImplementedError

    def trunk_pairs(self, config: TransformerConfig, has_pooler: bool) -> list[Pair]:
        raise NotImplementedError

    def head_pairs(self, model: AnyModel, head: str) -> list[Pair]:
        raise NotImplementedError

    def extra_hf_weights(self, model: AnyModel) -> dict[str, torch.Tensor]:
        """HF weights with no counterpart in our model (relative to the trunk), e.g. a constant row."""
        return {}

    def normalise_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family-specific renames of old checkpoint names."""
        return state

    # -- derived, shared by every family

    def architecture(self, model: AnyModel) -> str:
        head = head_name(model)
        if head not in self.architectures:
            why = modern_switches(model.config)
            if model.config.norm_placement == "pre" and not model.config.causal:
                why.append("norm_placement='pre'")
            raise ValueError(
                f"the {self.model_type} export maps no Hugging Face class for our {head!r} head "
                f"({type(model).__name__}); it writes {sorted(self.architectures.values())}"
                + (f". The model exports as {self.model_type} for its {', '.join(why)}." if why else ".")
            )
        return self.architectures[head]

    def head_for(self, architecture: str) -> str | None:
        return {arch: head for head, arch in self.architectures.items()}.get(architecture)

    def prefix_for(self, model: AnyModel) -> str:
        """The trunk's attribute in the HF class of `model`'s head: the family's, but for a class that names it
        otherwise."""
        return self.prefix

    def full_table(self, model: AnyModel) -> tuple[list[Pair], list[Pair]]:
        """(trunk pairs, head pairs) with full names on both sides."""
        base = isinstance(model, Transformer)
        trunk_module = model if base else model.transformer
        trunk = self.trunk_pairs(model.config, trunk_module.pooler is not None)
        if base:
            return trunk, []
        heads = self.head_pairs(model, head_name(model))
        return [("transformer." + o, _prefix(self.prefix_for(model), t), how) for o, t, how in trunk], heads

    def add_prefix(self, state: dict[str, torch.Tensor], model: AnyModel) -> dict[str, torch.Tensor]:
        """Base-model checkpoints have no trunk prefix while head models do (and vice versa)."""
        if isinstance(model, Transformer):
            return {k.removeprefix(self.prefix): v for k, v in state.items()}
        return {(self.prefix_for(model) + k if k.startswith(self.trunk_names) else k): v for k, v in state.items()}


def _prefix(prefix: str, theirs: Any) -> Any:
    return tuple(prefix + t for t in theirs) if isinstance(theirs, tuple) else prefix + theirs


FAMILIES: dict[str, Adapter] = {}


def register_family(adapter: Adapter) -> Adapter:
    FAMILIES[adapter.model_type] = adapter
    return adapter


def family_of(config: TransformerConfig) -> Adapter:
    """The adapter that exports a model of ours with this config (the first registered that accepts it)."""
    for adapter in FAMILIES.values():
        if adapter.exports(config):
            return adapter
    raise ValueError("no Hugging Face family exports this model config")
