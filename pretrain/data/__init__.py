"""Pretraining data: a corpus streamed once into memory-mapped token shards; BERT sentence pairs or
packed GPT blocks over them; collators that pad and mask per batch; a batch plan that can start at
any step. This package knows the tokenizer and the sequence length, nothing of the model.

    corpus.py            files / directories / globs / hub names -> documents (streamed)
    tokenizer_training   a tokenizer trained on a bounded, reproducible sample
    sampling.py          the corpus stamp (cache key) and the seeded sample the tokenizer learns from
    shards.py            documents -> flat uint16/uint32 token arrays, unigram counts (locked, atomic cache)
    bert_pairs.py        Google's sentence-pair rules (or FULL-SENTENCES) as token ranges
    blocks.py            GPT blocks by index arithmetic
    collators.py         padding, dynamic masking
    batching.py          BatchPlan / PlannedBatches / SeededExamples
    pipeline.py          build_pretraining_data
"""

from .batching import BatchPlan, PlannedBatches, SeededExamples, example_seed
from .bert_pairs import BertExamples, document_pairs, full_sentences
from .blocks import PackedBlocks, pack_blocks
from .collators import (
    IGNORE_INDEX,
    CausalCollator,
    MLMCollator,
    next_token_labels,
    pad_to_tensor,
    padding_id,
    padding_mask,
)
from .corpus import (
    LINES_PER_PSEUDO_DOCUMENT,
    SAMPLE_CORPUS,
    check_text_files,
    iter_documents,
    load_documents,
    resolve_files,
    split_sentences,
)
from .pipeline import PretrainingData, build_pretraining_data
from .shards import TokenSplit, cache_root, prepare_tokens, unigram_entropy
from .tokenizer_training import trained_tokenizer, trained_tokenizer_dir

__all__ = [
    "IGNORE_INDEX",
    "LINES_PER_PSEUDO_DOCUMENT",
    "SAMPLE_CORPUS",
    "BatchPlan",
    "BertExamples",
    "CausalCollator",
    "next_token_labels",
    "padding_id",
    "padding_mask",
    "MLMCollator",
    "PackedBlocks",
    "PlannedBatches",
    "PretrainingData",
    "SeededExamples",
    "TokenSplit",
    "build_pretraining_data",
    "cache_root",
    "check_text_files",
    "document_pairs",
    "example_seed",
    "full_sentences",
    "iter_documents",
    "load_documents",
    "pack_blocks",
    "pad_to_tensor",
    "prepare_tokens",
    "resolve_files",
    "split_sentences",
    "trained_tokenizer",
    "trained_tokenizer_dir",
    "unigram_entropy",
]
