"""Streaming preparation: documents -> tokens, written once to flat memory-mapped arrays.

A prepared split is a directory of raw little-endian arrays:

    tokens.bin             uint16 (uint32 when the vocabulary exceeds 65,535): every token, documents back to back
    doc_ends.bin           int64: token offset where each document ends
    sentence_ends.bin      int64 (BERT): token offset where each sentence ends
    doc_sentence_ends.bin  int64 (BERT): sentence count at the end of each document

plus `meta.json` (sizes, dtype, the unigram baseline) and `unigram_counts.npy` for the training
split. Documents are read, split, tokenised in blocks and appended, so memory does not grow with
the corpus; the unigram counts accumulate on the way. A cache directory appears only complete: it
is written under a unique temporary name and renamed, under a file lock that makes a second
preparer (another process of the launch, or another run) wait and then reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import queue
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .corpus import EMPTY_CORPUS, iter_documents, split_sentences
from .sampling import corpus_bytes, corpus_stamp, cpu_count

log = logging.getLogger(__name__)

TOKENS_VERSION = "5"  # 4: "\r\n" / "\r" read as line ends, a byte-order mark dropped; 5: bytes cells decoded
DOCS_PER_BLOCK = 1000  # documents tokenised together (fewer when they reach BYTES_PER_BLOCK)
BYTES_PER_BLOCK = 4_000_000  # bounds the memory of one block whatever the size of the documents


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or Path.home() / ".cache" / "pretrain").expanduser()


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- atomic, locked cache entries


@contextlib.contextmanager
def cache_entry(path: Path) -> Iterator[Path | None]:
    """Yields None when `path` is already complete, else a fresh temporary directory to fill; on
    success it is renamed to `path`. Holds an exclusive lock on `path`.lock meanwhile, so concurrent
    preparers of the same entry wait for the first and then find it complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if (path / "meta.json").exists():  # the common case: no lock needed to read a finished entry
        yield None
        return
    with open(path.with_name(path.name + ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second preparer waits here
        try:
            if (path / "meta.json").exists():
                yield None
                return
            if path.exists():  # incomplete: left by an older layout
                shutil.rmtree(path)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            tmp.mkdir()
            try:
                yield tmp
                os.rename(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- reading a prepared split


@dataclass
class TokenSplit:
    """A prepared split, memory-mapped: nothing is read until indexed."""

    tokens: np.ndarray
    doc_ends: np.ndarray
    sentence_ends: np.ndarray | None = None
    doc_sentence_ends: np.ndarray | None = None

    @classmethod
    def open(cls, path: Path) -> TokenSplit:
        """The split's arrays, each checked against the length meta.json recorded: a cache damaged after
        it was written (a truncated file) is refused, not read as a smaller corpus."""
        meta = read_cache_meta(path)
        arrays = {}
        for name, dtype, count in (
            ("tokens", meta["dtype"], "tokens"),
            ("doc_ends", "int64", "documents"),
            ("sentence_ends", "int64", "sentences"),
            ("doc_sentence_ends", "int64", "documents"),
        ):
            file = path / f"{name}.bin"
            if file.exists():
                expected = meta[count] * np.dtype(dtype).itemsize
                if file.stat().st_size != expected:
                    raise damaged_cache(path, f"{file.name} has {file.stat().st_size} bytes, {expected} were written")
                arrays[name] = _memmap(file, np.dtype(dtype))
        return cls(**arrays)

    @property
    def num_documents(self) -> int:
        return len(self.doc_ends)

    def sentence_bounds(self, doc: int) -> list[int]:
        """Token offsets [start of sentence 0, end of sentence 0, ..., end of the last] of document `doc`."""
        assert self.sentence_ends is not None and self.doc_sentence_ends is not None
        s0 = int(self.doc_sentence_ends[doc - 1]) if doc else 0
        s1 = int(self.doc_sentence_ends[doc])
        start = int(self.sentence_ends[s0 - 1]) if s0 else 0
        return [start, *self.sentence_ends[s0:s1].tolist()]


def read_cache_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise damaged_cache(path, f"meta.json is not valid JSON ({e})") from None


def damaged_cache(path: Path, problem: str) -> DataError:
    entry = next((p for p in (path, *path.parents) if p.parent.name == "tokens"), path)
    return DataError(f"the prepared token cache {path} is damaged: {problem}; delete {entry} and run again")


def _memmap(file: Path, dtype: np.dtype) -> np.ndarray:
    if file.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(file, dtype=dtype, mode="r")


# ----------------------------------------------------------------------------- writing


class SplitWriter:
    def __init__(self, path: Path, dtype: np.dtype, sentences: bool):
        path.mkdir(parents=True)
        self.path, self.dtype = path, dtype
        self.files = {n: open(path / f"{n}.bin", "wb") for n in ("tokens", "doc_ends")}
        if sentences:
            self.files.update({n: open(path / f"{n}.bin", "wb") for n in ("sentence_ends", "doc_sentence_ends")})
        self.n_tokens = self.n_docs = self.n_sentences = 0

    def add_documents(self, flat: np.ndarray, doc_lengths: np.ndarray) -> None:
        self.files["tokens"].write(flat.astype(self.dtype, copy=False).tobytes())
        self.files["doc_ends"].write((self.n_tokens + np.cumsum(doc_lengths, dtype=np.int64)).tobytes())
        self.n_tokens += int(doc_lengths.sum())
        self.n_docs += len(doc_lengths)

    def add_sentences(self, flat: np.ndarray, sentence_lengths: np.ndarray, sentences_per_doc: np.ndarray) -> None:
        if len(sentences_per_doc) == 0:
            return
        doc_lengths = np.add.reduceat(sentence_lengths, np.r_[0, np.cumsum(sentences_per_doc)[:-1]])
        self.files["sentence_ends"].write((self.n_tokens + np.cumsum(sentence_lengths, dtype=np.int64)).tobytes())
        self.files["doc_sentence_ends"].write(
            (self.n_sentences + np.cumsum(sentences_per_doc, dtype=np.int64)).tobytes()
        )
        self.n_sentences += int(sentences_per_doc.sum())
        self.add_documents(flat, doc_lengths)

    def close(self, extra: dict[str, Any]) -> dict[str, Any]:
        for f in self.files.values():
            f.close()
        meta = {
            "dtype": self.dtype.name,
            "tokens": self.n_tokens,
            "documents": self.n_docs,
            "sentences": self.n_sentences,
            **extra,
        }
        (self.path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        return meta


class Encoder:
    """Batch tokenisation with `tokenizers` directly (no per-text Python work in `transformers`)."""

    def __init__(self, tokenizer: Any, family: str):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.family = family
        self.eos = tokenizer.eos_token_id

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)] if texts else []

    def documents(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """GPT: each document's tokens followed by end-of-text."""
        ids = self.ids(texts)
        lengths = np.fromiter((len(x) + 1 for x in ids), np.int64, len(ids))
        eos = (self.eos,)
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(x, eos) for x in ids), np.int64, int(lengths.sum())
        )
        return flat, lengths

    def sentences(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BERT: sentences tokenised alone; empty sentences and documents are dropped."""
        per_doc = [split_sentences(t) for t in texts]
        ids = self.ids([s for doc in per_doc for s in doc])
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        counts = np.fromiter((len(d) for d in per_doc), np.int64, len(per_doc))
        doc_of = np.repeat(np.arange(len(per_doc)), counts)
        keep = lengths > 0
        sentences_per_doc = np.bincount(doc_of[keep], minlength=len(per_doc))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
        return flat, lengths[keep], sentences_per_doc[sentences_per_doc > 0]


@contextlib.contextmanager
def tokenizer_threads(num_proc: int | None) -> Iterator[int]:
    """`tokenizers` encodes and trains on all cores (its own threads) unless num_proc is 1."""
    n = num_proc or cpu_count()
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    os.environ.setdefault("RAYON_NUM_THREADS", str(n))  # read once, when the thread pool starts
    try:
        yield n
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def tokens_key(cfg: DataConfig, tokenizer: Any, family: str) -> str:
    return key_of(
        TOKENS_VERSION,
        corpus_stamp(cfg),
        cfg.format,
        cfg.documents,
        cfg.text_column,
        cfg.max_documents,
        cfg.validation_fraction,
        cfg.seed,
        family,
        hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
    )


def prepare_tokens(cfg: DataConfig, tokenizer: Any, family: str) -> Path:
    """The prepared token directory of this corpus and tokenizer (train/, validation/), built if missing."""
    path = cache_root(cfg) / "tokens" / tokens_key(cfg, tokenizer, family)
    with cache_entry(path) as tmp:
        if tmp is None:
            log.info("using prepared tokens in %s", path)
        else:
            _write_tokens(cfg, tokenizer, family, tmp)
    return path


def _blocks(cfg: DataConfig) -> Iterator[tuple[list[str], list[str], int]]:
    """(training texts, held-out texts, bytes) per block of documents. Each block holds out enough
    documents that round(fraction x documents so far) are held out, drawn with (data.seed, block);
    at least one in all when the fraction is above 0."""
    block: list[str] = []
    nbytes, held_out, n_docs, index = 0, 0, 0, 0

    def split(last: bool) -> tuple[list[str], list[str], int]:
        nonlocal held_out
        n_val = int(round(n_docs * cfg.validation_fraction)) - held_out
        if last and cfg.validation_fraction > 0 and held_out + n_val == 0:
            n_val = 1
        n_val = max(0, min(len(block), n_val))
        if last and n_val > 0 and n_docs - held_out - n_val < 1:
            raise DataError(
                f"the corpus has only {n_docs} document(s): too few to hold out {cfg.validation_fraction:.0%} "
                "for evaluation; add documents (blank line between them) or lower data.validation_fraction"
            )
        val = set(np.random.default_rng([cfg.seed, index]).permutation(len(block))[:n_val].tolist())
        held_out += n_val
        return [t for i, t in enumerate(block) if i not in val], [t for i, t in enumerate(block) if i in val], nbytes

    for doc in iter_documents(cfg):
        block.append(doc.text)
        nbytes += doc.nbytes
        n_docs += 1
        if len(block) == DOCS_PER_BLOCK or nbytes >= BYTES_PER_BLOCK:
            yield split(False)
            block, nbytes, index = [], 0, index + 1
    if n_docs == 0:
        raise DataError(EMPTY_CORPUS)
    yield split(True)


def _in_background(items: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """Runs a generator in a thread (reading and splitting overlap tokenisation); errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in items:
                q.put(item)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _write_tokens(cfg: DataConfig, tokenizer: Any, family: str, out: Path) -> None:
    from tqdm.auto import tqdm

    vocab = len(tokenizer)
    dtype = token_dtype(vocab)
    encoder = Encoder(tokenizer, family)
    bert = family == "bert"
    writers = {name: SplitWriter(out / name, dtype, bert) for name in ("train", "validation")}
    counts = np.zeros(vocab, np.int64)
    bar = tqdm(
        total=corpus_bytes(cfg),
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc="preparing tokens",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    with tokenizer_threads(cfg.num_proc):
        for train_texts, val_texts, nbytes in _in_background(_blocks(cfg)):
            for name, texts in (("train", train_texts), ("validation", val_texts)):
                if not texts:
                    continue
                if bert:
                    flat, lengths, per_doc = encoder.sentences(texts)
                    writers[name].add_sentences(flat, lengths, per_doc)
                else:
                    flat, lengths = encoder.documents(texts)
                    writers[name].add_documents(flat, lengths)
                if name == "train":
                    counts += np.bincount(flat, minlength=vocab)
            bar.update(nbytes)
    bar.close()
    if bert:  # BERT never predicts special tokens
        counts[list(tokenizer.all_special_ids)] = 0
    np.save(out / "unigram_counts.npy", counts)
    entropy = unigram_entropy(counts)
    metas = {name: w.close({"vocab_size": vocab}) for name, w in writers.items()}
    if metas["train"]["tokens"] == 0:
        raise DataError("the corpus produced no training tokens; check data.paths and data.text_column")
    (out / "meta.json").write_text(
        json.dumps({"unigram_entropy": entropy, "splits": metas, "family": family}), encoding="utf-8"
    )
    log.info(
        "prepared %d training tokens (%d documents), %d held-out tokens",
        metas["train"]["tokens"],
        metas["train"]["documents"],
        metas["validation"]["tokens"],
    )


def unigram_entropy(counts: np.ndarray) -> float:
    """Nats/token of a unigram model of the counted tokens: the loss of a model that ignores context."""
    counts = counts.astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
