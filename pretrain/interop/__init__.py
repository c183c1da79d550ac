"""Hugging Face interop, both ways: `load_hf` (HF checkpoints -> our models) and `save_hf` (our models ->
a directory that `transformers.AutoModel*.from_pretrained` loads as it is).

One adapter module per family (bert.py, gpt2.py, ...: config mapping + state-dict name table + the few
reshapes, as torchtitan's state_dict_adapter), one shared registry of heads (base.py), and one
family-independent conversion (convert.py). A new family is one new module that registers its adapter.
It imports the model and `transformers` (lazily); nothing of data or training.
"""

from . import bert, gpt2, llama, modernbert, roberta  # noqa: F401  (registers the families)
from .base import (
    FAMILIES,
    HEADS,
    Adapter,
    Head,
    Pair,
    build_model,
    family_of,
    head_name,
    register_family,
    register_head,
)
from .convert import (
    check_exportable,
    config_from_hf,
    hf_config_dict,
    hf_state_dict,
    load_hf,
    load_hf_state_dict,
    read_weights,
    save_hf,
)

__all__ = [
    "FAMILIES",
    "HEADS",
    "Adapter",
    "Head",
    "Pair",
    "build_model",
    "check_exportable",
    "config_from_hf",
    "family_of",
    "head_name",
    "hf_config_dict",
    "hf_state_dict",
    "load_hf",
    "load_hf_state_dict",
    "read_weights",
    "register_family",
    "register_head",
    "save_hf",
]
