"""BERT- and GPT-style Transformer pretraining: one core, its heads, data, and a shared training loop."""

from .interop import build_model, load_hf, save_hf
from .model import (
    BertPretraining,
    CausalLM,
    ModelOutput,
    SequenceClassifier,
    SpanQA,
    Transformer,
    TransformerConfig,
)

__all__ = [
    "BertPretraining",
    "CausalLM",
    "ModelOutput",
    "SequenceClassifier",
    "SpanQA",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "load_hf",
    "save_hf",
]
