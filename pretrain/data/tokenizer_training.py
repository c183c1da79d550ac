"""A tokenizer trained on a bounded, reproducible sample of the corpus, cached by what it depends on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..tokenizer import load_tokenizer, train_tokenizer
from .sampling import corpus_stamp, sample_texts
from .shards import cache_entry, cache_root, key_of, tokenizer_threads

log = logging.getLogger(__name__)


def trained_tokenizer_dir(cfg: DataConfig, family: str) -> Path:
    """Where the tokenizer for this corpus and these settings lives. The key holds the corpus's cheap
    stamp and the sample settings, never the cache location: the same corpus and settings give the
    same tokenizer (training is deterministic on a fixed sample, in any process)."""
    key = key_of(
        # 3: WordPiece ties by codepoint; 4: line ends as text mode reads them; 5: bytes cells decoded;
        # 6: the sample's windows read "\r" line ends and keep lines longer than a window; each file sampled by
        # its own format (a .jsonl among data=text paths)
        "tokenizer-6",
        corpus_stamp(cfg),
        cfg.format,
        cfg.text_column,
        cfg.documents,
        cfg.max_documents,
        family,
        cfg.vocab_size,
        cfg.lowercase,
        cfg.tokenizer_sample_mb,
        cfg.seed,
    )
    return cache_root(cfg) / "tokenizers" / key


def trained_tokenizer(cfg: DataConfig, family: str) -> Any:
    """Train (once, under a lock: concurrent runs wait for the first) or load the corpus's tokenizer."""
    path = trained_tokenizer_dir(cfg, family)
    with cache_entry(path) as tmp:
        if tmp is not None:
            budget = int(cfg.tokenizer_sample_mb * 1e6)
            log.info("training a %s tokenizer on a %.0f MB sample of the corpus", family, cfg.tokenizer_sample_mb)
            with tokenizer_threads(cfg.num_proc):
                tokenizer = train_tokenizer(sample_texts(cfg, budget, cfg.seed), family, cfg.vocab_size, cfg.lowercase)
            tokenizer.save_pretrained(str(tmp))
            (tmp / "meta.json").write_text("{}", encoding="utf-8")
    return load_tokenizer(str(path))
