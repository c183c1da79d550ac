"""The model: one Transformer core configured as a BERT-style encoder or a GPT-style decoder, and its heads.

    config.py      TransformerConfig, the architecture (the typed config the YAML fills, via pretrain.config)
    core.py        embeddings, attention, MLP, block, the Transformer trunk
    losses.py      loss terms as (sum, count); the chunked LM cross-entropy
    heads.py       the pretraining models: BertPretraining (MLM + NSP), CausalLM
    tasks.py       the fine-tuning models: sequence / token classification, span QA, multiple choice
    generation.py  greedy and sampled decoding with the KV cache

It imports nothing of data or training (pretrain.targets' IGNORE_INDEX aside): a model takes tensors and
returns a ModelOutput whose loss_terms the training loop normalises.
"""

from ..targets import IGNORE_INDEX
from .config import TransformerConfig
from .core import Block, KVCache, ModelOutput, Transformer, apply_rotary, init_weights, rotary_tables, sinusoidal_table
from .generation import generate
from .heads import BertPretraining, CausalLM, HeadTransform, MLMHead, PretrainedModel
from .losses import chunked_lm_loss_term, lm_loss_term
from .tasks import MultipleChoice, SequenceClassifier, SpanQA, TokenClassifier, last_token_features

__all__ = [
    "IGNORE_INDEX",
    "BertPretraining",
    "Block",
    "CausalLM",
    "HeadTransform",
    "KVCache",
    "MLMHead",
    "ModelOutput",
    "MultipleChoice",
    "PretrainedModel",
    "SequenceClassifier",
    "SpanQA",
    "TokenClassifier",
    "Transformer",
    "TransformerConfig",
    "apply_rotary",
    "chunked_lm_loss_term",
    "generate",
    "init_weights",
    "last_token_features",
    "lm_loss_term",
    "rotary_tables",
    "sinusoidal_table",
]
