"""Corpus -> prepared tokens -> examples: the one entry point for pretraining (and `pretrain.prepare`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .bert_pairs import BertExamples, prepare_pairs
from .blocks import PackedBlocks
from .shards import TokenSplit, prepare_tokens, read_cache_meta

log = logging.getLogger(__name__)


@dataclass
class PretrainingData:
    train: Any  # indexable examples: dicts of input_ids (+ token_type_ids, next_sentence_label)
    validation: Any
    unigram_entropy: float  # nats/token of a unigram model of the training tokens: the floor to beat
    tokens_dir: Path | None = None


def build_pretraining_data(cfg: DataConfig, tokenizer: Any, family: str, nsp: bool = True) -> PretrainingData:
    """Prepares (or finds in the cache) the token shards and, for BERT, the example ranges; returns
    memory-mapped example sets. A prepared cache is found by a cheap stamp of the corpus files."""
    tokens_dir = prepare_tokens(cfg, tokenizer, family)
    meta = read_cache_meta(tokens_dir)
    splits: dict[str, Any] = {}
    for name in ("train", "validation"):
        split = TokenSplit.open(tokens_dir / name)
        if len(split.tokens) == 0:
            splits[name] = []
        elif family == "bert":
            pairs = prepare_pairs(cfg, tokens_dir, name, nsp)
            # training pairs are re-drawn each epoch; the held-out ones stay fixed
            redraw = partial(prepare_pairs, cfg, tokens_dir, name, nsp) if name == "train" and nsp else None
            splits[name] = BertExamples(split, pairs, tokenizer.cls_token_id, tokenizer.sep_token_id, redraw)
        else:
            splits[name] = PackedBlocks(split.tokens, cfg.max_length)
    if len(splits["train"]) == 0:
        raise DataError("the train split produced no examples; the corpus is too small for data.max_length")
    return PretrainingData(splits["train"], splits["validation"], meta["unigram_entropy"], tokens_dir)
