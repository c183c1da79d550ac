"""BERT- and GPT-style Transformer pretraining: one core, its heads, data, and a shared training loop.

model/     the Transformer core and its heads (imports only torch)
data/      corpus -> token shards -> examples -> batches (knows the tokenizer, not the model)
train/     the one training loop, checkpoints, distribution, optimizer, logging
interop/   Hugging Face, both ways: one adapter per family
config.py  the typed config hydra fills; errors.py: user errors and early checks
pretraining.py / prepare.py / __main__.py: the pretraining app (README: Architecture)
"""

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
