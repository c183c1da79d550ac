"""A tokenizer trained on a bounded, reproducible sample of the corpus, cached by what it depends on."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from ..tokenizer import BERT_SPECIALS, load_tokenizer, train_tokenizer
from .corpus import EMPTY_CORPUS
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
            sample = _Counted(sample_texts(cfg, budget, cfg.seed))
            with tokenizer_threads(cfg.num_proc):
                tokenizer = train_tokenizer(sample, family, cfg.vocab_size, cfg.lowercase)
            check_learned(len(tokenizer), family, cfg, sample)
            tokenizer.save_pretrained(str(tmp))
            (tmp / "meta.json").write_text("{}", encoding="utf-8")
    return load_tokenizer(str(path))


class _Counted:
    """The sample's texts, counted as they are read: how many, and their UTF-8 size."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.count, self.nbytes = texts, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.count += 1
            self.nbytes += len(text.encode("utf-8"))
            yield text


def check_learned(size: int, family: str, cfg: DataConfig, sample: _Counted) -> None:
    """A tokenizer that learned nothing beyond its special tokens (BERT) or its byte alphabet and
    <|endoftext|> (GPT) would train a model on [UNK] / single bytes only: refused. One far below
    data.vocab_size is warned, with the likely causes."""
    alphabet = len(BERT_SPECIALS) if family == "bert" else 256 + 1
    what = "special tokens" if family == "bert" else "byte alphabet and <|endoftext|>"
    drawn = (
        f"{sample.nbytes / 1e6:.2f} MB in {sample.count} texts, of data.tokenizer_sample_mb={cfg.tokenizer_sample_mb:g}"
    )
    if sample.count == 0:  # nothing read at all (blank files): the message preparation gives
        raise DataError(EMPTY_CORPUS)
    if size <= alphabet < cfg.vocab_size:
        holds = "no text" if not sample.nbytes else "no piece of text seen twice"
        raise DataError(
            f"the tokenizer trained on the corpus learned nothing beyond its {what} ({size} entries, "
            f"data.vocab_size={cfg.vocab_size}): its sample of the corpus ({drawn}) holds {holds}; check that "
            "data.paths holds text (and data.text_column names the text of JSON / Parquet rows), raise "
            "data.tokenizer_sample_mb, or give a trained tokenizer with data.tokenizer"
        )
    if size < cfg.vocab_size / 2:
        log.warning(
            "the trained %s tokenizer has %d entries, far below data.vocab_size=%d: its sample of the corpus (%s) "
            "holds too few distinct words and pieces seen at least twice. Likely causes: the corpus is small for "
            "this vocabulary (lower data.vocab_size), the sample is too small (raise data.tokenizer_sample_mb when "
            "the corpus is bigger than it), or much of the data is not read as text (check data.paths, "
            "data.text_column)",
            family,
            size,
            cfg.vocab_size,
            drawn,
        )
